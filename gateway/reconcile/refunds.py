"""Step 2: Stripe's refunds created in the window (same start), read in pages (100 a
page), each mapped to the invoice its payment paid (one Invoice Payments lookup per
refunded payment). A refund made on the payment alone leaves the invoice `paid` with
nothing on it, so step 1 cannot see it. Refunds of a purchase's payment not yet recorded
here (a webhook was lost), or recorded in an earlier status (a pending refund that
succeeded, a succeeded one that failed), are applied through `returns`, like the
webhook: each counts once by its id, a refund a credit note made counts through the
note.
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway import money
from gateway.models import PurchaseStatus, ReturnKind
from gateway.providers.base import REFUND_GIVING_BACK, PaymentRefund, refund_moved_on
from gateway.reconcile.context import CLOCK_SLACK, RecordedReturn, Run
from gateway.reconcile.invoices import PAID_FOR
from gateway.reconcile.repairs import ApplyRefunds, Repair, refund_names


def scan_refunds(run: Run) -> Iterator[Repair]:
    run.progress.stage("Reading Stripe refunds")
    by_invoice: dict[str, list[PaymentRefund]] = {}
    for refund in run.provider.iter_invoice_refunds(
        created_since=run.report.window_start - CLOCK_SLACK
    ):
        run.report.refunds_scanned += 1
        run.progress.advance()
        by_invoice.setdefault(refund.invoice_id, []).append(refund)
    for rows in run.purchases_of_invoices(list(by_invoice)):
        recorded = run.recorded_returns([row.id for row in rows], ReturnKind.REFUND)
        for purchase in rows:
            refunds = by_invoice[purchase.invoice_id or ""]
            if purchase.status == PurchaseStatus.REFUND_REQUIRED:
                refunded = sum(
                    refund.amount_cents for refund in refunds if refund.status in REFUND_GIVING_BACK
                )
                currency = refunds[0].currency or purchase.currency
                run.refunds_of_waiting[purchase.id] = (
                    f"Stripe shows {money.format_minor(refunded, currency)} refunded "
                    f"({refund_names(refunds)})"
                )
            if purchase.status not in PAID_FOR:
                continue
            missing = [refund for refund in refunds if _uncounted(refund, recorded)]
            if missing:
                yield ApplyRefunds(purchase, missing)


def _uncounted(refund: PaymentRefund, recorded: dict[str, RecordedReturn]) -> bool:
    """Whether `refund` says something its recorded row does not: new and giving money
    back, or moved on (pending to succeeded, succeeded to failed). A refund a credit
    note made counts through the note."""
    known = recorded.get(refund.refund_id)
    if known is None:
        return refund.status in REFUND_GIVING_BACK
    status, credit_note_id = known
    return credit_note_id is None and refund_moved_on(status, refund.status)
