"""`ledger.terminate_and_void`: many wallets end in a few statements, each exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Table, event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import ledger, money
from gateway.actors import SYSTEM
from gateway.db import utcnow
from gateway.models import Wallet, WalletStatus, WalletTransaction
from tests.support.ledger import wallet_row

WALLETS: Table = Wallet.__table__  # type: ignore[assignment]


def _locked_wallet(session: Session, balance: Decimal, rate: Decimal) -> Wallet:
    """A wallet granted `balance` ten days ago, read back under its lock."""
    wallet = wallet_row(session, balance, rate, granted_at=utcnow() - timedelta(days=10))
    return ledger.lock_wallet(session, wallet.id)


def _voided(session: Session, wallet_id: str) -> list[WalletTransaction]:
    return list(
        session.execute(
            select(WalletTransaction).where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.transaction_status == "voided",
            )
        ).scalars()
    )


def test_each_wallet_ends_at_its_own_time_with_its_exact_balance_voided(
    db_session: Session,
) -> None:
    base = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    cases = [  # balance, rate
        (Decimal("10"), Decimal("2.5")),
        (Decimal("0.00001"), Decimal("0.00001")),  # worth 1e-10: the amount keeps it
        (Decimal("0"), Decimal("1")),  # nothing to void: no entry
        (Decimal("123456789.12345"), Decimal("999999.99999")),
    ]
    ending = [
        (_locked_wallet(db_session, balance, rate), base + timedelta(hours=n))
        for n, (balance, rate) in enumerate(cases)
    ]
    statements: list[str] = []

    @event.listens_for(db_session.connection(), "before_cursor_execute")
    def _count(_conn: Connection, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    assert ledger.terminate_and_void(db_session, ending, created_by=SYSTEM) == 3

    # One INSERT and one UPDATE, whatever the number of wallets; the voided entries'
    # events (gateway.events) are one more INSERT, their payloads two reads.
    ledger_writes = [
        s for s in statements if s.startswith(("INSERT INTO wallet_transactions", "UPDATE wallets"))
    ]
    assert len([s for s in ledger_writes if "event_sequence" not in s]) == 2
    assert sum(s.startswith("INSERT INTO events") for s in statements) == 1
    if db_session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        # the wallets' sequences: one UPDATE for all of them
        assert sum("event_sequence" in s for s in ledger_writes) == 1
    assert not db_session.dirty  # the objects hold the new state as committed values
    for wallet, at in ending:
        assert wallet.status == WalletStatus.TERMINATED
        assert wallet.credits_balance == 0
        assert wallet.terminated_at == wallet.updated_at == at
    db_session.expire_all()
    for (wallet, at), (balance, rate) in zip(ending, cases, strict=True):
        stored = db_session.get_one(Wallet, wallet.id)
        assert stored.status == WalletStatus.TERMINATED
        assert stored.credits_balance == 0
        assert stored.terminated_at == stored.updated_at == at
        assert ledger.ledger_balance(db_session, wallet.id) == 0
        entries = _voided(db_session, wallet.id)
        if not balance:
            assert entries == []
            continue
        [entry] = entries
        assert (entry.transaction_type, entry.status) == ("outbound", "settled")
        assert entry.credit_amount == balance
        assert entry.amount == money.credits_value(balance, rate)
        assert entry.created_at == entry.settled_at == at
        assert entry.failed_at is None


def test_a_wallet_changed_under_the_caller_stops_them_all(db_session: Session) -> None:
    """The UPDATE matches only rows still holding what was voided: a stale object (here,
    a balance changed behind the session's back) raises, and rolling back keeps all."""
    fresh = _locked_wallet(db_session, Decimal("3"), Decimal("1"))
    stale = _locked_wallet(db_session, Decimal("5"), Decimal("1"))
    db_session.connection().execute(
        update(WALLETS).where(WALLETS.c.id == stale.id).values(credits_balance=Decimal("7"))
    )
    at = utcnow()

    with pytest.raises(ledger.LedgerError, match="1 of 2 wallet"), db_session.begin_nested():
        ledger.terminate_and_void(db_session, [(fresh, at), (stale, at)], created_by=SYSTEM)

    db_session.expire_all()
    for wallet_id, balance in ((fresh.id, Decimal("3")), (stale.id, Decimal("7"))):
        stored = db_session.get_one(Wallet, wallet_id)
        assert (stored.status, stored.credits_balance) == (WalletStatus.ACTIVE, balance)
        assert _voided(db_session, wallet_id) == []


def test_a_wallet_ends_once(db_session: Session) -> None:
    wallet = _locked_wallet(db_session, Decimal("2"), Decimal("1"))
    at = utcnow()
    with pytest.raises(ledger.LedgerError, match="given twice"):
        ledger.terminate_and_void(db_session, [(wallet, at), (wallet, at)], created_by=SYSTEM)

    ledger.terminate_and_void(db_session, [(wallet, at)], created_by=SYSTEM)
    with pytest.raises(ledger.LedgerError, match="cannot end again"):
        ledger.terminate_and_void(db_session, [(wallet, at)], created_by=SYSTEM)
    assert len(_voided(db_session, wallet.id)) == 1


def test_a_naive_end_time_is_refused(db_session: Session) -> None:
    wallet = _locked_wallet(db_session, Decimal("2"), Decimal("1"))
    naive = datetime(2030, 1, 1)
    with pytest.raises(ledger.LedgerError, match="UTC-aware"):
        ledger.terminate_and_void(db_session, [(wallet, naive)], created_by=SYSTEM)
    assert wallet.status == WalletStatus.ACTIVE
