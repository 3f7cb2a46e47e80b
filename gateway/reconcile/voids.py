"""Step 5: invoices of ended wallets still to void at Stripe (the wallet's ending could
not reach Stripe then)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select

from gateway.models import Purchase
from gateway.reconcile.context import Run
from gateway.reconcile.repairs import Repair, VoidFlaggedInvoices


def scan_void_pending(run: Run) -> Iterator[Repair]:
    run.progress.stage("Voiding invoices of ended wallets")
    with run.session() as session:
        flagged = [
            (purchase_id, wallet_id, invoice_id)
            for purchase_id, wallet_id, invoice_id in session.execute(
                select(Purchase.id, Purchase.wallet_id, Purchase.provider_invoice_id)
                .where(Purchase.provider_void_pending.is_(True))
                .order_by(Purchase.id)
            )
        ]
    if flagged:
        yield VoidFlaggedInvoices(flagged)
