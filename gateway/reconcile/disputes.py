"""Step 3: disputes. A lost `charge.dispute.created` leaves a disputed purchase's
credits spendable; a lost `charge.dispute.closed` keeps a won dispute's credits held.

- Stripe's disputes created in the window (same start), read in pages (100 a page),
  each mapped to the invoice its payment paid: a dispute not recorded here, or
  recorded open and since closed, is applied through `returns`, like the webhook.
- Disputes recorded open here that the listing did not show (opened before the
  window: a dispute can take months to close) are read one by one; a closed one is
  applied.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select

from gateway.models import DisputeStatus, PaymentReturn, Purchase, ReturnKind
from gateway.providers.base import Dispute, DisputeOutcome, dispute_moved_on
from gateway.reconcile.context import CLOCK_SLACK, Run
from gateway.reconcile.invoices import PAID_FOR
from gateway.reconcile.repairs import ApplyDispute, Repair


def scan_disputes(run: Run) -> Iterator[Repair]:
    run.progress.stage("Reading Stripe disputes")
    by_invoice: dict[str, list[Dispute]] = {}
    for found in run.provider.iter_invoice_disputes(
        created_since=run.report.window_start - CLOCK_SLACK
    ):
        run.report.disputes_scanned += 1
        run.progress.advance()
        by_invoice.setdefault(found.invoice_id, []).append(found.dispute)
    listed: set[str] = set()
    for rows in run.purchases_of_invoices(list(by_invoice)):
        recorded = run.recorded_returns([row.id for row in rows], ReturnKind.DISPUTE)
        for purchase in rows:
            for dispute in by_invoice[purchase.invoice_id or ""]:
                listed.add(dispute.id)
                known = recorded.get(dispute.id)
                if purchase.status in PAID_FOR and (
                    known is None or dispute_moved_on(known.status, dispute.outcome)
                ):
                    yield ApplyDispute(purchase, dispute)
    yield from _closed_since(run, listed)


def _closed_since(run: Run, listed: set[str]) -> Iterator[Repair]:
    """Disputes recorded open here and not listed: read again, applied once closed."""
    for dispute_id, purchase_id in _still_open(run).items():
        if dispute_id in listed:
            continue
        dispute = run.provider.retrieve_dispute(dispute_id)
        if dispute.outcome != DisputeOutcome.OPEN:
            (purchase,) = run.rows_where(Purchase.id == purchase_id)
            yield ApplyDispute(purchase, dispute)


def _still_open(run: Run) -> dict[str, str]:
    """The disputes recorded open: id -> the purchase whose payment they dispute."""
    with run.session() as session:
        return {
            object_id: purchase_id
            for object_id, purchase_id in session.execute(
                select(PaymentReturn.provider_object_id, PaymentReturn.purchase_id)
                .where(
                    PaymentReturn.kind == ReturnKind.DISPUTE,
                    PaymentReturn.status == DisputeStatus.OPEN,
                )
                .order_by(PaymentReturn.created_at)
            )
        }
