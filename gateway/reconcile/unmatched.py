"""Step 4: purchases still `creating` or `open` that no listed invoice named, read in
batches by id (`DB_BATCH` a page, whatever their age: without `--since` this is how
those older than the listed window are checked). A stored invoice is read on its own;
a purchase still `creating` that no caller can claim any more is looked up by metadata
and, with no invoice at Stripe, failed after `PURCHASE_STUCK_GRACE_MINUTES` (its
pending entry fails; the balance never saw it).
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import and_

from gateway.models import Purchase
from gateway.providers.base import ProviderError, ProviderRejected
from gateway.reconcile.context import UNSETTLED, PurchaseRow, Run
from gateway.reconcile.invoices import compare, stuck_with_invoice
from gateway.reconcile.repairs import (
    AbandonCreation,
    Repair,
    minutes,
    stripe_failed,
)
from gateway.reconcile.report import Finding, FindingAction, FindingKind


def scan_unmatched(run: Run) -> Iterator[Repair]:
    run.progress.stage("Checking unmatched purchases")
    conditions = [Purchase.status.in_(UNSETTLED), Purchase.created_at <= run.cutoff]
    if run.since is not None:
        conditions.append(Purchase.created_at >= run.since)
    for batch in run.batches(and_(*conditions)):
        for purchase in batch:
            if purchase.id in run.seen:
                continue
            run.report.purchases_checked += 1
            run.progress.advance()
            try:
                planned = list(_unmatched_at_stripe(run, purchase))
            except ProviderError as exc:
                # One purchase's call failed; the listing worked, so the run goes on.
                stripe_failed(run, purchase, "look up its invoice", str(exc))
                continue
            yield from planned


def _unmatched_at_stripe(run: Run, purchase: PurchaseRow) -> Iterator[Repair]:
    if purchase.invoice_id is not None:
        try:
            invoice = run.provider.retrieve_invoice(purchase.invoice_id)
        except ProviderRejected as exc:
            if exc.status != 404:
                raise
            run.add(
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
        yield from compare(run, purchase, invoice)
        return
    # `creating` with no invoice in the listing: the create call never reached Stripe
    # (or its invoice is too new for the listing). Left to its caller's retry while one
    # can claim it; else, past the grace period, given up.
    age = run.started_at - purchase.created_at
    if run.claimable(purchase) or age < run.grace:
        return
    # Before giving up, search by our metadata (search lags writes by a minute or so,
    # which does not matter for a purchase this old).
    found = run.provider.find_purchase_invoice(purchase.id)
    if found is not None:
        yield from stuck_with_invoice(run, purchase, found)
        return
    yield AbandonCreation(
        purchase,
        f"no invoice was made at Stripe in {minutes(age)} and no caller can claim the purchase",
        None,
        run.grace,
    )
