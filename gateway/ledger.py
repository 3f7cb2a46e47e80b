"""The ledger: the only code that changes a wallet's balance.

Every function expects the wallet row to be locked by the caller (`lock_wallet`) and
runs inside the caller's transaction, so an entry and the balance it moves are
committed together or not at all. Invariant: `wallet.credits_balance` equals the sum
of the wallet's settled entries (inbound minus outbound) and is never negative.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from gateway import money
from gateway.errors import NotFound
from gateway.models import (
    EntryStatus,
    TransactionStatus,
    TransactionType,
    Wallet,
    WalletTransaction,
)


class LedgerError(RuntimeError):
    """A movement that would break the ledger's invariants: a bug, never user input."""


def lock_wallet(session: Session, wallet_id: str) -> Wallet:
    """The wallet, locked for this transaction (FOR UPDATE; SQLite serialises writers)."""
    wallet = session.execute(
        select(Wallet)
        .where(Wallet.id == wallet_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if wallet is None:
        raise NotFound(f"wallet {wallet_id} does not exist", details={"wallet": ["not_found"]})
    return wallet


def _entry(
    wallet: Wallet,
    *,
    direction: TransactionType,
    kind: TransactionStatus,
    status: EntryStatus,
    credits: Decimal,
    now: datetime,
) -> WalletTransaction:
    credits = money.quantize_credits(credits)
    if credits <= 0:
        raise LedgerError(f"a ledger entry moves a positive number of credits, not {credits}")
    return WalletTransaction(
        wallet_id=wallet.id,
        transaction_type=direction,
        transaction_status=kind,
        status=status,
        credit_amount=credits,
        amount=money.credits_value(credits, wallet.rate_amount),
        settled_at=now if status == EntryStatus.SETTLED else None,
        created_at=now,
    )


def grant_credits(
    session: Session, wallet: Wallet, credits: Decimal, now: datetime
) -> WalletTransaction:
    """Free credits: a settled inbound `granted` entry, balance raised at once."""
    entry = _entry(
        wallet,
        direction=TransactionType.INBOUND,
        kind=TransactionStatus.GRANTED,
        status=EntryStatus.SETTLED,
        credits=credits,
        now=now,
    )
    wallet.credits_balance += entry.credit_amount
    session.add(entry)
    session.flush()
    return entry


def open_purchase_entry(
    session: Session, wallet: Wallet, credits: Decimal, now: datetime
) -> WalletTransaction:
    """Purchased credits awaiting payment: a pending inbound entry; the balance waits."""
    entry = _entry(
        wallet,
        direction=TransactionType.INBOUND,
        kind=TransactionStatus.PURCHASED,
        status=EntryStatus.PENDING,
        credits=credits,
        now=now,
    )
    session.add(entry)
    session.flush()
    return entry


def settle_purchase_entry(wallet: Wallet, entry: WalletTransaction, now: datetime) -> bool:
    """Pending purchase → settled, balance raised. False if it was not pending (no-op)."""
    _check_belongs(wallet, entry)
    if entry.status != EntryStatus.PENDING:
        return False
    entry.status = EntryStatus.SETTLED
    entry.settled_at = now
    wallet.credits_balance += entry.credit_amount
    return True


def settle_failed_purchase_entry(wallet: Wallet, entry: WalletTransaction, now: datetime) -> bool:
    """A failed purchase whose invoice was paid after all → settled, balance raised.

    Stripe lets an uncollectible invoice be paid later; the money arrived, so the
    credits do too. False if the entry was not failed (no-op).
    """
    _check_belongs(wallet, entry)
    if entry.status != EntryStatus.FAILED:
        return False
    if entry.transaction_status != TransactionStatus.PURCHASED:
        raise LedgerError("only a purchase entry can settle after failing")
    entry.status = EntryStatus.SETTLED
    entry.settled_at = now
    entry.failed_at = None
    wallet.credits_balance += entry.credit_amount
    return True


def fail_purchase_entry(wallet: Wallet, entry: WalletTransaction, now: datetime) -> bool:
    """Pending purchase → failed; the balance never saw it. False if not pending."""
    _check_belongs(wallet, entry)
    if entry.status != EntryStatus.PENDING:
        return False
    entry.status = EntryStatus.FAILED
    entry.failed_at = now
    return True


def void_remaining_credits(
    session: Session, wallet: Wallet, now: datetime, *, flush: bool = True
) -> WalletTransaction | None:
    """Expiry or termination: a settled outbound `voided` entry takes the balance to 0.

    `flush=False` leaves the INSERT to the caller's next flush (a sweep ending many
    wallets flushes once, so their entries go out as one multi-row INSERT)."""
    if wallet.credits_balance <= 0:
        return None
    entry = _entry(
        wallet,
        direction=TransactionType.OUTBOUND,
        kind=TransactionStatus.VOIDED,
        status=EntryStatus.SETTLED,
        credits=wallet.credits_balance,
        now=now,
    )
    wallet.credits_balance = Decimal("0")
    session.add(entry)
    if flush:
        session.flush()
    return entry


def consume_credits(
    session: Session, wallet: Wallet, credits: Decimal, amount_cents: int, now: datetime
) -> WalletTransaction:
    """Credits deducted from an invoice: a settled outbound `invoiced` entry."""
    if credits > wallet.credits_balance:
        raise LedgerError("consumption larger than the balance")
    entry = _entry(
        wallet,
        direction=TransactionType.OUTBOUND,
        kind=TransactionStatus.INVOICED,
        status=EntryStatus.SETTLED,
        credits=credits,
        now=now,
    )
    wallet.credits_balance -= entry.credit_amount
    wallet.consumed_credits += entry.credit_amount
    wallet.consumed_amount_cents += amount_cents
    session.add(entry)
    session.flush()
    return entry


def settled_sum_expression() -> ColumnElement[Decimal]:
    """SQL: the signed sum of settled entries (the balance the ledger proves)."""
    return func.coalesce(
        func.sum(
            case(
                (
                    WalletTransaction.transaction_type == TransactionType.INBOUND,
                    WalletTransaction.credit_amount,
                ),
                else_=-WalletTransaction.credit_amount,
            )
        ),
        0,
    )


def ledger_balance(session: Session, wallet_id: str) -> Decimal:
    """The balance the settled entries of `wallet_id` add up to."""
    total = session.execute(
        select(settled_sum_expression()).where(
            WalletTransaction.wallet_id == wallet_id,
            WalletTransaction.status == EntryStatus.SETTLED,
        )
    ).scalar_one()
    return money.quantize_credits(Decimal(total))


def _check_belongs(wallet: Wallet, entry: WalletTransaction) -> None:
    if entry.wallet_id != wallet.id:
        raise LedgerError("entry belongs to another wallet")
