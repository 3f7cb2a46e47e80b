"""The repairs a run can make. The steps only *plan* them; `gateway.reconcile.run`
either executes each (a real run) or reports what it would do (`planned()`, a dry run).
Executing is the only place a run writes: each repair goes through the code the
webhooks use (`settlement`, `returns`, `purchases`), in a short transaction of its own,
under the same locks (wallet, then purchase), so a webhook arriving at the same moment
cannot apply anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import ledger, money, returns, settlement, transitions
from gateway.db import unit_of_work
from gateway.models import Purchase, PurchaseStatus
from gateway.providers.base import (
    REFUND_GIVING_BACK,
    Dispute,
    DisputeOutcome,
    InvoiceSnapshot,
    PaymentRefund,
    ProviderError,
    Refund,
)
from gateway.reconcile.context import SOURCE, PurchaseRow, Run
from gateway.reconcile.report import Finding, FindingAction, FindingKind
from gateway.transitions import InvoiceStatus


class Repair(Protocol):
    def planned(self) -> list[Finding]:
        """What a dry run reports in place of this repair (nothing: a silent step)."""
        ...

    def execute(self, run: Run) -> None:
        """Make the repair and add what happened to the run's report."""
        ...


def _would(
    kind: FindingKind,
    detail: str,
    outcome: str,
    *,
    purchase_id: str | None,
    wallet_id: str | None,
    invoice_id: str | None,
    invoice_status: str | None = None,
) -> Finding:
    return Finding(
        kind,
        FindingAction.WOULD_REPAIR,
        detail,
        outcome=outcome,
        purchase_id=purchase_id,
        wallet_id=wallet_id,
        invoice_id=invoice_id,
        invoice_status=invoice_status,
    )


def stripe_failed(run: Run, purchase: PurchaseRow, doing: str, message: str) -> None:
    """A Stripe call about one purchase failed: the next run tries again."""
    run.add(
        Finding(
            FindingKind.STUCK_PURCHASE
            if purchase.status == PurchaseStatus.CREATING
            else FindingKind.INVOICE_MISSING,
            FindingAction.FAILED,
            f"could not {doing} at Stripe: {message}; the next run tries again",
            purchase_id=purchase.id,
            wallet_id=purchase.wallet_id,
            invoice_id=purchase.invoice_id,
        )
    )


def unknown_payment(
    run: Run, invoice: InvoiceSnapshot, why: str, purchase: PurchaseRow | None = None
) -> None:
    paid = money.from_minor(invoice.amount_paid_cents, invoice.currency)
    run.add(
        Finding(
            FindingKind.UNKNOWN_PAID_INVOICE,
            FindingAction.REPORTED,
            f"invoice paid at Stripe ({money.format_amount(paid, invoice.currency)} "
            f"{invoice.currency}) {why}: no credits were added for it",
            purchase_id=invoice.purchase_id,
            wallet_id=purchase.wallet_id if purchase is not None else None,
            invoice_id=invoice.id,
            invoice_status=invoice.status,
        )
    )


_PREDICTED = {
    InvoiceStatus.PAID.value: "settle",
    InvoiceStatus.VOID.value: "fail",
    InvoiceStatus.UNCOLLECTIBLE.value: "fail",
}


@dataclass(frozen=True)
class ApplyInvoice:
    """`settlement.apply_invoice`: the webhook's code path and locks."""

    kind: FindingKind
    purchase: PurchaseRow
    invoice: InvoiceSnapshot
    adopting: bool = False

    def planned(self) -> list[Finding]:
        verb = _PREDICTED.get(self.invoice.status, "adopt the invoice")
        caveat = " (or flag it for review or refund)" if verb == "settle" else ""
        return [
            _would(
                self.kind,
                f"invoice is {self.invoice.status} at Stripe: would {verb}{caveat}",
                verb,
                purchase_id=self.purchase.id,
                wallet_id=self.purchase.wallet_id,
                invoice_id=self.invoice.id,
                invoice_status=self.invoice.status,
            )
        ]

    def execute(self, run: Run) -> None:
        invoice, purchase = self.invoice, self.purchase
        try:
            with unit_of_work(run.db) as session:
                outcome = settlement.apply_invoice(
                    session.connection(), invoice, run.clock(), SOURCE
                )
        except (transitions.TransitionError, ledger.LedgerError) as exc:
            run.add(
                Finding(
                    self.kind,
                    FindingAction.FAILED,
                    f"could not apply invoice {invoice.id} ({invoice.status}): {exc}",
                    purchase_id=purchase.id,
                    wallet_id=purchase.wallet_id,
                    invoice_id=invoice.id,
                    invoice_status=invoice.status,
                )
            )
            return
        action = outcome.action
        if action == settlement.SettlementAction.UNCHANGED:
            return  # a webhook (or another run) got there first: nothing was missing
        if action == settlement.SettlementAction.NOT_OURS:
            if invoice.status == InvoiceStatus.PAID:
                unknown_payment(run, invoice, outcome.reason or "matches no purchase", purchase)
            return
        if action == settlement.SettlementAction.LINKED and not self.adopting:
            return
        result = "adopted" if action == settlement.SettlementAction.LINKED else action.value
        run.add(
            Finding(
                self.kind,
                FindingAction.REPAIRED,
                _applied_detail(invoice, result, outcome.reason, adopting=self.adopting),
                outcome=result,
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice.id,
                invoice_status=invoice.status,
            )
        )


def _applied_detail(
    invoice: InvoiceSnapshot, result: str, reason: str | None, *, adopting: bool
) -> str:
    start = (
        f"invoice {invoice.id} found at Stripe by our metadata and adopted"
        if adopting
        else f"invoice is {invoice.status} at Stripe but no webhook took effect"
    )
    if result == "adopted":
        return f"{start}; the purchase is open"
    return f"{start}: {result}" + (f" ({reason})" if reason else "")


@dataclass(frozen=True)
class VoidUnclaimed:
    """A finalized, unpaid invoice of a purchase no caller can claim: its caller was
    told the purchase failed (or never heard back) and cannot take it up, so it must not
    be collected. The purchase fails (flagged for voiding) in one transaction, then the
    invoice is voided (`settlement.void_flagged_invoices`: a payment that beat the void
    is settled; a void that fails stays flagged for step 5)."""

    purchase: PurchaseRow
    invoice: InvoiceSnapshot

    @property
    def why(self) -> str:
        return (
            f"invoice {self.invoice.id} was finalized ({self.invoice.status}) but the caller "
            "was not told so and no caller can claim the purchase"
        )

    def planned(self) -> list[Finding]:
        return [
            _would(
                FindingKind.STUCK_PURCHASE,
                f"{self.why}: would void the invoice and fail the purchase",
                "void",
                purchase_id=self.purchase.id,
                wallet_id=self.purchase.wallet_id,
                invoice_id=self.invoice.id,
                invoice_status=self.invoice.status,
            )
        ]

    def execute(self, run: Run) -> None:
        purchase, invoice = self.purchase, self.invoice
        with unit_of_work(run.db) as session:
            failed = abandon_stuck_purchase(
                session, purchase.id, self.why, run.clock(), void_invoice_id=invoice.id
            )
        if not failed:
            return  # a webhook or the caller's retry moved it on meanwhile
        result = settlement.void_flagged_invoices(
            run.session, run.provider, [purchase.id], now=run.clock()
        )
        with run.session() as session:
            after = session.get_one(Purchase, purchase.id)
            status, invoice_status = after.status, after.invoice_status
        voided = purchase.id in result.voided
        run.add(
            Finding(
                FindingKind.STUCK_PURCHASE,
                FindingAction.REPAIRED if voided else FindingAction.FAILED,
                f"{self.why}: the purchase and its pending entry failed; "
                + (
                    f"the invoice is {invoice_status}, the purchase {status}"
                    if voided
                    else "voiding the invoice failed, the next run tries again"
                ),
                outcome="voided" if voided else None,
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice.id,
                invoice_status=invoice_status,
            )
        )


@dataclass(frozen=True)
class AbandonCreation:
    """Give up on a purchase stuck past the grace period: it fails with its entry."""

    purchase: PurchaseRow
    why: str
    invoice_id: str | None
    grace: timedelta

    @property
    def detail(self) -> str:
        return f"stuck in creation past the grace period ({minutes(self.grace)}): {self.why}"

    def planned(self) -> list[Finding]:
        return [
            _would(
                FindingKind.STUCK_PURCHASE,
                f"{self.detail}; would fail it",
                "abandon",
                purchase_id=self.purchase.id,
                wallet_id=self.purchase.wallet_id,
                invoice_id=self.invoice_id,
            )
        ]

    def execute(self, run: Run) -> None:
        with unit_of_work(run.db) as session:
            failed = abandon_stuck_purchase(session, self.purchase.id, self.why, run.clock())
        if failed:
            run.add(
                Finding(
                    FindingKind.STUCK_PURCHASE,
                    FindingAction.REPAIRED,
                    f"{self.detail}; the purchase and its pending entry failed",
                    outcome="abandoned",
                    purchase_id=self.purchase.id,
                    wallet_id=self.purchase.wallet_id,
                    invoice_id=self.invoice_id,
                )
            )


def abandon_stuck_purchase(
    session: Session,
    purchase_id: str,
    why: str,
    now: datetime,
    *,
    void_invoice_id: str | None = None,
) -> bool:
    """Fail a purchase still `creating` (wallet, then purchase locked): its pending entry
    fails, the balance never saw it. With `void_invoice_id` (a finalized invoice of it)
    the purchase takes that invoice and is flagged `provider_void_pending`, for
    `settlement.void_flagged_invoices` to void it once this has committed. False if it
    has moved on meanwhile (nothing done)."""
    found = session.get(Purchase, purchase_id)
    if found is None:
        return False
    ledger.lock_wallet(session, found.wallet_id)
    purchase = transitions.lock_purchase(session, purchase_id)
    if purchase.status != PurchaseStatus.CREATING:
        return False
    transitions.fail(
        session.connection(),
        transitions.ref_of(purchase),
        code="creation_abandoned",
        message=f"abandoned by reconciliation: {why}",
        now=now,
        changes=None if void_invoice_id is None else {"provider_invoice_id": void_invoice_id},
        void_pending=void_invoice_id is not None,
    )
    transitions.sync_purchase(session, purchase)
    return True


@dataclass(frozen=True)
class VoidFlaggedInvoices:
    """Invoices of ended wallets still to void at Stripe
    (`settlement.void_flagged_invoices`, what the wallet's ending would have done)."""

    flagged: Sequence[tuple[str, str, str | None]]  # purchase, wallet, invoice ids

    def planned(self) -> list[Finding]:
        return [
            _would(
                FindingKind.INVOICE_VOID_PENDING,
                "the wallet ended; its invoice is still to void at Stripe: would void it",
                "void",
                purchase_id=purchase_id,
                wallet_id=wallet_id,
                invoice_id=invoice_id,
            )
            for purchase_id, wallet_id, invoice_id in self.flagged
        ]

    def execute(self, run: Run) -> None:
        wallets = {purchase_id: wallet_id for purchase_id, wallet_id, _ in self.flagged}
        invoices = {purchase_id: invoice_id for purchase_id, _, invoice_id in self.flagged}
        result = settlement.void_flagged_invoices(
            run.session, run.provider, list(wallets), now=run.clock()
        )
        run.progress.advance(len(wallets))
        with run.session() as session:
            after = {
                purchase_id: (status, invoice_id, invoice_status)
                for purchase_id, status, invoice_id, invoice_status in session.execute(
                    select(
                        Purchase.id,
                        Purchase.status,
                        Purchase.provider_invoice_id,
                        Purchase.invoice_status,
                    ).where(Purchase.id.in_(list(wallets)))
                )
            }
        for purchase_id in result.voided:
            status, invoice_id, invoice_status = after[purchase_id]
            paid = status == PurchaseStatus.REFUND_REQUIRED
            run.add(
                Finding(
                    FindingKind.INVOICE_VOID_PENDING,
                    FindingAction.REPAIRED,
                    "the invoice had been paid before it could be voided: refund the payment"
                    if paid
                    else "the wallet ended: its open invoice was voided at Stripe",
                    outcome="refund_required" if paid else "voided",
                    purchase_id=purchase_id,
                    wallet_id=wallets[purchase_id],
                    invoice_id=invoice_id,
                    invoice_status=invoice_status,
                )
            )
        for purchase_id in result.left_flagged:
            run.add(
                Finding(
                    FindingKind.INVOICE_VOID_PENDING,
                    FindingAction.FAILED,
                    "the wallet ended but its invoice could not be voided at Stripe yet "
                    "(see the log); the next run tries again",
                    purchase_id=purchase_id,
                    wallet_id=wallets[purchase_id],
                    invoice_id=invoices[purchase_id],
                )
            )


def _returned_finding(
    run: Run,
    *,
    kind: FindingKind,
    purchase: PurchaseRow,
    invoice_id: str | None,
    outcome: returns.ReturnOutcome,
    what: str,
    result: str,
    taken_as: str = "taken back",
) -> None:
    """What applying money that went back (or came back) did: `result` is the
    finding's outcome; the credits moved are said in words (`taken_as`: what taking
    them is called, "held" for a dispute)."""
    if outcome.action != returns.ReturnAction.APPLIED:
        return  # counted already (a webhook or another run), or nothing to move yet
    if outcome.taken:
        moved = f"{money.format_credits(outcome.taken)} credits {taken_as}"
    elif outcome.reinstated:
        moved = f"{money.format_credits(outcome.reinstated)} credits given back"
    else:
        moved = "no credits moved (none were left, or the wallet has ended)"
    run.add(
        Finding(
            kind,
            FindingAction.REPAIRED,
            f"{what} at Stripe but no webhook took effect: applied; {moved}",
            outcome=result,
            purchase_id=purchase.id,
            wallet_id=purchase.wallet_id,
            invoice_id=invoice_id,
        )
    )


def _give_or_take(*, undone: bool, taker: str) -> tuple[str, str]:
    """A dry run's words and outcome for money that went back (its credits follow it
    out) or, `undone`, that did not after all (what `taker` took comes back)."""
    if undone:
        return f"would give back the credits {taker} had taken", "give back"
    return "would take the credits that follow it back", "take back"


def _plan_of(
    kind: FindingKind, purchase: PurchaseRow, invoice_id: str | None, what: str,
    plan: tuple[str, str],
) -> list[Finding]:  # fmt: skip
    """A dry run's finding for money going back (or coming back): `plan` is the words
    and the outcome of what a real run would do."""
    words, outcome = plan
    return [
        _would(
            kind,
            f"{what}: {words}",
            outcome,
            purchase_id=purchase.id,
            wallet_id=purchase.wallet_id,
            invoice_id=invoice_id,
        )
    ]


@dataclass(frozen=True)
class ApplyCreditNotes:
    """Credit notes on a purchase's invoice that the webhooks missed: read from Stripe
    and applied through `returns.apply_credit_note`."""

    purchase: PurchaseRow
    invoice_id: str
    uncounted_cents: int

    @property
    def undone(self) -> bool:
        """Stripe shows less credited than counted here: a credit note was voided."""
        return self.uncounted_cents < 0

    def _what(self) -> str:
        shown = money.format_minor(abs(self.uncounted_cents), self.purchase.currency)
        if self.undone:
            return f"{shown} of its invoice's credit notes were voided"
        return f"{shown} of its invoice was credited back after payment (credit notes)"

    def _plan(self) -> tuple[str, str]:
        return _give_or_take(undone=self.undone, taker="they")

    def planned(self) -> list[Finding]:
        return _plan_of(
            FindingKind.SETTLED_INVOICE_REFUNDED,
            self.purchase,
            self.invoice_id,
            self._what(),
            self._plan(),
        )

    def execute(self, run: Run) -> None:
        try:
            notes = run.provider.list_credit_notes(self.invoice_id)
        except ProviderError as exc:
            run.add(
                Finding(
                    FindingKind.SETTLED_INVOICE_REFUNDED,
                    FindingAction.FAILED,
                    f"{self._what()} but its credit notes could not be read: {exc}; "
                    "the next run tries again",
                    purchase_id=self.purchase.id,
                    wallet_id=self.purchase.wallet_id,
                    invoice_id=self.invoice_id,
                )
            )
            return
        for note in notes:
            with unit_of_work(run.db) as session:
                outcome = returns.apply_credit_note(session.connection(), note, run.clock(), SOURCE)
            _returned_finding(
                run,
                kind=FindingKind.SETTLED_INVOICE_REFUNDED,
                purchase=self.purchase,
                invoice_id=self.invoice_id,
                outcome=outcome,
                what=f"credit note {note.id} "
                f"({money.format_minor(note.amount_cents, note.currency)})"
                + (" voided" if note.voided else ""),
                result="reinstated" if note.voided else "refunded",
            )


@dataclass(frozen=True)
class ApplyRefunds:
    """Refunds of a purchase's payment that the webhooks missed, applied through
    `returns.apply_refunds` (each counted once by its id, as a webhook would)."""

    purchase: PurchaseRow
    refunds: Sequence[PaymentRefund]

    @property
    def kind(self) -> FindingKind:
        # A purchase waiting for its refund: the refund is the expected end.
        if self.purchase.status == PurchaseStatus.REFUND_REQUIRED:
            return FindingKind.REFUND_REQUIRED
        return FindingKind.SETTLED_PAYMENT_REFUNDED

    @property
    def undone(self) -> bool:
        """Every refund here failed or was canceled after it was counted."""
        return all(refund.status not in REFUND_GIVING_BACK for refund in self.refunds)

    def _what(self) -> str:
        total = sum(refund.amount_cents for refund in self.refunds)
        shown = money.format_minor(total, self.refunds[0].currency or self.purchase.currency)
        if self.undone:
            return f"{shown} refunded from its payment did not go back after all " \
                f"({refund_names(self.refunds)})"  # fmt: skip
        return f"{shown} of its payment was refunded ({refund_names(self.refunds)})"

    def _plan(self) -> tuple[str, str]:
        return _give_or_take(undone=self.undone, taker="it")

    def planned(self) -> list[Finding]:
        return _plan_of(
            self.kind, self.purchase, self.purchase.invoice_id, self._what(), self._plan()
        )

    def execute(self, run: Run) -> None:
        refunds = [
            Refund(
                id=refund.refund_id,
                payment_id=refund.payment_id,
                amount_cents=refund.amount_cents,
                currency=refund.currency,
                status=refund.status,
            )
            for refund in self.refunds
        ]
        with unit_of_work(run.db) as session:
            outcome = returns.apply_refunds(
                session.connection(),
                refunds,
                run.clock(),
                SOURCE,
                payment_id=refunds[0].payment_id,
                purchase_id=self.purchase.id,
            )
        _returned_finding(
            run,
            kind=self.kind,
            purchase=self.purchase,
            invoice_id=self.purchase.invoice_id,
            outcome=outcome,
            what=self._what(),
            result="reinstated" if self.undone else "refunded",
        )


@dataclass(frozen=True)
class ApplyDispute:
    """A dispute of a purchase's payment that the webhooks missed (its opening or its
    closing), applied through `returns.apply_dispute`, as the webhook would."""

    purchase: PurchaseRow
    dispute: Dispute

    def _what(self) -> str:
        shown = money.format_minor(self.dispute.amount_cents, self.dispute.currency)
        return f"dispute {self.dispute.id} of its payment ({shown}) is {self.dispute.outcome}"

    def _plan(self) -> tuple[str, str]:
        match self.dispute.outcome:
            case DisputeOutcome.OPEN:
                return "would hold the purchase's credits", "hold"
            case DisputeOutcome.WON:
                return "would give back the credits it held", "give back"
            case _:
                return "would keep the purchase's credits out", "keep out"

    def planned(self) -> list[Finding]:
        return _plan_of(
            FindingKind.SETTLED_PAYMENT_DISPUTED,
            self.purchase,
            self.purchase.invoice_id,
            self._what(),
            self._plan(),
        )

    def execute(self, run: Run) -> None:
        with unit_of_work(run.db) as session:
            outcome = returns.apply_dispute(
                session.connection(), self.dispute, run.clock(), SOURCE,
                purchase_id=self.purchase.id,
            )  # fmt: skip
        _returned_finding(
            run,
            kind=FindingKind.SETTLED_PAYMENT_DISPUTED,
            purchase=self.purchase,
            invoice_id=self.purchase.invoice_id,
            outcome=outcome,
            what=self._what(),
            result=f"dispute_{self.dispute.outcome}",
            taken_as="held",
        )


def refund_names(refunds: Sequence[PaymentRefund]) -> str:
    """`re_1, re_2 (pending)`: the first few refunds by id, the count of the others."""
    names = [
        refund.refund_id + (f" ({refund.status})" if refund.status != "succeeded" else "")
        for refund in refunds[:5]
    ]
    if len(refunds) > 5:
        names.append(f"and {len(refunds) - 5} more")
    return ", ".join(names)


def minutes(delta: timedelta) -> str:
    total = int(delta.total_seconds() // 60)
    if total < 120:
        return f"{total} min"
    hours = total // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
