"""Step 6: reported from the database, for a person: purchases marked `refund_required`
or `review_required`, purchases whose money went back after their credits were spent
(`shortfall_credits`), and, in one grouped query, every wallet whose stored balance
differs from the sum of its settled ledger entries. Nothing here repairs anything."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import and_, func, select

from gateway import ledger, money
from gateway.models import (
    DisputeStatus,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    Wallet,
    WalletTransaction,
    wallet_usable,
)
from gateway.reconcile.context import DB_BATCH, Run
from gateway.reconcile.report import Finding, FindingAction, FindingKind


def report_attention(run: Run) -> None:
    """Purchases waiting for a person: a refund to make, a payment to review."""
    run.progress.stage("Listing purchases that need a person")
    query = (
        select(
            Purchase.id,
            Purchase.wallet_id,
            Purchase.status,
            Purchase.provider_invoice_id,
            Purchase.invoice_status,
            Purchase.attention_reason,
            Purchase.dispute_status,
        )
        .where(
            Purchase.status.in_([PurchaseStatus.REFUND_REQUIRED, PurchaseStatus.REVIEW_REQUIRED])
        )
        .order_by(Purchase.created_at, Purchase.id)
        .execution_options(yield_per=DB_BATCH)
    )
    if run.since is not None:
        query = query.where(Purchase.created_at >= run.since)
    with run.session() as session:
        for (
            purchase_id, wallet_id, status, invoice_id, invoice_status, reason, dispute
        ) in session.execute(query):  # fmt: skip
            run.progress.advance()
            if purchase_id in run.reported:
                continue
            refund = status == PurchaseStatus.REFUND_REQUIRED
            detail = reason or (
                "paid for a wallet that has ended: refund the payment"
                if refund
                else "payment needs review"
            )
            if purchase_id in run.refunds_of_waiting:
                detail = f"{detail} ({run.refunds_of_waiting[purchase_id]})"
            if refund and dispute == DisputeStatus.OPEN:
                detail = (
                    f"{detail}; its payment is disputed: do not refund it while the "
                    "dispute is open (a lost dispute returns the money)"
                )
            run.add(
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


def report_shortfalls(run: Run) -> None:
    """Purchases whose money went back after (some of) their credits were spent: the
    credits could not be taken back; a person decides what to do about them."""
    run.progress.stage("Listing refunds of credits already spent")
    query = (
        select(
            Purchase.id,
            Purchase.wallet_id,
            Purchase.provider_invoice_id,
            Purchase.invoice_status,
            Purchase.returned_cents,
            Purchase.currency,
            Purchase.shortfall_credits,
            Wallet.status,
            Wallet.expiration_at,
        )
        .join(Wallet, Wallet.id == Purchase.wallet_id)
        .where(Purchase.shortfall_credits > 0)
        .order_by(Purchase.created_at, Purchase.id)
        .execution_options(yield_per=DB_BATCH)
    )
    if run.since is not None:
        query = query.where(Purchase.created_at >= run.since)
    with run.session() as session:
        for (
            purchase_id,
            wallet_id,
            invoice_id,
            status,
            returned,
            currency,
            short,
            wallet_status,
            expiration_at,
        ) in session.execute(query):
            run.progress.advance()
            went_back = f"{money.format_minor(returned, currency)} of its payment went back"
            if wallet_usable(wallet_status, expiration_at, run.started_at):
                why = f"after {money.format_credits(short)} of its credits were spent"
            else:  # what was left was voided when the wallet ended
                why = (
                    f"after its wallet ended: {money.format_credits(short)} of its credits "
                    "were spent before it ended, or voided when it did"
                )
            run.add(
                Finding(
                    FindingKind.REFUNDED_AFTER_CONSUMPTION,
                    FindingAction.REPORTED,
                    f"{went_back} {why}: those could not be taken back",
                    purchase_id=purchase_id,
                    wallet_id=wallet_id,
                    invoice_id=invoice_id,
                    invoice_status=status,
                )
            )


def check_ledger(run: Run) -> None:
    """Every wallet whose stored balance is not the sum of its settled entries, in one
    grouped query (not one per wallet)."""
    run.progress.stage("Checking wallet balances against the ledger")
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
    with run.session() as session:
        run.report.wallets_checked = session.execute(
            select(func.count()).select_from(Wallet)
        ).scalar_one()
        for wallet_id, stored, total in session.execute(query):
            run.progress.advance()
            proven_balance = money.quantize_credits(Decimal(total))
            run.add(
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
