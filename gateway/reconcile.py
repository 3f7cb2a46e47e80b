"""Reconciliation: compare our purchases with Stripe and repair what a lost webhook or a
crash left behind, report what a person must look at. Returns a report; prints nothing.

One run, in this order:

1. Stripe's invoices created in the window are read in pages (list API, 100 a page,
   newest first) and matched in memory, a page at a time, with the purchases they name
   (one query per page):
   - a purchase still `creating` is never resumed here: only a retry of its request
     with the same Idempotency-Key does that (`claimable_until`). A paid invoice is
     adopted (through `settlement.apply_invoice`: it settles); while its caller can
     still claim it, a finalized invoice is adopted and a draft left to the retry; once
     no caller can (and the purchase is past `IN_FLIGHT`), a finalized unpaid invoice
     is voided and the purchase fails at once, a draft or missing invoice (nothing
     billable) after the grace period;
   - an `open` purchase (or a failed one) whose invoice is paid settles, one whose
     invoice is void or uncollectible fails: `settlement.apply_invoice` again, the one
     code path of the webhook, with its locks (wallet, then purchase), so a webhook
     arriving at the same moment cannot credit twice;
   - reported only: a paid invoice with our metadata for no purchase of ours, and a
     settled purchase whose invoice is no longer paid or was credited back (refunded).
2. Stripe's refunds created in the window (same start) are read in pages (100 a page),
   each mapped to the invoice its payment paid (one Invoice Payments lookup per
   refunded payment). A refund made on the payment alone leaves the invoice `paid`
   with nothing on it, so step 1 cannot see it: per invoice of a settled purchase of
   ours, the refunded amount not covered by the invoice's credit notes (those are
   step 1's finding) is reported; credits are never taken back here. An invoice step 1
   did not list is retrieved on its own (rare). For a purchase already waiting for a
   refund (`refund_required`) a refund is the expected end: step 5 mentions it.
3. Purchases still `creating` or `open` that no listed invoice named are read in
   batches: a stored invoice is read on its own (rare); a purchase still `creating`
   that no caller can claim any more is looked up by metadata and, with no invoice at
   Stripe, failed after `PURCHASE_STUCK_GRACE_MINUTES` (its pending entry fails; the
   balance never saw it).
4. Invoices of ended wallets still to void at Stripe are voided
   (`settlement.void_flagged_invoices`).
5. Reported from the database: purchases marked `refund_required` or `review_required`,
   and, in one grouped query, every wallet whose stored balance differs from the sum of
   its settled ledger entries.

Stripe is read a page at a time, so 10,000 pending purchases cost about a hundred list
calls, not 10,000 retrieves; individual calls are made only to repair (void an
invoice) and for the rare purchase no listed invoice matched.
No transaction is open while Stripe is called. `dry_run` reads everything and changes
nothing: no database write, no Stripe write.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from gateway import ledger, money, settlement, transitions
from gateway.db import Database, unit_of_work, utcnow
from gateway.errors import PaymentProviderUnavailable
from gateway.models import (
    EntryStatus,
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletTransaction,
)
from gateway.providers.base import (
    InvoiceSnapshot,
    PaymentProvider,
    PaymentRefund,
    ProviderError,
    ProviderRejected,
)
from gateway.transitions import InvoiceStatus

log = logging.getLogger(__name__)

# Without --since, Stripe is read back this far, or to the oldest unsettled purchase if
# that is older, so settled purchases and unknown payments of the last weeks are checked.
DEFAULT_LOOKBACK = timedelta(days=30)
# An invoice is made after its purchase row; this covers clocks that disagree.
CLOCK_SLACK = timedelta(hours=1)
# A purchase younger than this may still be in the hands of the request creating it
# (a request gives up on Stripe after PURCHASE_DEADLINE_SECONDS, well below this): it is
# neither abandoned nor voided (adopting a paid invoice is always safe).
IN_FLIGHT = timedelta(minutes=5)
# Purchases per database batch (read in short transactions, then handled).
DB_BATCH = 500
# Listed invoices matched with the database together: one query each (a Stripe page).
MATCH_BATCH = 100

_UNSETTLED = (PurchaseStatus.CREATING, PurchaseStatus.OPEN)
SOURCE = "reconcile"


class FindingKind(enum.StrEnum):
    """What was found (the `kind` of a finding in the JSON output)."""

    STUCK_PURCHASE = "stuck_purchase"  # `creating`: adopted, voided or abandoned
    INVOICE_PAID_NOT_SETTLED = "invoice_paid_not_settled"  # webhook lost: settled here
    INVOICE_FAILED_STILL_OPEN = "invoice_failed_still_open"  # void/uncollectible: failed here
    UNKNOWN_PAID_INVOICE = "unknown_paid_invoice"
    SETTLED_INVOICE_NOT_PAID = "settled_invoice_not_paid"
    SETTLED_INVOICE_REFUNDED = "settled_invoice_refunded"  # through credit notes
    SETTLED_PAYMENT_REFUNDED = "settled_payment_refunded"  # on the payment, beyond them
    INVOICE_MISSING = "invoice_missing"
    INVOICE_VOID_PENDING = "invoice_void_pending"
    REFUND_REQUIRED = "refund_required"
    REVIEW_REQUIRED = "review_required"
    LEDGER_MISMATCH = "ledger_mismatch"


class FindingAction(enum.StrEnum):
    """What the run did about it."""

    REPAIRED = "repaired"
    WOULD_REPAIR = "would_repair"  # --dry-run: what a real run would do
    REPORTED = "reported"  # for a person; nothing was changed
    FAILED = "failed"  # a repair was tried and did not happen; the next run tries again


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    action: FindingAction
    detail: str
    outcome: str | None = None  # e.g. settled, failed, adopted, abandoned, voided
    purchase_id: str | None = None
    wallet_id: str | None = None
    invoice_id: str | None = None
    invoice_status: str | None = None
    stored_balance: Decimal | None = None
    ledger_balance: Decimal | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "action": self.action.value,
            "outcome": self.outcome,
            "purchase_id": self.purchase_id,
            "wallet_id": self.wallet_id,
            "invoice_id": self.invoice_id,
            "invoice_status": self.invoice_status,
            "stored_balance": _decimal_text(self.stored_balance),
            "ledger_balance": _decimal_text(self.ledger_balance),
            "detail": self.detail,
        }


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else money.format_credits(value)


@dataclass
class ReconcileReport:
    """Everything one run found and did. `exit_code`: 0 consistent, 1 found, 2 aborted."""

    started_at: datetime
    window_start: datetime
    since_requested: bool
    dry_run: bool
    grace: timedelta
    finished_at: datetime | None = None
    invoices_scanned: int = 0
    refunds_scanned: int = 0
    purchases_checked: int = 0
    wallets_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def consistent(self) -> bool:
        return self.error is None and not self.findings

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 1 if self.findings else 0

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "findings" if self.findings else "consistent"

    def count(self, action: FindingAction) -> int:
        return sum(finding.action == action for finding in self.findings)

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind.value] = counts.get(finding.kind.value, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """The `--format json` document (README, "Operations"). Stable: fields are only
        ever added; `format_version` changes if one is removed or changes meaning."""
        return {
            "format_version": 1,
            "status": self.status,
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "window": {
                "since": _iso(self.window_start),
                "requested": self.since_requested,
            },
            "grace_minutes": int(self.grace.total_seconds() // 60),
            "scanned": {
                "stripe_invoices": self.invoices_scanned,
                "stripe_refunds": self.refunds_scanned,
                "purchases": self.purchases_checked,
                "wallets": self.wallets_checked,
            },
            "summary": {
                **{action.value: self.count(action) for action in FindingAction},
                "by_kind": self.by_kind(),
            },
            "findings": [finding.to_dict() for finding in self.findings],
            "error": self.error,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class ReconcileAborted(Exception):
    """The run could not go on (Stripe unreachable or refusing our key, database down);
    `report` holds what was done before, with `error` set."""

    def __init__(self, report: ReconcileReport) -> None:
        super().__init__(report.error)
        self.report = report


class ProgressSink(Protocol):
    """Where a run reports progress (the CLI draws a bar on a terminal)."""

    def stage(self, description: str, total: int | None = None) -> None: ...

    def advance(self, count: int = 1) -> None: ...


class _Silent:
    def stage(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass


@dataclass(frozen=True)
class _PurchaseRow:
    """What matching needs of a purchase, read without locks (the repair re-reads it
    under its locks and decides for itself)."""

    id: str
    wallet_id: str
    status: str
    invoice_id: str | None
    created_at: datetime
    currency: str
    credit_amount: Decimal
    claimable_until: datetime | None  # the caller's Idempotency-Key may resume it till then
    automatic: bool  # an automatic top-up: no caller, the worker completes it


_ROW_COLUMNS = (
    Purchase.id,
    Purchase.wallet_id,
    Purchase.status,
    Purchase.provider_invoice_id,
    Purchase.created_at,
    Purchase.currency,
    Purchase.credit_amount,
    Purchase.claimable_until,
    Purchase.collection_method.is_not(None),
)


def _row(values: Sequence[Any]) -> _PurchaseRow:
    return _PurchaseRow(*values)


def reconcile(
    db: Database,
    provider: PaymentProvider,
    *,
    dry_run: bool = False,
    since: datetime | None = None,
    grace: timedelta = timedelta(minutes=60),
    clock: Callable[[], datetime] = utcnow,
    progress: ProgressSink | None = None,
) -> ReconcileReport:
    """One reconciliation run (see the module doc). Raises `ReconcileAborted` when it
    cannot go on; what was repaired before that stays repaired."""
    return _Run(
        db,
        provider,
        dry_run=dry_run,
        since=since,
        grace=grace,
        clock=clock,
        progress=progress or _Silent(),
    ).run()


class _Run:
    def __init__(
        self,
        db: Database,
        provider: PaymentProvider,
        *,
        dry_run: bool,
        since: datetime | None,
        grace: timedelta,
        clock: Callable[[], datetime],
        progress: ProgressSink,
    ) -> None:
        self.db = db
        self.provider = provider
        self.dry_run = dry_run
        self.since = since
        self.grace = grace
        self.clock = clock
        self.progress = progress
        self.started_at = clock()
        # Not voided nor abandoned, and not looked for in step 3: still being created.
        self.cutoff = self.started_at - IN_FLIGHT
        # Unsettled purchases an invoice of the listing named: step 3 skips them.
        self.seen: set[str] = set()
        # Purchases already in a finding: the attention report does not repeat them.
        self.reported: set[str] = set()
        # Status and credit notes' amount of each listed invoice (step 2 compares
        # refunds with the latter).
        self.listed: dict[str, tuple[str, int]] = {}
        # Refunds found for purchases waiting for one: step 5 says so.
        self.refunds_of_waiting: dict[str, str] = {}
        self.report = ReconcileReport(
            started_at=self.started_at,
            window_start=self.started_at,
            since_requested=since is not None,
            dry_run=dry_run,
            grace=grace,
        )

    # --- driving -----------------------------------------------------------------------

    def run(self) -> ReconcileReport:
        try:
            self.report.window_start = self._window_start()
            self._scan_stripe()
            self._scan_refunds()
            self._scan_unmatched()
            self._void_ended_wallet_invoices()
            self._report_attention()
            self._check_ledger()
        except ProviderError as exc:
            self._abort(f"Stripe: {exc}")
        except PaymentProviderUnavailable as exc:
            self._abort(f"Stripe: {exc.message}")
        self.report.finished_at = self.clock()
        return self.report

    def _abort(self, message: str) -> None:
        log.error("reconciliation stopped: %s", message)
        self.report.error = message
        self.report.finished_at = self.clock()
        raise ReconcileAborted(self.report)

    def _add(self, finding: Finding) -> None:
        self.report.findings.append(finding)
        if finding.purchase_id is not None:
            self.reported.add(finding.purchase_id)
        if finding.action != FindingAction.WOULD_REPAIR:
            log.info(
                "%s %s %s: %s",
                finding.kind,
                finding.action,
                finding.purchase_id or finding.wallet_id or finding.invoice_id,
                finding.detail,
            )

    def _would_repair(
        self,
        kind: FindingKind,
        detail: str,
        outcome: str,
        *,
        purchase_id: str | None,
        wallet_id: str | None,
        invoice_id: str | None,
        invoice_status: str | None = None,
    ) -> None:
        """What a dry run reports in place of a repair it does not make."""
        self._add(
            Finding(
                kind,
                FindingAction.WOULD_REPAIR,
                detail,
                outcome=outcome,
                purchase_id=purchase_id,
                wallet_id=wallet_id,
                invoice_id=invoice_id,
                invoice_status=invoice_status,
            )
        )

    def _session(self) -> Session:
        return self.db.session()

    def _window_start(self) -> datetime:
        if self.since is not None:
            return self.since
        with self._session() as session:
            oldest = session.execute(
                select(func.min(Purchase.created_at)).where(Purchase.status.in_(_UNSETTLED))
            ).scalar_one_or_none()
        start = self.started_at - DEFAULT_LOOKBACK
        return min(start, oldest) if oldest is not None else start

    def _in_window(self, created_at: datetime) -> bool:
        return self.since is None or created_at >= self.since

    # --- 1. Stripe's invoices, page by page --------------------------------------------

    def _scan_stripe(self) -> None:
        self.progress.stage("Reading Stripe invoices")
        listed = self.provider.iter_purchase_invoices(
            created_since=self.report.window_start - CLOCK_SLACK
        )
        page: list[InvoiceSnapshot] = []
        for invoice in listed:
            page.append(invoice)
            if len(page) == MATCH_BATCH:
                self._match_page(page)
                page = []
        if page:
            self._match_page(page)

    def _match_page(self, invoices: list[InvoiceSnapshot]) -> None:
        purchase_ids = {invoice.purchase_id for invoice in invoices if invoice.purchase_id}
        invoice_ids = {invoice.id for invoice in invoices}
        with self._session() as session:
            rows = [
                _row(values)
                for values in session.execute(
                    select(*_ROW_COLUMNS).where(
                        or_(
                            Purchase.id.in_(purchase_ids),
                            Purchase.provider_invoice_id.in_(invoice_ids),
                        )
                    )
                )
            ]
        by_id = {row.id: row for row in rows}
        by_invoice = {row.invoice_id: row for row in rows if row.invoice_id}
        for invoice in invoices:
            self.report.invoices_scanned += 1
            self.listed[invoice.id] = (invoice.status, invoice.credited_after_payment_cents)
            self.progress.advance()
            purchase = by_invoice.get(invoice.id) or by_id.get(invoice.purchase_id or "")
            if purchase is None:
                if invoice.status == InvoiceStatus.PAID:
                    self._unknown_payment(
                        invoice,
                        f"names purchase {invoice.purchase_id}, which does not exist here",
                    )
                continue
            if purchase.invoice_id not in (None, invoice.id):
                if invoice.status == InvoiceStatus.PAID:
                    self._unknown_payment(
                        invoice,
                        f"names purchase {purchase.id}, whose invoice is {purchase.invoice_id}",
                        purchase,
                    )
                continue
            if not self._in_window(purchase.created_at):
                continue  # within the listing's slack, but before --since
            if purchase.status in _UNSETTLED:
                self.seen.add(purchase.id)
            self.report.purchases_checked += 1
            self._compare(purchase, invoice)

    def _unknown_payment(
        self, invoice: InvoiceSnapshot, why: str, purchase: _PurchaseRow | None = None
    ) -> None:
        paid = money.from_minor(invoice.amount_paid_cents, invoice.currency)
        self._add(
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

    def _compare(self, purchase: _PurchaseRow, invoice: InvoiceSnapshot) -> None:
        """Bring one purchase in line with its invoice, or report the difference."""
        status = purchase.status
        if status == PurchaseStatus.CREATING:
            self._stuck_with_invoice(purchase, invoice)
        elif status == PurchaseStatus.OPEN:
            if invoice.status == InvoiceStatus.PAID:
                self._apply(FindingKind.INVOICE_PAID_NOT_SETTLED, purchase, invoice)
            elif invoice.status in transitions.FAILED_INVOICE_STATUSES:
                self._apply(FindingKind.INVOICE_FAILED_STILL_OPEN, purchase, invoice)
        elif status == PurchaseStatus.FAILED:
            # Stripe lets a void-pending or uncollectible invoice be paid after all:
            # settlement credits it (or marks it for refund if the wallet has ended).
            if invoice.status == InvoiceStatus.PAID:
                self._apply(FindingKind.INVOICE_PAID_NOT_SETTLED, purchase, invoice)
        elif status == PurchaseStatus.SETTLED:
            self._check_settled(purchase, invoice)
        # refund_required / review_required: reported from the database (step 5).

    def _check_settled(self, purchase: _PurchaseRow, invoice: InvoiceSnapshot) -> None:
        if invoice.status != InvoiceStatus.PAID:
            self._add(
                Finding(
                    FindingKind.SETTLED_INVOICE_NOT_PAID,
                    FindingAction.REPORTED,
                    f"purchase settled ({money.format_credits(purchase.credit_amount)} "
                    f"credits) but its invoice is now {invoice.status} at Stripe",
                    purchase_id=purchase.id,
                    wallet_id=purchase.wallet_id,
                    invoice_id=invoice.id,
                    invoice_status=invoice.status,
                )
            )
        elif invoice.credited_after_payment_cents > 0:
            credited = money.from_minor(invoice.credited_after_payment_cents, invoice.currency)
            self._add(
                Finding(
                    FindingKind.SETTLED_INVOICE_REFUNDED,
                    FindingAction.REPORTED,
                    f"purchase settled ({money.format_credits(purchase.credit_amount)} "
                    f"credits) but {money.format_amount(credited, invoice.currency)} "
                    f"{invoice.currency} of its invoice was refunded or credited back "
                    "after payment (credit notes)",
                    purchase_id=purchase.id,
                    wallet_id=purchase.wallet_id,
                    invoice_id=invoice.id,
                    invoice_status=invoice.status,
                )
            )

    # --- repairs -----------------------------------------------------------------------

    def _apply(
        self,
        kind: FindingKind,
        purchase: _PurchaseRow,
        invoice: InvoiceSnapshot,
        *,
        adopting: bool = False,
    ) -> settlement.SettlementOutcome | None:
        """`settlement.apply_invoice` in a short transaction of its own: the webhook's
        code path and locks. None in a dry run, or when there was nothing left to do."""
        if self.dry_run:
            predicted: dict[str, str] = {
                InvoiceStatus.PAID: "settle",
                InvoiceStatus.VOID: "fail",
                InvoiceStatus.UNCOLLECTIBLE: "fail",
            }
            verb = predicted.get(invoice.status, "adopt the invoice")
            caveat = " (or flag it for review or refund)" if verb == "settle" else ""
            self._would_repair(
                kind,
                f"invoice is {invoice.status} at Stripe: would {verb}{caveat}",
                verb,
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice.id,
                invoice_status=invoice.status,
            )
            return None
        session = self._session()
        try:
            with unit_of_work(session):
                outcome = settlement.apply_invoice(
                    session.connection(), invoice, self.clock(), SOURCE
                )
        except (transitions.TransitionError, ledger.LedgerError) as exc:
            self._add(
                Finding(
                    kind,
                    FindingAction.FAILED,
                    f"could not apply invoice {invoice.id} ({invoice.status}): {exc}",
                    purchase_id=purchase.id,
                    wallet_id=purchase.wallet_id,
                    invoice_id=invoice.id,
                    invoice_status=invoice.status,
                )
            )
            return None
        finally:
            session.close()
        action = outcome.action
        if action == settlement.SettlementAction.UNCHANGED:
            return None  # a webhook (or another run) got there first: nothing was missing
        if action == settlement.SettlementAction.NOT_OURS:
            if invoice.status == InvoiceStatus.PAID:
                self._unknown_payment(invoice, outcome.reason or "matches no purchase", purchase)
            return None
        if action == settlement.SettlementAction.LINKED and not adopting:
            return outcome
        result = "adopted" if action == settlement.SettlementAction.LINKED else action.value
        self._add(
            Finding(
                kind,
                FindingAction.REPAIRED,
                _applied_detail(invoice, result, outcome.reason, adopting=adopting),
                outcome=result,
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice.id,
                invoice_status=invoice.status,
            )
        )
        return outcome

    def _claimable(self, purchase: _PurchaseRow) -> bool:
        """Whether someone is still to take `purchase` up: the caller of the request
        that opened it (a retry with the same Idempotency-Key before the key expires),
        or, for an automatic top-up (no caller was told anything), the worker
        (`topups.complete_automatic_purchases`)."""
        if purchase.automatic:
            return True
        until = purchase.claimable_until
        return until is not None and until > self.started_at

    def _stuck_with_invoice(self, purchase: _PurchaseRow, invoice: InvoiceSnapshot) -> None:
        """A purchase still `creating` whose invoice exists at Stripe.

        Never resumed here (that would bill a caller who may have been told it failed
        and bought again): a paid invoice settles it (the money arrived) and a void or
        uncollectible one fails it; a finalized open one is adopted while the caller can
        still claim the purchase, voided once nobody can; a draft is left to the
        caller's retry, and abandoned (never finalized) once nobody can claim it.
        """
        if invoice.status in (InvoiceStatus.PAID, *transitions.FAILED_INVOICE_STATUSES):
            self._apply(FindingKind.STUCK_PURCHASE, purchase, invoice, adopting=True)
            return
        if self._claimable(purchase):
            if invoice.status != InvoiceStatus.DRAFT:
                self._apply(FindingKind.STUCK_PURCHASE, purchase, invoice, adopting=True)
            return  # its caller's retry finishes a draft
        if purchase.created_at > self.cutoff:
            return
        if invoice.status == InvoiceStatus.DRAFT:
            age = self.started_at - purchase.created_at
            if age >= self.grace:
                self._abandon(
                    purchase,
                    f"its invoice {invoice.id} is still a draft after {_minutes(age)} and "
                    "no caller can claim the purchase (it was never finalized, so it "
                    "cannot be paid)",
                    invoice_id=invoice.id,
                )
            return
        self._void_unclaimed(purchase, invoice)

    def _void_unclaimed(self, purchase: _PurchaseRow, invoice: InvoiceSnapshot) -> None:
        """A finalized, unpaid invoice of a purchase no caller can claim: its caller was
        told the purchase failed (or never heard back) and cannot take it up, so it must
        not be collected. The purchase fails (flagged for voiding) in one transaction,
        then the invoice is voided (`settlement.void_flagged_invoices`: a payment that
        beat the void is settled; a void that fails stays flagged for step 4)."""
        why = (
            f"invoice {invoice.id} was finalized ({invoice.status}) but the caller was "
            "not told so and no caller can claim the purchase"
        )
        if self.dry_run:
            self._would_repair(
                FindingKind.STUCK_PURCHASE,
                f"{why}: would void the invoice and fail the purchase",
                "void",
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice.id,
                invoice_status=invoice.status,
            )
            return
        session = self._session()
        try:
            with unit_of_work(session):
                failed = abandon_stuck_purchase(
                    session, purchase.id, why, self.clock(), void_invoice_id=invoice.id
                )
            if not failed:
                return  # a webhook or the caller's retry moved it on meanwhile
            result = settlement.void_flagged_invoices(
                settlement.sessions_like(session), self.provider, [purchase.id], now=self.clock()
            )
            after = session.get_one(Purchase, purchase.id, populate_existing=True)
            status, invoice_status = after.status, after.invoice_status
        finally:
            session.close()
        voided = purchase.id in result.voided
        self._add(
            Finding(
                FindingKind.STUCK_PURCHASE,
                FindingAction.REPAIRED if voided else FindingAction.FAILED,
                f"{why}: the purchase and its pending entry failed; "
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

    def _abandon(self, purchase: _PurchaseRow, why: str, *, invoice_id: str | None) -> None:
        """Give up on a purchase stuck past the grace period: it fails with its entry."""
        detail = f"stuck in creation past the grace period ({_minutes(self.grace)}): {why}"
        if self.dry_run:
            self._would_repair(
                FindingKind.STUCK_PURCHASE,
                f"{detail}; would fail it",
                "abandon",
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice_id,
            )
            return
        session = self._session()
        try:
            with unit_of_work(session):
                failed = abandon_stuck_purchase(session, purchase.id, why, self.clock())
        finally:
            session.close()
        if failed:
            self._add(
                Finding(
                    FindingKind.STUCK_PURCHASE,
                    FindingAction.REPAIRED,
                    f"{detail}; the purchase and its pending entry failed",
                    outcome="abandoned",
                    purchase_id=purchase.id,
                    wallet_id=purchase.wallet_id,
                    invoice_id=invoice_id,
                )
            )

    # --- 2. refunds made on the payment -----------------------------------------------

    def _scan_refunds(self) -> None:
        self.progress.stage("Reading Stripe refunds")
        by_invoice: dict[str, list[PaymentRefund]] = {}
        for refund in self.provider.iter_invoice_refunds(
            created_since=self.report.window_start - CLOCK_SLACK
        ):
            self.report.refunds_scanned += 1
            self.progress.advance()
            by_invoice.setdefault(refund.invoice_id, []).append(refund)
        invoice_ids = list(by_invoice)
        for start in range(0, len(invoice_ids), MATCH_BATCH):
            chunk = invoice_ids[start : start + MATCH_BATCH]
            with self._session() as session:
                rows = [
                    _row(values)
                    for values in session.execute(
                        select(*_ROW_COLUMNS)
                        .where(Purchase.provider_invoice_id.in_(chunk))
                        .order_by(Purchase.id)
                    )
                ]
            for purchase in rows:
                self._check_refunds(purchase, by_invoice[purchase.invoice_id or ""])

    def _check_refunds(self, purchase: _PurchaseRow, refunds: list[PaymentRefund]) -> None:
        """Report what was refunded of a settled purchase's payment and not credited
        back on its invoice (credit notes are step 1's finding: not reported twice)."""
        refunded = sum(refund.amount_cents for refund in refunds)
        currency = refunds[0].currency or purchase.currency
        named = _refund_names(refunds)
        if purchase.status == PurchaseStatus.REFUND_REQUIRED:
            self.refunds_of_waiting[purchase.id] = (
                f"Stripe shows {money.format_minor(refunded, currency)} refunded ({named})"
            )
            return
        if purchase.status != PurchaseStatus.SETTLED:
            return
        invoice_id = purchase.invoice_id or ""
        listed = self.listed.get(invoice_id)
        if listed is None:  # the invoice is older than the window: read it on its own
            try:
                invoice = self.provider.retrieve_invoice(invoice_id)
                listed = (invoice.status, invoice.credited_after_payment_cents)
            except ProviderError as exc:
                self._add(
                    Finding(
                        FindingKind.SETTLED_PAYMENT_REFUNDED,
                        FindingAction.FAILED,
                        f"its payment was refunded at Stripe ({named}) but its invoice "
                        f"could not be read: {exc}; the next run tries again",
                        purchase_id=purchase.id,
                        wallet_id=purchase.wallet_id,
                        invoice_id=invoice_id,
                    )
                )
                return
        status, credited = listed
        uncovered = refunded - credited
        if uncovered <= 0:
            return
        covered = (
            f"; credit notes cover {money.format_minor(credited, currency)} of the "
            f"{money.format_minor(refunded, currency)} refunded"
            if credited > 0
            else ""
        )
        self._add(
            Finding(
                FindingKind.SETTLED_PAYMENT_REFUNDED,
                FindingAction.REPORTED,
                f"purchase settled ({money.format_credits(purchase.credit_amount)} credits) "
                f"but {money.format_minor(uncovered, currency)} of its payment was refunded "
                f"at Stripe ({named}) without a credit note{covered}: the credits were not "
                "removed",
                purchase_id=purchase.id,
                wallet_id=purchase.wallet_id,
                invoice_id=invoice_id,
                invoice_status=status,
            )
        )

    # --- 3. unsettled purchases no listed invoice named --------------------------------

    def _scan_unmatched(self) -> None:
        self.progress.stage("Checking unmatched purchases")
        conditions = [Purchase.status.in_(_UNSETTLED), Purchase.created_at <= self.cutoff]
        if self.since is not None:
            conditions.append(Purchase.created_at >= self.since)
        for batch in self._batches(and_(*conditions)):
            for purchase in batch:
                if purchase.id in self.seen:
                    continue
                self.report.purchases_checked += 1
                self.progress.advance()
                self._unmatched(purchase)

    def _batches(self, condition: Any) -> Iterator[list[_PurchaseRow]]:
        """Purchases matching `condition`, by id, `DB_BATCH` per short read transaction:
        memory stays flat and no transaction stays open across the Stripe calls."""
        after = ""
        while True:
            with self._session() as session:
                batch = [
                    _row(values)
                    for values in session.execute(
                        select(*_ROW_COLUMNS)
                        .where(condition, Purchase.id > after)
                        .order_by(Purchase.id)
                        .limit(DB_BATCH)
                    )
                ]
            if not batch:
                return
            yield batch
            after = batch[-1].id

    def _stripe_failed(self, purchase: _PurchaseRow, doing: str, message: str) -> None:
        self._add(
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

    def _unmatched(self, purchase: _PurchaseRow) -> None:
        try:
            self._unmatched_at_stripe(purchase)
        except ProviderError as exc:
            # One purchase's call failed; the listing worked, so the run goes on.
            self._stripe_failed(purchase, "look up its invoice", str(exc))

    def _unmatched_at_stripe(self, purchase: _PurchaseRow) -> None:
        if purchase.invoice_id is not None:
            try:
                invoice = self.provider.retrieve_invoice(purchase.invoice_id)
            except ProviderRejected as exc:
                if exc.status != 404:
                    raise
                self._add(
                    Finding(
                        FindingKind.INVOICE_MISSING,
                        FindingAction.REPORTED,
                        f"purchase is {purchase.status} but Stripe has no invoice "
                        f"{purchase.invoice_id}",
                        purchase_id=purchase.id,
                        wallet_id=purchase.wallet_id,
                        invoice_id=purchase.invoice_id,
                    )
                )
                return
            self._compare(purchase, invoice)
            return
        # `creating` with no invoice in the listing: the create call never reached Stripe
        # (or its invoice is too new for the listing). Left to its caller's retry while
        # one can claim it; else, past the grace period, given up.
        age = self.started_at - purchase.created_at
        if self._claimable(purchase) or age < self.grace:
            return
        # Before giving up, search by our metadata (search lags writes by a minute or so,
        # which does not matter for a purchase this old).
        found = self.provider.find_purchase_invoice(purchase.id)
        if found is not None:
            self._stuck_with_invoice(purchase, found)
            return
        self._abandon(
            purchase,
            f"no invoice was made at Stripe in {_minutes(age)} and no caller can claim "
            "the purchase",
            invoice_id=None,
        )

    # --- 4. invoices of ended wallets --------------------------------------------------

    def _void_ended_wallet_invoices(self) -> None:
        self.progress.stage("Voiding invoices of ended wallets")
        with self._session() as session:
            flagged = list(
                session.execute(
                    select(Purchase.id, Purchase.wallet_id, Purchase.provider_invoice_id)
                    .where(Purchase.provider_void_pending.is_(True))
                    .order_by(Purchase.id)
                )
            )
        if not flagged:
            return
        wallets = {purchase_id: wallet_id for purchase_id, wallet_id, _ in flagged}
        invoices = {purchase_id: invoice_id for purchase_id, _, invoice_id in flagged}
        if self.dry_run:
            for purchase_id, wallet_id, invoice_id in flagged:
                self._would_repair(
                    FindingKind.INVOICE_VOID_PENDING,
                    "the wallet ended; its invoice is still to void at Stripe: would void it",
                    "void",
                    purchase_id=purchase_id,
                    wallet_id=wallet_id,
                    invoice_id=invoice_id,
                )
            return
        result = settlement.void_flagged_invoices(
            self._session, self.provider, list(wallets), now=self.clock()
        )
        self.progress.advance(len(wallets))
        with self._session() as session:
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
            self._add(
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
            self._add(
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

    # --- 5. reports from the database --------------------------------------------------

    def _report_attention(self) -> None:
        """Purchases waiting for a person: a refund to make, a payment to review."""
        self.progress.stage("Listing purchases that need a person")
        query = (
            select(
                Purchase.id,
                Purchase.wallet_id,
                Purchase.status,
                Purchase.provider_invoice_id,
                Purchase.invoice_status,
                Purchase.attention_reason,
            )
            .where(
                Purchase.status.in_(
                    [PurchaseStatus.REFUND_REQUIRED, PurchaseStatus.REVIEW_REQUIRED]
                )
            )
            .order_by(Purchase.created_at, Purchase.id)
            .execution_options(yield_per=DB_BATCH)
        )
        if self.since is not None:
            query = query.where(Purchase.created_at >= self.since)
        with self._session() as session:
            for (
                purchase_id,
                wallet_id,
                status,
                invoice_id,
                invoice_status,
                reason,
            ) in session.execute(query):
                self.progress.advance()
                if purchase_id in self.reported:
                    continue
                refund = status == PurchaseStatus.REFUND_REQUIRED
                detail = reason or (
                    "paid for a wallet that has ended: refund the payment"
                    if refund
                    else "payment needs review"
                )
                if purchase_id in self.refunds_of_waiting:
                    detail = f"{detail} ({self.refunds_of_waiting[purchase_id]})"
                self._add(
                    Finding(
                        FindingKind.REFUND_REQUIRED if refund else FindingKind.REVIEW_REQUIRED,
                        FindingAction.REPORTED,
                        detail,
                        purchase_id=purchase_id,
                        wallet_id=wallet_id,
                        invoice_id=invoice_id,
                        invoice_status=invoice_status,
                    )
                )

    def _check_ledger(self) -> None:
        """Every wallet whose stored balance is not the sum of its settled entries, in
        one grouped query (not one per wallet)."""
        self.progress.stage("Checking wallet balances against the ledger")
        proven = ledger.settled_sum_expression()
        query = (
            select(Wallet.id, Wallet.credits_balance, proven)
            .outerjoin(
                WalletTransaction,
                and_(
                    WalletTransaction.wallet_id == Wallet.id,
                    WalletTransaction.status == EntryStatus.SETTLED,
                ),
            )
            .group_by(Wallet.id, Wallet.credits_balance)
            .having(Wallet.credits_balance != proven)
            .order_by(Wallet.id)
            .execution_options(yield_per=DB_BATCH)
        )
        with self._session() as session:
            self.report.wallets_checked = session.execute(
                select(func.count()).select_from(Wallet)
            ).scalar_one()
            for wallet_id, stored, total in session.execute(query):
                self.progress.advance()
                proven_balance = money.quantize_credits(Decimal(total))
                self._add(
                    Finding(
                        FindingKind.LEDGER_MISMATCH,
                        FindingAction.REPORTED,
                        f"stored balance {money.format_credits(stored)} credits, settled "
                        f"ledger entries add up to {money.format_credits(proven_balance)}",
                        wallet_id=wallet_id,
                        stored_balance=stored,
                        ledger_balance=proven_balance,
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


def _refund_names(refunds: list[PaymentRefund]) -> str:
    """`re_1, re_2 (pending)`: the first few refunds by id, the count of the others."""
    names = [
        refund.refund_id + (f" ({refund.status})" if refund.status != "succeeded" else "")
        for refund in refunds[:5]
    ]
    if len(refunds) > 5:
        names.append(f"and {len(refunds) - 5} more")
    return ", ".join(names)


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
