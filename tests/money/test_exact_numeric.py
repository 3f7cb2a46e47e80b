"""Credits and amounts come back from either database exactly as they were stored."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.db import ExactNumeric
from gateway.ledger import ledger_balance
from gateway.models import Customer, Wallet, WalletTransaction

_ids = itertools.count()
# Up to 92 trillion credits, the 64-bit limit of the SQLite storage; 5 places.
balances = st.decimals(min_value=0, max_value=Decimal("92000000000000"), places=5)
# Exact products of credits and rates: 10 places, beyond 64 bits once scaled.
amounts = st.decimals(min_value=0, max_value=Decimal("1e15"), places=10)
per_example = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@contextmanager
def rolled_back(session: Session) -> Iterator[None]:
    """One hypothesis example's rows, discarded afterwards."""
    savepoint = session.begin_nested()
    try:
        yield
    finally:
        savepoint.rollback()


def new_wallet(session: Session, balance: Decimal) -> Wallet:
    customer = Customer(external_id=f"exact-{next(_ids)}", currency="USD")
    session.add(customer)
    session.flush()
    wallet = Wallet(
        customer_id=customer.id,
        currency="USD",
        rate_amount=Decimal("0.00001"),
        credits_balance=balance,
        status="terminated",
    )
    session.add(wallet)
    session.flush()
    return wallet


@per_example
@given(balance=balances, amount=amounts)
def test_decimals_round_trip_exactly(
    db_session: Session, balance: Decimal, amount: Decimal
) -> None:
    with rolled_back(db_session):
        wallet = new_wallet(db_session, balance)
        entry = WalletTransaction(
            wallet_id=wallet.id,
            transaction_type="inbound",
            transaction_status="granted",
            status="settled",
            credit_amount=balance,
            amount=amount,
            created_by="system",
        )
        db_session.add(entry)
        db_session.flush()
        db_session.expire_all()
        stored = db_session.execute(select(Wallet).where(Wallet.id == wallet.id)).scalar_one()
        assert stored.credits_balance == balance
        assert stored.rate_amount == Decimal("0.00001")
        again = db_session.get(WalletTransaction, entry.id)
        assert again is not None
        assert again.credit_amount == balance
        assert again.amount == amount
        # Filters compare exactly in SQL too.
        below = balance - Decimal("0.00001")
        found = db_session.execute(
            select(Wallet.id).where(Wallet.id == wallet.id, Wallet.credits_balance > below)
        ).scalar_one_or_none()
        assert found == wallet.id


@per_example
@given(
    entries=st.lists(
        st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("1e12"), places=5),
        min_size=1,
        max_size=12,
    )
)
def test_sums_of_entries_are_exact(db_session: Session, entries: list[Decimal]) -> None:
    with rolled_back(db_session):
        wallet = new_wallet(db_session, Decimal(0))
        for credits in entries:
            db_session.add(
                WalletTransaction(
                    wallet_id=wallet.id,
                    transaction_type="inbound",
                    transaction_status="granted",
                    status="settled",
                    credit_amount=credits,
                    amount=credits,
                    created_by="system",
                )
            )
        db_session.flush()
        assert ledger_balance(db_session, wallet.id) == sum(entries)


def test_binary_floats_are_never_stored(db_session: Session) -> None:
    from sqlalchemy.exc import StatementError

    customer = Customer(external_id=f"exact-{next(_ids)}", currency="USD")
    db_session.add(customer)
    db_session.flush()
    db_session.add(Wallet(customer_id=customer.id, currency="USD", rate_amount=0.1))
    with pytest.raises(StatementError, match="binary floats"):
        db_session.flush()


def test_values_round_like_postgresql_numeric() -> None:
    column = ExactNumeric(30, 5)
    assert column._exact(Decimal("1.000005")) == Decimal("1.00001")
    assert column._exact(Decimal("-1.000005")) == Decimal("-1.00001")
    assert column._exact(7) == Decimal("7.00000")
