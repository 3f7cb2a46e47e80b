"""Credits follow the money back out: refunds, credit notes and disputes.

Every refund, credit note and dispute of a purchase's payment is recorded once, by its
provider id, in `payment_returns`. What the purchase gave back is then *computed from
those rows* under the purchase's lock, never added up event by event, so the outcome
is the same whatever the order of the events, their repeats, or a reconciliation run
applying the same objects at the same moment:

- `returned_cents` = the issued post-payment credit notes plus the succeeded refunds
  that no credit note counts already (a refund made through a credit note counts once,
  through the note), capped at what was paid;
- the credits that should be out of the wallet (`reclaimed_credits`) are
  round_half_up(purchased x returned / paid, 5) on that running total, or all the
  purchased credits while a dispute is open or once it is lost;
- the ledger moves by the difference from what was applied before: an increase is a
  `refunded` (or `disputed`) outbound entry of at most the balance, the rest being the
  purchase's `shortfall_credits` (`attention_reason: refunded_after_consumption`); a
  decrease (a dispute won) first cancels shortfall, then comes back as a `reinstated`
  inbound entry if the wallet is still usable.

Only settled purchases hold credits. Rows recorded for a purchase not settled yet are
applied when it settles (`follow_after_settlement`); a `refund_required` purchase
(paid for an ended wallet, never credited) becomes `refunded` once everything went back.
Callers own the transaction and have locked nothing: each function locks the purchase
(wallet, then purchase, as settlement does).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gateway import ledger, metrics, money, settlement, topups, transitions
from gateway.db import new_id
from gateway.models import (
    DisputeStatus,
    EntryStatus,
    PaymentReturn,
    PurchaseStatus,
    ReturnKind,
    TransactionStatus,
    wallet_usable,
)
from gateway.providers.base import (
    CreditNote,
    Dispute,
    Refund,
    dispute_moved_on,
    refund_moved_on,
)

log = logging.getLogger(__name__)

# Why a purchase needs a person although its money and credits were handled.
REFUNDED_AFTER_CONSUMPTION = "refunded_after_consumption"
# A refund a credit note named before the refund's own event arrived.
UNSEEN = "unseen"
# A credit note's own statuses (not an invoice's).
NOTE_ISSUED = "issued"
NOTE_VOID = "void"
_HELD = frozenset({DisputeStatus.OPEN, DisputeStatus.LOST})
_HOLDING = frozenset({PurchaseStatus.SETTLED, PurchaseStatus.REFUNDED})


class ReturnAction(enum.StrEnum):
    APPLIED = "applied"  # the purchase (and maybe the ledger) changed
    RECORDED = "recorded"  # remembered; nothing to move yet (not settled, pending refund…)
    UNCHANGED = "unchanged"  # already counted: a repeat
    NOT_OURS = "not_ours"  # no purchase of ours was paid by it


@dataclass(frozen=True)
class ReturnOutcome:
    action: ReturnAction
    purchase_id: str | None = None
    reason: str | None = None
    taken: Decimal = Decimal(0)  # credits taken out of the wallet by this call
    reinstated: Decimal = Decimal(0)


_returns = cast(Table, PaymentReturn.__table__)
_READ_RETURNS = select(
    _returns.c.provider_object_id,
    _returns.c.kind,
    _returns.c.amount_cents,
    _returns.c.status,
    _returns.c.credit_note_id,
).where(_returns.c.purchase_id == bindparam("b_purchase_id"))
_UPDATE_RETURN = update(_returns).where(_returns.c.provider_object_id == bindparam("b_object_id"))


@dataclass(frozen=True)
class _Row:
    object_id: str
    kind: str
    amount_cents: int
    status: str
    credit_note_id: str | None


def _rows(conn: Connection, purchase_id: str) -> dict[str, _Row]:
    return {
        row.provider_object_id: _Row(*row)
        for row in conn.execute(_READ_RETURNS, {"b_purchase_id": purchase_id})
    }


def _insert(
    conn: Connection,
    rows: dict[str, _Row],
    purchase_id: str,
    object_id: str,
    *,
    kind: ReturnKind,
    amount_cents: int,
    status: str,
    now: datetime,
    credit_note_id: str | None = None,
) -> None:
    """A new row, added to `rows` too; one recorded meanwhile for another purchase is
    left alone (and not counted here)."""
    dialect_insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    inserted = conn.execute(
        dialect_insert(_returns)
        .values(
            id=new_id("ret"),
            provider_object_id=object_id,
            kind=kind,
            purchase_id=purchase_id,
            amount_cents=max(amount_cents, 0),
            status=status,
            credit_note_id=credit_note_id,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[_returns.c.provider_object_id])
        .returning(_returns.c.id)
    ).first()
    if inserted is not None:
        rows[object_id] = _Row(object_id, kind, max(amount_cents, 0), status, credit_note_id)


def _update(
    conn: Connection, rows: dict[str, _Row], object_id: str, now: datetime, **values: Any
) -> None:
    """Change a recorded row (its status, amount or counting note), in `rows` too."""
    conn.execute(_UPDATE_RETURN, {"b_object_id": object_id, "updated_at": now, **values})
    rows[object_id] = dataclasses.replace(rows[object_id], **values)


# --- recording what the provider says ------------------------------------------------


def _record_refund(
    conn: Connection, purchase_id: str, refund: Refund, rows: dict[str, _Row], now: datetime
) -> bool:
    """Remember `refund` (its latest status and amount). True if anything changed."""
    known = rows.get(refund.id)
    if known is None:
        _insert(conn, rows, purchase_id, refund.id, kind=ReturnKind.REFUND,
                amount_cents=refund.amount_cents, status=refund.status, now=now)  # fmt: skip
        return True
    if (known.status, known.amount_cents) == (refund.status, refund.amount_cents):
        return False
    if refund_moved_on(refund.status, known.status):
        # An older state delivered late (`refund.created` after `refund.failed`)
        # changes nothing: a refund only moves forward.
        return False
    if known.status == "succeeded" and not refund.succeeded:
        # A refund can fail after it succeeded (the card's account closed): the money
        # stayed with us, so it no longer counts and its credits come back.
        log.warning("refund %s was succeeded and is now %s: no longer counted", refund.id,
                    refund.status)  # fmt: skip
    _update(
        conn, rows, refund.id, now, status=refund.status, amount_cents=max(refund.amount_cents, 0)
    )
    return True


def _record_credit_note(
    conn: Connection, purchase_id: str, note: CreditNote, rows: dict[str, _Row], now: datetime
) -> bool:
    changed = False
    status = NOTE_VOID if note.voided else NOTE_ISSUED
    known = rows.get(note.id)
    if known is None:
        _insert(conn, rows, purchase_id, note.id, kind=ReturnKind.CREDIT_NOTE,
                amount_cents=note.amount_cents, status=status, now=now)  # fmt: skip
        changed = True
    elif known.status != status and note.voided:
        _update(conn, rows, note.id, now, status=status)
        changed = True
    for refund_id in note.refund_ids:
        refund = rows.get(refund_id)
        if refund is None:
            _insert(conn, rows, purchase_id, refund_id, kind=ReturnKind.REFUND, amount_cents=0,
                    status=UNSEEN, now=now, credit_note_id=note.id)  # fmt: skip
            changed = True
        elif refund.credit_note_id is None:
            _update(conn, rows, refund_id, now, credit_note_id=note.id)
            changed = True
    return changed


def _record_dispute(
    conn: Connection, purchase_id: str, dispute: Dispute, rows: dict[str, _Row], now: datetime
) -> bool:
    known = rows.get(dispute.id)
    if known is None:
        _insert(conn, rows, purchase_id, dispute.id, kind=ReturnKind.DISPUTE,
                amount_cents=dispute.amount_cents, status=dispute.outcome, now=now)  # fmt: skip
        return True
    # A closed dispute stays closed: `created` delivered after `closed` changes nothing.
    if not dispute_moved_on(known.status, dispute.outcome):
        return False
    _update(conn, rows, dispute.id, now, status=dispute.outcome)
    return True


# --- what the rows add up to ------------------------------------------------------------


def _returned_cents(rows: Iterable[_Row]) -> int:
    """Issued credit notes, plus succeeded refunds no issued note counts already (a
    refund made through a note that was voided since counts on its own)."""
    rows = list(rows)
    issued_notes = {
        row.object_id
        for row in rows
        if row.kind == ReturnKind.CREDIT_NOTE and row.status == NOTE_ISSUED
    }
    total = 0
    for row in rows:
        if (row.kind == ReturnKind.CREDIT_NOTE and row.status == NOTE_ISSUED) or (
            row.kind == ReturnKind.REFUND
            and row.status == "succeeded"
            and row.credit_note_id not in issued_notes
        ):
            total += row.amount_cents
    return total


def _dispute_status(rows: Iterable[_Row]) -> DisputeStatus | None:
    outcomes = {row.status for row in rows if row.kind == ReturnKind.DISPUTE}
    for status in (DisputeStatus.OPEN, DisputeStatus.LOST, DisputeStatus.WON):
        if status.value in outcomes:
            return status
    return None


def _follow(
    conn: Connection,
    locked: settlement.LockedRows,
    rows: dict[str, _Row],
    now: datetime,
    source: str,
) -> ReturnOutcome:
    """Bring the purchase and the ledger in line with its recorded returns."""
    purchase, wallet = locked.purchase, locked.wallet
    paid = purchase.amount_paid_cents or purchase.total_cents or purchase.amount_cents
    returned = min(_returned_cents(rows.values()), paid)
    dispute = _dispute_status(rows.values())
    changes: dict[str, Any] = {}
    if returned != purchase.returned_cents:
        changes["returned_cents"] = returned
    if dispute != purchase.dispute_status:
        changes["dispute_status"] = dispute
    all_returned = returned >= paid
    if purchase.entry_status != EntryStatus.SETTLED or purchase.status not in _HOLDING:
        # A lost dispute returned the money through the customer's bank.
        charged_back = dispute == DisputeStatus.LOST
        return _follow_without_credits(
            conn, locked, changes, all_returned=all_returned or charged_back, now=now,
            source=source,
        )  # fmt: skip
    purchased = purchase.credit_amount
    by_refunds = money.returned_credits(purchased, returned, paid)
    target = purchased if dispute in _HELD else by_refunds
    applied = purchase.reclaimed_credits
    taken, reinstated, shortfall = _move_credits(
        conn,
        wallet,
        now,
        applied=applied,
        target=target,
        shortfall=purchase.shortfall_credits,
        held=dispute in _HELD,
    )
    if target != applied:
        changes["reclaimed_credits"] = target
    if shortfall != purchase.shortfall_credits:
        changes["shortfall_credits"] = shortfall
    if shortfall > 0 and purchase.attention_reason != REFUNDED_AFTER_CONSUMPTION:
        changes["attention_reason"] = REFUNDED_AFTER_CONSUMPTION
    elif shortfall == 0 and purchase.attention_reason == REFUNDED_AFTER_CONSUMPTION:
        changes["attention_reason"] = None
    if not changes:
        return ReturnOutcome(ReturnAction.UNCHANGED, purchase.id, "already counted")
    _write_holding(conn, locked, changes, all_returned=all_returned, now=now)
    if shortfall > purchase.shortfall_credits:
        transitions.announce_attention(
            conn, locked.ref, REFUNDED_AFTER_CONSUMPTION, _shortfall_detail(shortfall, wallet, now),
            now,
        )  # fmt: skip
    log.info(
        "%s: purchase %s returned %s of %s, %s credits out (%s taken, %s reinstated, "
        "%s short), dispute %s",
        source, purchase.id, returned, paid, target, taken, reinstated, shortfall, dispute,
    )  # fmt: skip
    return ReturnOutcome(ReturnAction.APPLIED, purchase.id, None, taken, reinstated)


def _shortfall_detail(shortfall: Decimal, wallet: settlement.LockedWallet, now: datetime) -> str:
    """Why credits the returns call for could not be taken back. A wallet that has
    ended had what was left voided then: the shortfall is what was spent before it
    ended, or voided when it did, which the ledger does not tell apart per purchase."""
    if wallet_usable(wallet.status, wallet.expiration_at, now):
        return f"{shortfall} credits returned at the provider were already consumed"
    return (
        f"{shortfall} credits returned at the provider could not be taken back: wallet "
        f"{wallet.id} has ended (spent before it ended, or voided when it did)"
    )


def _write_holding(
    conn: Connection,
    locked: settlement.LockedRows,
    changes: dict[str, Any],
    *,
    all_returned: bool,
    now: datetime,
) -> None:
    """A purchase that holds credits is `refunded` once everything went back, and
    `settled` again if some of it did not after all."""
    status = locked.purchase.status
    if all_returned and status == PurchaseStatus.SETTLED:
        transitions.mark_refunded(conn, locked.ref, now, changes)
    elif not all_returned and status == PurchaseStatus.REFUNDED:
        transitions.reverse_refund(conn, locked.ref, PurchaseStatus.SETTLED, now, changes)
    else:
        transitions.record(conn, locked.purchase.id, {**changes, "updated_at": now})


def _follow_without_credits(
    conn: Connection,
    locked: settlement.LockedRows,
    changes: dict[str, Any],
    *,
    all_returned: bool,
    now: datetime,
    source: str,
) -> ReturnOutcome:
    """A purchase whose entry never settled (not paid yet, paid for an ended wallet,
    under review) holds no credits: its returns are only counted. A `refund_required`
    purchase is `refunded` once everything went back (refunds, credit notes, or a lost
    dispute), and needs its refund again if some of it did not after all."""
    purchase = locked.purchase
    if purchase.status == PurchaseStatus.REFUND_REQUIRED and all_returned:
        transitions.mark_refunded(conn, locked.ref, now, changes)
        log.info("%s: purchase %s refunded; it held no credits", source, purchase.id)
        return ReturnOutcome(ReturnAction.APPLIED, purchase.id, "refund_required resolved")
    if purchase.status == PurchaseStatus.REFUNDED and not all_returned:
        transitions.reverse_refund(conn, locked.ref, PurchaseStatus.REFUND_REQUIRED, now, changes)
        log.warning("%s: purchase %s: its refund was undone; refund_required again", source,
                    purchase.id)  # fmt: skip
        return ReturnOutcome(ReturnAction.APPLIED, purchase.id, "refund undone")
    transitions.record(conn, purchase.id, changes)
    action = ReturnAction.RECORDED if changes else ReturnAction.UNCHANGED
    return ReturnOutcome(action, purchase.id, f"purchase is {purchase.status}")


def _move_credits(
    conn: Connection,
    wallet: settlement.LockedWallet,
    now: datetime,
    *,
    applied: Decimal,
    target: Decimal,
    shortfall: Decimal,
    held: bool,
) -> tuple[Decimal, Decimal, Decimal]:
    """The ledger goes from the credits `applied` so far to the `target` the returns call
    for (`held`: a dispute holds them all): more taken back, what the balance lacks
    becoming shortfall; or fewer, a shortfall cancelled first, then credits reinstated
    into a wallet still in use. Returns (taken, reinstated, shortfall)."""
    taken = reinstated = Decimal(0)
    if target > applied:
        kind = TransactionStatus.DISPUTED if held else TransactionStatus.REFUNDED
        increase = target - applied
        taken = ledger.take_back(conn, wallet.id, increase, kind, now)
        shortfall += increase - taken
        metrics.CREDITS_MOVED.labels(kind.value).inc(float(taken))
        if taken > 0 and wallet_usable(wallet.status, wallet.expiration_at, now):
            # The balance went down: a threshold top-up starts here if it is reached.
            topups.after_balance_lowered_on(conn, wallet.id, now)
    elif target < applied:
        decrease = applied - target
        cancelled = min(decrease, shortfall)
        shortfall -= cancelled
        back = decrease - cancelled
        if back > 0 and wallet_usable(wallet.status, wallet.expiration_at, now):
            ledger.reinstate(conn, wallet.id, back, now)
            reinstated = back
            metrics.CREDITS_MOVED.labels(TransactionStatus.REINSTATED.value).inc(float(back))
    return taken, reinstated, shortfall


# --- the use cases ----------------------------------------------------------------------


def _not_ours(what: str) -> ReturnOutcome:
    return ReturnOutcome(ReturnAction.NOT_OURS, None, f"{what} pays no purchase of ours")


def apply_refunds(
    conn: Connection,
    refunds: Iterable[Refund],
    now: datetime,
    source: str,
    *,
    payment_id: str | None,
    purchase_id: str | None = None,
) -> ReturnOutcome:
    """Refunds of one payment: recorded once each, then followed. The purchase is the
    one paid by `payment_id`, or `purchase_id` when the caller looked the payment up
    (its payment id is then stored, so the next refund needs no lookup)."""
    locked = _lock(conn, purchase_id=purchase_id, payment_id=payment_id)
    if locked is None:
        return _not_ours(f"payment {payment_id}")
    if payment_id and locked.purchase.payment_id is None:
        transitions.record(conn, locked.purchase.id, {"payment_id": payment_id})
    rows = _rows(conn, locked.purchase.id)
    changed = False
    for refund in refunds:
        changed |= _record_refund(conn, locked.purchase.id, refund, rows, now)
    return _after_recording(conn, locked, rows, changed=changed, now=now, source=source)


def apply_credit_note(
    conn: Connection, note: CreditNote, now: datetime, source: str
) -> ReturnOutcome:
    """A credit note on a purchase invoice: recorded once, then followed. A note issued
    before payment gives nothing back (it lowered what was due)."""
    locked = _lock(conn, invoice_id=note.invoice_id)
    if locked is None:
        return ReturnOutcome(
            ReturnAction.NOT_OURS, None, f"invoice {note.invoice_id} is not a purchase of ours"
        )
    rows = _rows(conn, locked.purchase.id)
    changed = _record_credit_note(conn, locked.purchase.id, note, rows, now)
    return _after_recording(conn, locked, rows, changed=changed, now=now, source=source)


def apply_dispute(
    conn: Connection,
    dispute: Dispute,
    now: datetime,
    source: str,
    *,
    purchase_id: str | None = None,
) -> ReturnOutcome:
    """A dispute opened or closed on a purchase's payment: recorded, then followed."""
    locked = _lock(conn, purchase_id=purchase_id, payment_id=dispute.payment_id)
    if locked is None:
        return _not_ours(f"payment {dispute.payment_id}")
    if dispute.payment_id and locked.purchase.payment_id is None:
        transitions.record(conn, locked.purchase.id, {"payment_id": dispute.payment_id})
    rows = _rows(conn, locked.purchase.id)
    changed = _record_dispute(conn, locked.purchase.id, dispute, rows, now)
    return _after_recording(conn, locked, rows, changed=changed, now=now, source=source)


def follow_after_settlement(conn: Connection, purchase_id: str, now: datetime) -> None:
    """A purchase just settled (its rows locked by the caller): money that went back
    before its payment was seen here takes its credits now."""
    rows = _rows(conn, purchase_id)
    if rows:  # rare: most payments are seen before anything goes back
        locked = settlement.lock_purchase_rows(conn, purchase_id=purchase_id)
        assert locked is not None
        _follow(conn, locked, rows, now, "settlement")


def _lock(
    conn: Connection,
    *,
    purchase_id: str | None = None,
    payment_id: str | None = None,
    invoice_id: str | None = None,
) -> settlement.LockedRows | None:
    if purchase_id is None and payment_id is None and invoice_id is None:
        return None
    return settlement.lock_purchase_rows(
        conn, purchase_id=purchase_id, payment_id=payment_id, invoice_id=invoice_id
    )


def _after_recording(
    conn: Connection,
    locked: settlement.LockedRows,
    rows: dict[str, _Row],
    *,
    changed: bool,
    now: datetime,
    source: str,
) -> ReturnOutcome:
    """Follow the rows as recorded (read once, changed in place by the recording)."""
    outcome = _follow(conn, locked, rows, now, source)
    if outcome.action == ReturnAction.UNCHANGED and changed:
        return ReturnOutcome(ReturnAction.RECORDED, locked.purchase.id, outcome.reason)
    return outcome
