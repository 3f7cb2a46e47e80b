"""Recurring transaction rules (automatic top-ups): the only code that writes them.

A wallet has at most one rule per trigger:

- `threshold`: when a change lowers the balance and leaves `credits_balance +
  pending_credits` at or below `threshold_credits`, one top-up starts
  (`gateway.topups.after_balance_lowered`);
- `interval`: a top-up at `started_at + k x interval` (`gateway.intervals`), bought by
  the worker (`gateway.topups.buy_due_interval_top_ups`).

`fixed` buys `paid_credits` and grants `granted_credits`; `target` buys what brings
`credits_balance + pending_credits` up to `target_credits`.

A rule whose automatic top-up fails (payment failed, invoice voided or uncollectible,
refused by the provider, abandoned) is paused with a reason, in the transaction that
records the failure, and buys nothing more until a PUT of the wallet's rules updates
it: no retry loop buys again and again. Every write to a rule happens under its
wallet's lock (wallet first, then rule: the ledger's order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import intervals, money
from gateway.errors import AmountTooLarge, AmountTooSmall, DomainError, ValidationFailed
from gateway.models import (
    RecurringTransactionRule,
    RuleMethod,
    RuleStatus,
    RuleTrigger,
    Wallet,
    WalletTransaction,
)
from gateway.providers.base import PaymentProvider

FIELD = "recurring_transaction_rules"
REASON_LIMIT = 2000


class PausedReason:
    """Why a rule stopped buying (`paused_reason`); a PUT of the rules resumes it."""

    PAYMENT_FAILED = "payment_failed"  # invoice.payment_failed on its top-up
    INVOICE_VOID = "invoice_void"
    INVOICE_UNCOLLECTIBLE = "invoice_uncollectible"
    PROVIDER_REJECTED = "provider_rejected"  # the provider refused to make the invoice
    CREATION_ABANDONED = "creation_abandoned"  # its invoice never got made
    AMOUNT_NOT_CHARGEABLE = "amount_not_chargeable"  # too small/large/odd for the provider
    PROVIDER_NOT_CONFIGURED = "payment_provider_not_configured"
    WALLET_ENDED = "wallet_terminated"


@dataclass(frozen=True)
class RuleInput:
    """One rule as a caller gives it (types already checked by the API schema)."""

    trigger: str
    method: str = RuleMethod.FIXED
    threshold_credits: Decimal | None = None
    interval: str | None = None
    started_at: datetime | None = None
    paid_credits: Decimal | None = None
    granted_credits: Decimal | None = None
    target_credits: Decimal | None = None


_ALLOWED = {
    RuleTrigger.THRESHOLD: {"threshold_credits"},
    RuleTrigger.INTERVAL: {"interval", "started_at"},
}
_METHOD_FIELDS = {
    RuleMethod.FIXED: {"paid_credits", "granted_credits"},
    RuleMethod.TARGET: {"target_credits"},
}
_OPTIONAL = ("threshold_credits", "interval", "started_at", "paid_credits",
             "granted_credits", "target_credits")  # fmt: skip


def _problems(rule: RuleInput) -> dict[str, list[str]]:
    """What is wrong with one rule on its own (field -> messages)."""
    problems: dict[str, list[str]] = {}

    def refuse(field: str, message: str) -> None:
        problems.setdefault(field, []).append(message)

    if rule.trigger not in set(RuleTrigger):
        refuse("trigger", "must be one of: threshold, interval")
        return problems
    if rule.method not in set(RuleMethod):
        refuse("method", "must be one of: fixed, target")
        return problems
    trigger, method = RuleTrigger(rule.trigger), RuleMethod(rule.method)
    allowed = _ALLOWED[trigger] | _METHOD_FIELDS[method]
    for name in _OPTIONAL:
        if getattr(rule, name) is not None and name not in allowed:
            refuse(name, f"not used by a {trigger} rule with method {method}")
    _check_trigger(rule, trigger, refuse)
    _check_method(rule, method, refuse)
    return problems


Refuse = Callable[[str, str], None]


def _check_trigger(rule: RuleInput, trigger: RuleTrigger, refuse: Refuse) -> None:
    """The fields the rule's trigger needs."""
    if trigger == RuleTrigger.THRESHOLD:
        if rule.threshold_credits is None:
            refuse("threshold_credits", "required for a threshold rule")
        elif rule.threshold_credits < 0:
            refuse("threshold_credits", "must be at least 0")
    elif rule.interval is None:
        refuse("interval", "required for an interval rule")
    elif rule.interval not in set(intervals.Interval):
        refuse("interval", "must be one of: weekly, monthly, quarterly, yearly")


def _check_method(rule: RuleInput, method: RuleMethod, refuse: Refuse) -> None:
    """The fields the rule's method needs."""
    if method == RuleMethod.FIXED:
        if not (rule.paid_credits or rule.granted_credits):
            refuse("paid_credits", "paid_credits or granted_credits is required for a fixed rule")
    elif rule.target_credits is None:
        refuse("target_credits", "required for a target rule")
    elif rule.threshold_credits is not None and rule.target_credits <= rule.threshold_credits:
        refuse("target_credits", "must be above threshold_credits")


def _nested(index: int, details: dict[str, Any]) -> dict[str, Any]:
    return {FIELD: {str(index): details}}


def validate_rules(
    rules: Sequence[RuleInput],
    wallet_rate: Decimal,
    currency: str,
    provider: PaymentProvider | None,
) -> None:
    """Refuse a list of rules that cannot work, before anything is stored.

    Each problem names the rule (its position) and the field: 422 `validation_errors`,
    or `amount_too_small` / `amount_too_large` when a purchase the rule would make
    cannot be charged. `provider` is needed (and only asked for) when a rule buys.
    """
    errors: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        problems = _problems(rule)
        first = seen.setdefault(rule.trigger, index)
        if first != index:
            problems.setdefault("trigger", []).append(
                f"only one rule per trigger: rule {first} is already {rule.trigger}"
            )
        if problems:
            errors[str(index)] = problems
    if errors:
        raise ValidationFailed(
            "the recurring transaction rules are not valid", details={FIELD: errors}
        )
    for index, rule in enumerate(rules):
        _check_amounts(index, rule, wallet_rate, currency, provider)


def _check_amounts(
    index: int,
    rule: RuleInput,
    rate: Decimal,
    currency: str,
    provider: PaymentProvider | None,
) -> None:
    """The purchases the rule makes must be chargeable: fixed paid credits exactly; for
    a target rule the smallest (target - threshold) and the largest (target) purchase."""
    smallest: Decimal | None
    if rule.method == RuleMethod.FIXED:
        if not rule.paid_credits:
            return
        smallest, largest, field = rule.paid_credits, rule.paid_credits, "paid_credits"
    else:
        assert rule.target_credits is not None
        largest, field = rule.target_credits, "target_credits"
        smallest = (
            rule.target_credits - rule.threshold_credits
            if rule.threshold_credits is not None
            else None
        )
    if provider is None:
        raise AssertionError("a rule that buys needs the provider to check its amounts")
    # purchases imports settlement, which imports this module: import at the call.
    from gateway.purchases import check_purchase_amount

    try:
        if rule.method == RuleMethod.FIXED:
            check_purchase_amount(provider, largest, rate, currency)
            return
        if smallest is not None:
            amount = money.purchase_amount_minor(smallest, rate, currency)
            minimum = provider.minimum_charge_cents(currency)
            if amount < minimum:
                shown = money.format_minor(minimum, currency)
                raise AmountTooSmall(
                    f"a top-up from the threshold to the target bills "
                    f"{money.format_minor(amount, currency)}, below the smallest charge "
                    f"{provider.name} accepts in {currency} ({shown})",
                    details={field: [f"target - threshold must bill at least {shown}"]},
                )
        amount = money.purchase_amount_minor(largest, rate, currency)
        maximum = provider.maximum_charge_cents(currency)
        if amount > maximum:
            shown = money.format_minor(maximum, currency)
            raise AmountTooLarge(
                f"a top-up to the target may bill up to {money.format_minor(amount, currency)}, "
                f"above the largest charge {provider.name} accepts in {currency} ({shown})",
                details={field: [f"must bill at most {shown}"]},
            )
    except DomainError as exc:
        details = {
            (field if name == "paid_credits" else name): messages
            for name, messages in exc.details.items()
        }
        raise type(exc)(exc.message, code=exc.code, details=_nested(index, details)) from exc


def needs_provider(rules: Sequence[RuleInput]) -> bool:
    """Whether any rule buys credits (so its amounts are checked with the provider)."""
    return any(rule.paid_credits or rule.method == RuleMethod.TARGET for rule in rules)


def replace_rules(
    session: Session, wallet: Wallet, rules: Sequence[RuleInput], now: datetime
) -> None:
    """The wallet's rules become `rules` (validated; the wallet locked by the caller).

    A rule keeps its id when its trigger stays; every rule given is active again (a
    PUT is how a paused rule resumes). An interval rule without `started_at` keeps the
    one it had (else: now), so changing its amounts does not move its dates; it keeps
    its next date unless its schedule changed or it was paused, when the next date is
    the first one from now on (missed periods are not bought late).
    """
    existing = {
        rule.trigger: rule
        for rule in session.execute(
            select(RecurringTransactionRule)
            .where(RecurringTransactionRule.wallet_id == wallet.id)
            .with_for_update()
        ).scalars()
    }
    wanted = {rule.trigger for rule in rules}
    gone = [rule.id for trigger, rule in existing.items() if trigger not in wanted]
    if gone:
        session.execute(
            delete(RecurringTransactionRule).where(RecurringTransactionRule.id.in_(gone))
        )
    for given in rules:
        row = existing.get(given.trigger)
        if row is None:
            row = RecurringTransactionRule(wallet_id=wallet.id, trigger=given.trigger,
                                           created_at=now)  # fmt: skip
            session.add(row)
        _fill(row, given, now)
    session.flush()
    session.expire(wallet, ["recurring_transaction_rules"])


def _fill(row: RecurringTransactionRule, given: RuleInput, now: datetime) -> None:
    schedule_before = (row.interval, row.started_at)
    was_active = row.status == RuleStatus.ACTIVE
    row.method = given.method
    row.threshold_credits = given.threshold_credits
    row.paid_credits = given.paid_credits
    row.granted_credits = given.granted_credits
    row.target_credits = given.target_credits
    row.status = RuleStatus.ACTIVE
    row.paused_reason = None
    row.updated_at = now
    if given.trigger != RuleTrigger.INTERVAL:
        row.interval = row.started_at = row.next_run_at = None
        return
    assert given.interval is not None
    interval = intervals.Interval(given.interval)
    started_at = given.started_at or row.started_at or now
    row.interval, row.started_at = interval, started_at
    if row.next_run_at is None or not was_active or (interval, started_at) != schedule_before:
        row.next_run_at = intervals.first_run_at_or_after(started_at, interval, now)


# --- pausing ---------------------------------------------------------------------------

_rules = cast(Table, RecurringTransactionRule.__table__)
_entries = cast(Table, WalletTransaction.__table__)
_PAUSE_RULE_OF_ENTRY = (
    update(_rules)
    .where(
        _rules.c.id
        == select(_entries.c.rule_id)
        .where(_entries.c.id == bindparam("b_transaction_id"))
        .scalar_subquery(),
        _rules.c.status == RuleStatus.ACTIVE,
    )
    .values(
        status=RuleStatus.PAUSED,
        paused_reason=bindparam("b_reason"),
        updated_at=bindparam("b_now"),
    )
)
_PAUSE_RULE = (
    update(_rules)
    .where(_rules.c.id == bindparam("b_rule_id"), _rules.c.status == RuleStatus.ACTIVE)
    .values(
        status=RuleStatus.PAUSED,
        paused_reason=bindparam("b_reason"),
        updated_at=bindparam("b_now"),
    )
)


def pause_rule_of_entry(conn: Connection, transaction_id: str, reason: str, now: datetime) -> bool:
    """The automatic top-up of ledger entry `transaction_id` failed: its rule (if the
    entry was made by one that is still there and active) pauses. In the caller's
    transaction, its wallet locked. Returns whether a rule paused."""
    result = conn.execute(
        _PAUSE_RULE_OF_ENTRY,
        {"b_transaction_id": transaction_id, "b_reason": reason[:REASON_LIMIT], "b_now": now},
    )
    return bool(result.rowcount)


def pause_rule(conn: Connection, rule_id: str, reason: str, now: datetime) -> bool:
    """Rule `rule_id` pauses (its wallet locked by the caller); False if not active."""
    result = conn.execute(
        _PAUSE_RULE, {"b_rule_id": rule_id, "b_reason": reason[:REASON_LIMIT], "b_now": now}
    )
    return bool(result.rowcount)


def pause_rules_of_ended_wallets(session: Session, wallets: Sequence[Wallet]) -> None:
    """An ended wallet's rules stop (one UPDATE for all of them), in its ending transaction."""
    ids = [wallet.id for wallet in wallets]
    if not ids:
        return
    at = max((wallet.terminated_at for wallet in wallets if wallet.terminated_at), default=None)
    session.execute(
        update(RecurringTransactionRule)
        .where(
            RecurringTransactionRule.wallet_id.in_(ids),
            RecurringTransactionRule.status == RuleStatus.ACTIVE,
        )
        .values(status=RuleStatus.PAUSED, paused_reason=PausedReason.WALLET_ENDED, updated_at=at)
        .execution_options(synchronize_session=False)
    )
