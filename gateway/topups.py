"""Automatic top-ups: the purchases recurring transaction rules make by themselves.

Two ways in, both inside a transaction that holds the wallet's lock, so the top-up is
committed together with what caused it, or not at all:

- `after_balance_lowered` (`after_balance_lowered_on` for Core callers): called by
  every change that lowers a balance (a credit application, credits taken back after a
  refund or a dispute) once the balance has moved. If the wallet's
  threshold rule is reached (`credits_balance + pending_credits <= threshold_credits`)
  and the rule has no unpaid top-up, the top-up's purchase row is written in that same
  transaction. Racing requests are served one after the other by the wallet's lock,
  and the second one sees the first one's pending credits: one crossing, one top-up.
- `buy_due_interval_top_ups`: the worker's duty for interval rules. Due rules are
  locked with their wallets (`SKIP LOCKED`: several workers share the work); each buys
  the latest period that is due (after downtime, not every missed one), and a unique
  index on (rule, period) decides if two workers ever got to the same period.

Neither calls the payment provider: the purchase is left `creating` and
`complete_automatic_purchases` (the worker) makes its invoice afterwards, with the
usual idempotency keys and `charge_automatically` (reconciliation adopts an invoice the
worker finalized but did not store; it never makes one, nor gives such a purchase up).
A rule never has two unpaid top-ups: one that has an unpaid top-up starts no other
until it is paid or has failed, and a failure pauses the rule (`gateway.rules`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, case, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from gateway import actors, events, intervals, ledger, money, purchases, rules
from gateway.db import utcnow
from gateway.errors import (
    AmountTooSmall,
    DomainError,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
)
from gateway.models import (
    EntrySource,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    RecurringTransactionRule,
    RuleMethod,
    RuleStatus,
    RuleTrigger,
    TransactionStatus,
    Wallet,
    WalletTransaction,
)
from gateway.providers.base import PaymentProvider

log = logging.getLogger(__name__)

_rules = cast(Table, RecurringTransactionRule.__table__)
_entries = cast(Table, WalletTransaction.__table__)

# Read on every credit application of a wallet: its active threshold rule, if any
# (the unique (wallet, trigger) index finds it).
_THRESHOLD_RULE = select(
    _rules.c.id,
    _rules.c.method,
    _rules.c.threshold_credits,
    _rules.c.paid_credits,
    _rules.c.granted_credits,
    _rules.c.target_credits,
).where(
    _rules.c.wallet_id == bindparam("wallet_id"),
    _rules.c.trigger == RuleTrigger.THRESHOLD,
    _rules.c.status == RuleStatus.ACTIVE,
)


@dataclass(frozen=True)
class _Rule:
    """What firing a rule needs, read under the wallet's lock."""

    id: str
    method: str
    paid_credits: Decimal | None
    granted_credits: Decimal | None
    target_credits: Decimal | None


def _pending(session: Session, wallet_id: str, rule_id: str) -> tuple[Decimal, int]:
    """Only once a threshold is reached: the wallet's pending credits, and how many of
    its pending entries the rule made (its unpaid top-ups), in one statement."""
    found = _pending_of(session, [wallet_id], [rule_id])
    return found.get(wallet_id, (money.quantize_credits(Decimal(0)), 0))


def after_balance_lowered(
    session: Session,
    wallet: Wallet,
    now: datetime,
    *,
    provider: PaymentProvider | None = None,
    rules: Iterable[Any] | None = None,
) -> list[WalletTransaction]:
    """The wallet's balance went down (its row locked, its new balance flushed): start
    its threshold rule's top-up if the threshold is reached. Returns the entries made.

    `rules`: the wallet's rules as the caller read them in this transaction, after the
    change and under the lock (the rows its events carry): not read again.

    Never calls the provider and never fails the caller's change: a top-up that cannot
    be bought (no provider configured, an amount it cannot charge) pauses its rule.
    """
    row = _threshold_rule(session, wallet.id, rules)
    if row is None or wallet.credits_balance > row.threshold_credits:
        return []
    pending, unpaid_of_rule = _pending(session, wallet.id, row.id)
    if wallet.credits_balance + pending > row.threshold_credits or unpaid_of_rule:
        return []
    rule = _Rule(row.id, row.method, row.paid_credits, row.granted_credits, row.target_credits)
    origin = ledger.Origin(EntrySource.THRESHOLD, rule.id)
    return _top_up(session, wallet, rule, origin, pending=pending, now=now, provider=provider)


def _threshold_rule(session: Session, wallet_id: str, rules: Iterable[Any] | None) -> Any:
    """The wallet's active threshold rule, if any: from `rules`, else read."""
    if rules is None:
        return session.execute(_THRESHOLD_RULE, {"wallet_id": wallet_id}).first()
    return next(
        (
            rule
            for rule in rules
            if rule.trigger == RuleTrigger.THRESHOLD and rule.status == RuleStatus.ACTIVE
        ),
        None,
    )


def after_balance_lowered_on(conn: Connection, wallet_id: str, now: datetime) -> None:
    """`after_balance_lowered` for a change made with Core statements on `conn` (money
    going back out: a refund or a dispute took credits), the wallet locked on it."""
    balance = conn.execute(_BALANCE_IF_THRESHOLD_REACHED, {"wallet_id": wallet_id}).first()
    if balance is None:
        return  # no active threshold rule, or the balance is still above it
    session = Session(bind=conn, join_transaction_mode="create_savepoint")
    try:
        wallet = session.get_one(Wallet, wallet_id)
        after_balance_lowered(session, wallet, now)
        session.commit()  # the savepoint: the caller's transaction commits it all
    finally:
        session.close()


_wallets = cast(Table, Wallet.__table__)
_BALANCE_IF_THRESHOLD_REACHED = (
    select(_wallets.c.credits_balance)
    .join(_rules, _rules.c.wallet_id == _wallets.c.id)
    .where(
        _wallets.c.id == bindparam("wallet_id"),
        _rules.c.trigger == RuleTrigger.THRESHOLD,
        _rules.c.status == RuleStatus.ACTIVE,
        _wallets.c.credits_balance <= _rules.c.threshold_credits,
    )
)


def _top_up(
    session: Session,
    wallet: Wallet,
    rule: _Rule,
    origin: ledger.Origin,
    *,
    pending: Decimal,
    now: datetime,
    provider: PaymentProvider | None,
) -> list[WalletTransaction]:
    """One top-up of `rule` into the (locked) wallet: its purchase row (left `creating`
    for the worker) and granted credits, in the caller's transaction."""
    bought = _what_to_buy(rule, wallet.credits_balance, pending)
    if bought is None:
        return []
    paid, granted = bought
    entries: list[WalletTransaction] = []
    if paid:
        try:
            # Checks the amount before it writes anything; completed by the worker.
            batch = purchases.PurchaseBatch(provider=provider)
            entries.append(
                batch.open(session, wallet, paid, now, created_by=actors.SYSTEM, origin=origin)
            )
        except DomainError as exc:  # no provider, or an amount it cannot charge
            code = _pause_code(rule.method, exc)
            if code is not None:
                rules.pause_rule(session.connection(), rule.id, _pause_reason(rule.id, code, exc),
                                 now)  # fmt: skip
            return []
    if granted:
        entries.append(
            ledger.grant_credits(
                session, wallet, granted, now, created_by=actors.SYSTEM, origin=origin
            )
        )
    log.info(
        "wallet %s: %s top-up of rule %s started (%s)",
        wallet.id,
        origin.source,
        rule.id,
        ", ".join(f"{entry.transaction_status} {entry.credit_amount}" for entry in entries),
    )
    return entries


class _Amounts(Protocol):
    """What a top-up reads of its rule (a threshold rule's row or an interval rule)."""

    @property
    def method(self) -> str: ...
    @property
    def target_credits(self) -> Decimal | None: ...
    @property
    def paid_credits(self) -> Decimal | None: ...
    @property
    def granted_credits(self) -> Decimal | None: ...


def _what_to_buy(
    rule: _Amounts, balance: Decimal, pending: Decimal
) -> tuple[Decimal | None, Decimal | None] | None:
    """The paid and granted credits a top-up of `rule` makes into a wallet holding
    `balance` with `pending` on their way; None when a target rule's target is met."""
    if rule.method != RuleMethod.TARGET:
        return rule.paid_credits, rule.granted_credits
    assert rule.target_credits is not None
    paid = money.quantize_credits(rule.target_credits - balance - pending)
    return (paid, None) if paid > 0 else None


def _pause_code(method: str, exc: DomainError) -> str | None:
    """Why a rule pauses when its purchase cannot be opened: no provider configured, or
    an amount the provider cannot charge. None: what is missing to a target is too
    little to charge, so there is nothing to do (the rule stays active)."""
    if isinstance(exc, PaymentProviderUnavailable):
        return rules.PausedReason.PROVIDER_NOT_CONFIGURED
    if method == RuleMethod.TARGET and isinstance(exc, AmountTooSmall):
        return None
    return rules.PausedReason.AMOUNT_NOT_CHARGEABLE


def _pause_reason(rule_id: str, code: str, exc: Exception) -> str:
    log.warning("automatic top-up rule %s paused: %s: %s", rule_id, code, exc)
    return f"{code}: {exc}"[: rules.REASON_LIMIT]


# --- interval rules: the worker's duty ---------------------------------------------


@dataclass
class IntervalRun:
    """What one batch of due interval rules did."""

    rules: int = 0  # due rules handled (their next date moved on)
    started: int = 0  # top-ups started
    skipped: list[str] = field(default_factory=list)  # rule ids: why is logged


def _due_rules(session: Session, now: datetime, batch_size: int) -> list[Any]:
    return list(
        session.execute(
            select(RecurringTransactionRule, Wallet)
            .join(Wallet, Wallet.id == RecurringTransactionRule.wallet_id)
            .where(
                RecurringTransactionRule.status == RuleStatus.ACTIVE,
                RecurringTransactionRule.trigger == RuleTrigger.INTERVAL,
                RecurringTransactionRule.next_run_at <= now,
            )
            .order_by(RecurringTransactionRule.next_run_at, RecurringTransactionRule.id)
            .limit(batch_size)
            # Wallet, then rule: the order every writer of a rule locks them in.
            .with_for_update(of=[Wallet, RecurringTransactionRule], skip_locked=True)
            .execution_options(populate_existing=True)
        ).all()
    )


def buy_due_interval_top_ups(
    session: Session,
    now: datetime,
    batch_size: int,
    *,
    provider: PaymentProvider | None = None,
) -> IntervalRun:
    """One batch of interval rules due at `now`: each buys its latest due period (the
    caller commits, then calls again until `rules` is 0).

    Rules another worker holds are skipped (SKIP LOCKED). A rule whose wallet has
    ended or expired, or that still has an unpaid top-up, buys nothing this period; one
    whose purchase the provider could not charge pauses. A period already bought (the
    unique (rule, period) index, should two workers ever meet on one) is not bought
    again. Set-based: a few statements per batch, whatever its size (the ledger's
    `open_rule_top_ups`, then `purchases.open_automatic_purchases`).
    """
    run = IntervalRun()
    due = _due_rules(session, now, batch_size)
    if not due:
        return run
    run.rules = len(due)
    pending = _pending_of(session, [wallet.id for _, wallet in due], [rule.id for rule, _ in due])
    plans = _plan_due_rules(due, pending, now, provider, run)
    conn = session.connection()
    entries = ledger.open_rule_top_ups(
        conn, [top_up for _, top_up, _ in plans.values()], now, created_by=actors.SYSTEM
    )
    written: dict[str, str | None] = {}  # rule id -> its purchased entry, if any
    for entry in entries:
        purchased = entry.transaction_status == TransactionStatus.PURCHASED
        if purchased or entry.rule_id not in written:
            written[entry.rule_id] = entry.id if purchased else None
    opened, crossings = _start_written(plans, written, run)
    if opened:
        name = (provider or purchases.configured_provider()).name
        purchases.open_automatic_purchases(conn, name, opened, now)
    session.flush()  # the rules' next dates (and pauses), in one executemany
    ledger.announce_rule_entries(session, entries, now, then=crossings)
    log.info("interval top-ups: %d due rules, %d top-ups started, %d skipped",
             run.rules, run.started, len(run.skipped))  # fmt: skip
    return run


# Rule id -> what its top-up does: the wallet, the ledger's top-up, the amount in cents.
_Plans = dict[str, tuple[Wallet, ledger.RuleTopUp, int]]


def _plan_due_rules(
    due: Sequence[Any],
    pending: dict[str, tuple[Decimal, int]],
    now: datetime,
    provider: PaymentProvider | None,
    run: IntervalRun,
) -> _Plans:
    """Each due rule moves to its next date and plans its latest due period; a rule
    that buys nothing this period (wallet ended, last top-up unpaid, nothing to buy)
    goes to `run.skipped`."""
    plans: _Plans = {}
    for rule, wallet in due:
        assert rule.interval is not None and rule.started_at is not None
        interval = intervals.Interval(rule.interval)
        latest = intervals.latest_run_at_or_before(rule.started_at, interval, now)
        assert latest is not None, "a due rule has a date at or before now"
        period_at = latest[1]
        rule.next_run_at = intervals.run_after(rule.started_at, interval, now)
        held, unpaid_of_rule = pending.get(wallet.id, (Decimal(0), 0))
        if not wallet.is_usable(now) or unpaid_of_rule:
            run.skipped.append(rule.id)
            why = "its last top-up is unpaid" if unpaid_of_rule else "the wallet has ended"
            log.info("rule %s: period %s not bought (%s)", rule.id, period_at, why)
            continue
        plan = _interval_plan(rule, wallet, period_at, pending=held, now=now, provider=provider)
        if plan is None:
            run.skipped.append(rule.id)
            continue
        plans[rule.id] = (wallet, *plan)
    return plans


def _start_written(
    plans: _Plans, written: dict[str, str | None], run: IntervalRun
) -> tuple[list[purchases.AutomaticPurchase], list[events.NewEvent]]:
    """For each planned top-up the ledger wrote (`written`: rule id -> its purchased
    entry, if any): the granted credits on the wallet object and the balance crossings
    they make, and the automatic purchase to open. A period already bought is skipped."""
    opened: list[purchases.AutomaticPurchase] = []
    crossings: list[events.NewEvent] = []
    for rule_id, (wallet, top_up, amount_cents) in plans.items():
        if rule_id not in written:
            run.skipped.append(rule_id)
            log.info("rule %s: period %s was already bought", rule_id, top_up.origin.period_at)
            continue
        run.started += 1
        if top_up.granted:
            before = wallet.credits_balance
            set_committed_value(wallet, "credits_balance", before + top_up.granted)
            crossings += ledger.balance_crossings(
                wallet.id, before, wallet.credits_balance, wallet.low_balance_threshold_credits
            )
        transaction_id = written[rule_id]
        if transaction_id is not None:
            assert top_up.paid is not None
            opened.append(
                purchases.AutomaticPurchase(
                    wallet_id=wallet.id,
                    customer_id=wallet.customer_id,
                    currency=wallet.currency,
                    transaction_id=transaction_id,
                    credits=top_up.paid,
                    amount_cents=amount_cents,
                )
            )
    return opened, crossings


def _pending_of(
    session: Session, wallet_ids: Sequence[str], rule_ids: Sequence[str]
) -> dict[str, tuple[Decimal, int]]:
    """For each wallet with pending purchases: its pending credits, and how many of its
    pending entries `rule_ids` made (their unpaid top-ups)."""
    rows = session.execute(
        _PENDING_OF_WALLETS, {"wallet_ids": list(wallet_ids), "rule_ids": list(rule_ids)}
    )
    return {
        row.wallet_id: (money.quantize_credits(Decimal(row.pending)), int(row.unpaid_of_rule))
        for row in rows
    }


_PENDING_OF_WALLETS = (
    select(
        _entries.c.wallet_id,
        func.coalesce(func.sum(_entries.c.credit_amount), 0).label("pending"),
        func.coalesce(
            func.sum(
                case((_entries.c.rule_id.in_(bindparam("rule_ids", expanding=True)), 1), else_=0)
            ),
            0,
        ).label("unpaid_of_rule"),
    )
    .where(
        _entries.c.wallet_id.in_(bindparam("wallet_ids", expanding=True)),
        _entries.c.status == EntryStatus.PENDING,
        _entries.c.transaction_status == TransactionStatus.PURCHASED,
    )
    .group_by(_entries.c.wallet_id)
)


def _interval_plan(
    rule: RecurringTransactionRule,
    wallet: Wallet,
    period_at: datetime,
    *,
    pending: Decimal,
    now: datetime,
    provider: PaymentProvider | None,
) -> tuple[ledger.RuleTopUp, int] | None:
    """What `rule` buys for `period_at` and what it bills (minor units), or None when
    there is nothing to buy, or nothing the provider can charge (the rule pauses)."""
    bought = _what_to_buy(rule, wallet.credits_balance, pending)
    if bought is None:
        return None
    paid, granted = bought
    amount = 0
    if paid:
        try:
            chosen = provider or purchases.configured_provider()
            amount = purchases.check_purchase_amount(
                chosen, paid, wallet.rate_amount, wallet.currency
            )
        except DomainError as exc:  # no provider, or an amount it cannot charge
            code = _pause_code(rule.method, exc)
            if code is not None:
                _pause_row(rule, _pause_reason(rule.id, code, exc), now)
            return None
    origin = ledger.Origin(EntrySource.INTERVAL, rule.id, period_at)
    return ledger.RuleTopUp(wallet.id, wallet.rate_amount, origin, paid, granted), amount


def _pause_row(rule: RecurringTransactionRule, reason: str, now: datetime) -> None:
    """Pause a rule the caller holds locked (flushed with the batch)."""
    rule.status = RuleStatus.PAUSED
    rule.paused_reason = reason
    rule.updated_at = now


def buy_all_due_interval_top_ups(
    session: Session,
    now: datetime,
    batch_size: int,
    *,
    provider: PaymentProvider | None = None,
) -> IntervalRun:
    """Every interval rule due at `now`, a batch per transaction (each committed, so a
    worker stopped midway keeps what it did and holds few locks at a time)."""
    total = IntervalRun()
    while True:
        run = buy_due_interval_top_ups(session, now, batch_size, provider=provider)
        session.commit()
        if run.rules == 0:
            return total
        total.rules += run.rules
        total.started += run.started
        total.skipped += run.skipped
        session.expunge_all()  # memory stays flat however many rules are due


# --- completing automatic purchases: the worker's duty -------------------------------

_AUTOMATIC_CREATING = (
    select(Purchase.id)
    .where(
        Purchase.status == PurchaseStatus.CREATING,
        Purchase.collection_method.is_not(None),
    )
    .order_by(Purchase.created_at, Purchase.id)
)


@dataclass
class CompletionRun:
    completed: int = 0  # invoices made and finalized (or found made)
    rejected: int = 0  # refused by the provider: purchase failed, rule paused
    unavailable: bool = False  # the provider could not be reached: the rest waits


def complete_automatic_purchases(
    session: Session,
    provider: PaymentProvider,
    *,
    limit: int,
    clock: Callable[[], datetime] = utcnow,
) -> CompletionRun:
    """Make the invoices of automatic top-ups still `creating`, oldest first.

    Phases 2 and 3 of `gateway.purchases` (no transaction open while the provider is
    called; idempotency keys from our ids, so a purchase completed twice, by two
    workers, still has one invoice). Stops at the first
    `payment_provider_unavailable`: the provider is down, the next run resumes.
    """
    run = CompletionRun()
    purchase_ids = list(session.execute(_AUTOMATIC_CREATING.limit(limit)).scalars())
    session.commit()
    for purchase_id in purchase_ids:
        try:
            purchases.complete_purchase(session, purchase_id, provider=provider, clock=clock)
        except PaymentProviderUnavailable as exc:
            log.warning("automatic top-ups wait for the provider: %s", exc)
            session.rollback()
            run.unavailable = True
            break
        except PaymentProviderRejected as exc:
            log.warning("automatic top-up %s rejected: %s", purchase_id, exc)
            run.rejected += 1
            continue
        run.completed += 1
    return run
