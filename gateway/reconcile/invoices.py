"""Step 1: Stripe's invoices created in the window, read in pages (list API, 100 a page,
newest first) and matched in memory, a page at a time, with the purchases they name
(one query per page).

- a purchase still `creating` is never resumed here: only a retry of its request with
  the same Idempotency-Key does that (`claimable_until`). A paid invoice is adopted (it
  settles); while its caller can still claim it, a finalized invoice is adopted and a
  draft left to the retry; once no caller can (and the purchase is past `IN_FLIGHT`), a
  finalized unpaid invoice is voided and the purchase fails at once, a draft (nothing
  billable) after the grace period;
- an `open` purchase (or a failed one) whose invoice is paid settles, one whose invoice
  is void or uncollectible fails;
- credit notes on a paid purchase's invoice that the webhooks missed are applied;
- reported only: a paid invoice with our metadata for no purchase of ours, and a
  settled purchase whose invoice is no longer paid.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import or_

from gateway import money
from gateway.models import Purchase, PurchaseStatus
from gateway.providers.base import InvoiceSnapshot
from gateway.reconcile.context import CLOCK_SLACK, MATCH_BATCH, UNSETTLED, PurchaseRow, Run
from gateway.reconcile.repairs import (
    AbandonCreation,
    ApplyCreditNotes,
    ApplyInvoice,
    Repair,
    VoidUnclaimed,
    minutes,
    unknown_payment,
)
from gateway.reconcile.report import Finding, FindingAction, FindingKind
from gateway.transitions import FAILED_INVOICE_STATUSES, InvoiceStatus

# Purchases whose payment went through: money can come back for them.
PAID_FOR = frozenset(
    {PurchaseStatus.SETTLED, PurchaseStatus.REFUNDED, PurchaseStatus.REFUND_REQUIRED}
)


def scan_invoices(run: Run) -> Iterator[Repair]:
    run.progress.stage("Reading Stripe invoices")
    listed = run.provider.iter_purchase_invoices(
        created_since=run.report.window_start - CLOCK_SLACK
    )
    page: list[InvoiceSnapshot] = []
    for invoice in listed:
        page.append(invoice)
        if len(page) == MATCH_BATCH:
            yield from _match_page(run, page)
            page = []
    if page:
        yield from _match_page(run, page)


def _match_page(run: Run, invoices: list[InvoiceSnapshot]) -> Iterator[Repair]:
    purchase_ids = {invoice.purchase_id for invoice in invoices if invoice.purchase_id}
    invoice_ids = {invoice.id for invoice in invoices}
    rows = run.rows_where(
        or_(Purchase.id.in_(purchase_ids), Purchase.provider_invoice_id.in_(invoice_ids))
    )
    by_id = {row.id: row for row in rows}
    by_invoice = {row.invoice_id: row for row in rows if row.invoice_id}
    for invoice in invoices:
        run.report.invoices_scanned += 1
        run.listed[invoice.id] = (invoice.status, invoice.credited_after_payment_cents)
        run.progress.advance()
        purchase = by_invoice.get(invoice.id) or by_id.get(invoice.purchase_id or "")
        if purchase is None:
            if invoice.status == InvoiceStatus.PAID:
                unknown_payment(
                    run,
                    invoice,
                    f"names purchase {invoice.purchase_id}, which does not exist here",
                )
            continue
        if purchase.invoice_id not in (None, invoice.id):
            if invoice.status == InvoiceStatus.PAID:
                unknown_payment(
                    run,
                    invoice,
                    f"names purchase {purchase.id}, whose invoice is {purchase.invoice_id}",
                    purchase,
                )
            continue
        if not run.in_window(purchase.created_at):
            continue  # within the listing's slack, but before --since
        if purchase.status in UNSETTLED:
            run.seen.add(purchase.id)
        run.report.purchases_checked += 1
        yield from compare(run, purchase, invoice)


def compare(run: Run, purchase: PurchaseRow, invoice: InvoiceSnapshot) -> Iterator[Repair]:
    """Bring one purchase in line with its invoice, or report the difference."""
    status = purchase.status
    if status == PurchaseStatus.CREATING:
        yield from stuck_with_invoice(run, purchase, invoice)
    elif status == PurchaseStatus.OPEN:
        if invoice.status == InvoiceStatus.PAID:
            yield ApplyInvoice(FindingKind.INVOICE_PAID_NOT_SETTLED, purchase, invoice)
        elif invoice.status in FAILED_INVOICE_STATUSES:
            yield ApplyInvoice(FindingKind.INVOICE_FAILED_STILL_OPEN, purchase, invoice)
    elif status == PurchaseStatus.FAILED and invoice.status == InvoiceStatus.PAID:
        # Stripe lets a void-pending or uncollectible invoice be paid after all:
        # settlement credits it (or marks it for refund if the wallet has ended).
        yield ApplyInvoice(FindingKind.INVOICE_PAID_NOT_SETTLED, purchase, invoice)
    if status in PAID_FOR:
        yield from _check_paid_for(run, purchase, invoice)
    # refund_required / review_required: reported from the database (step 6).


def _check_paid_for(run: Run, purchase: PurchaseRow, invoice: InvoiceSnapshot) -> Iterator[Repair]:
    if invoice.status != InvoiceStatus.PAID:
        if purchase.status != PurchaseStatus.REFUND_REQUIRED:
            run.add(
                Finding(
                    FindingKind.SETTLED_INVOICE_NOT_PAID,
                    FindingAction.REPORTED,
                    f"purchase {purchase.status} "
                    f"({money.format_credits(purchase.credit_amount)} credits) but its "
                    f"invoice is now {invoice.status} at Stripe",
                    purchase_id=purchase.id,
                    wallet_id=purchase.wallet_id,
                    invoice_id=invoice.id,
                    invoice_status=invoice.status,
                )
            )
        return
    # More credited at Stripe: notes the webhooks missed; less: a note was voided.
    uncounted = invoice.credited_after_payment_cents - purchase.credited_cents
    if uncounted != 0:
        yield ApplyCreditNotes(purchase, invoice.id, uncounted)


def stuck_with_invoice(
    run: Run, purchase: PurchaseRow, invoice: InvoiceSnapshot
) -> Iterator[Repair]:
    """A purchase still `creating` whose invoice exists at Stripe.

    Never resumed here (that would bill a caller who may have been told it failed and
    bought again): a paid invoice settles it (the money arrived) and a void or
    uncollectible one fails it; a finalized open one is adopted while the caller can
    still claim the purchase, voided once nobody can; a draft is left to the caller's
    retry, and abandoned (never finalized) once nobody can claim it.
    """
    if invoice.status in (InvoiceStatus.PAID, *FAILED_INVOICE_STATUSES):
        yield ApplyInvoice(FindingKind.STUCK_PURCHASE, purchase, invoice, adopting=True)
        return
    if run.claimable(purchase):
        if invoice.status != InvoiceStatus.DRAFT:
            yield ApplyInvoice(FindingKind.STUCK_PURCHASE, purchase, invoice, adopting=True)
        return  # its caller's retry finishes a draft
    if purchase.created_at > run.cutoff:
        return
    if invoice.status == InvoiceStatus.DRAFT:
        age = run.started_at - purchase.created_at
        if age >= run.grace:
            yield AbandonCreation(
                purchase,
                f"its invoice {invoice.id} is still a draft after {minutes(age)} and no "
                "caller can claim the purchase (it was never finalized, so it cannot be "
                "paid)",
                invoice.id,
                run.grace,
            )
        return
    yield VoidUnclaimed(purchase, invoice)
