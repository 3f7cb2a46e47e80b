"""Wallets written as rows, and their ledger read back."""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import ledger
from gateway.actors import SYSTEM
from gateway.db import utcnow
from gateway.models import Customer, Wallet, WalletStatus, WalletTransaction

_ids = itertools.count(1)


def wallet_row(
    session: Session,
    balance: Decimal,
    rate: Decimal,
    currency: str = "USD",
    *,
    now: datetime | None = None,
    granted_at: datetime | None = None,
    expiration_at: datetime | None = None,
) -> Wallet:
    """A new customer's active wallet, created `now`, holding `balance` granted credits
    (granted at `granted_at`, default `now`), written directly, without the API."""
    now = now or utcnow()
    external_id = f"cust_{int(time.time() * 1000):x}{next(_ids):06d}"  # unique across runs
    customer = Customer(external_id=external_id, currency=currency, created_at=now)
    session.add(customer)
    session.flush()
    wallet = Wallet(
        customer_id=customer.id,
        status=WalletStatus.ACTIVE,
        currency=currency,
        rate_amount=rate,
        credits_balance=Decimal(0),
        consumed_credits=Decimal(0),
        consumed_amount_cents=0,
        expiration_at=expiration_at,
        created_at=now,
    )
    session.add(wallet)
    session.flush()
    if balance:
        ledger.grant_credits(session, wallet, balance, granted_at or utcnow(), created_by=SYSTEM)
    return wallet


def entries(session: Session, wallet_id: str) -> list[WalletTransaction]:
    """The wallet's ledger entries, oldest first, as the database holds them now."""
    session.expire_all()
    return list(
        session.execute(
            select(WalletTransaction)
            .where(WalletTransaction.wallet_id == wallet_id)
            .order_by(WalletTransaction.created_at, WalletTransaction.id)
        ).scalars()
    )


def set_expiration(session: Session, wallet_id: str, at: datetime) -> None:
    """Move a wallet's expiration, to the past as time passing would (the API refuses it)."""
    session.execute(update(Wallet).where(Wallet.id == wallet_id).values(expiration_at=at))
    session.commit()
