"""Settlement's one locking read on PostgreSQL: wallet first, and fresh rows after a wait.

`settlement.apply_invoice` locks a purchase's wallet, the purchase and its ledger
entry in one `SELECT … FOR UPDATE OF` statement. These tests hold it to the two
things that make that safe: it takes the wallet before the purchase (the order every
other writer uses, so no deadlock), and once it has waited for a lock it reads what
the holder committed, not what was there when it started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from gateway import settlement
from gateway.db import utcnow
from gateway.models import PurchaseStatus
from gateway.providers.stripe.objects import invoice_snapshot
from tests.support.threads import app_session
from tests.support.webhooks import PurchaseRow, invoice_object, make_purchase, state_of

pytestmark = pytest.mark.postgres


@pytest.fixture
def purchase(committed_app: Flask) -> PurchaseRow:
    with app_session(committed_app) as session:
        return make_purchase(session, credits=Decimal("4"))


@pytest.fixture
def wallet_holder(postgres_engine: Engine, purchase: PurchaseRow) -> Iterator[Connection]:
    """Another transaction holding the purchase's wallet locked."""
    with postgres_engine.connect() as holder:
        holder.execute(
            text("SELECT id FROM wallets WHERE id = :id FOR UPDATE"), {"id": purchase.wallet_id}
        )
        yield holder
        holder.rollback()


def _settle_in_thread(engine: Engine, purchase: PurchaseRow) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    invoice = invoice_snapshot(invoice_object(purchase, "paid"))

    def run() -> None:
        with engine.begin() as conn:
            outcome.append(settlement.apply_invoice(conn, invoice, utcnow(), "test"))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_until_blocked(engine: Engine) -> None:
    deadline = time.monotonic() + 10
    with engine.connect() as probe:
        while time.monotonic() < deadline:
            waiting = probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
            probe.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the settlement never waited for the wallet lock")


def _lockable_now(engine: Engine, table: str, row_id: str) -> bool:
    with engine.connect() as probe:
        try:
            probe.execute(
                text(f"SELECT id FROM {table} WHERE id = :id FOR UPDATE NOWAIT"),
                {"id": row_id},
            )
        except Exception:
            return False
        finally:
            probe.rollback()
    return True


def test_a_settlement_waiting_for_the_wallet_holds_no_lock_on_its_purchase(
    committed_app: Flask,
    postgres_engine: Engine,
    purchase: PurchaseRow,
    wallet_holder: Connection,
) -> None:
    thread, outcome = _settle_in_thread(postgres_engine, purchase)
    _wait_until_blocked(postgres_engine)

    # Wallet first: while it waits for the wallet, purchase and entry are free, so a
    # writer holding the wallet and wanting the purchase cannot deadlock with it.
    assert _lockable_now(postgres_engine, "purchases", purchase.id)
    assert _lockable_now(postgres_engine, "wallet_transactions", purchase.transaction_id)

    wallet_holder.rollback()
    thread.join(timeout=10)
    assert outcome[0].action == settlement.SettlementAction.SETTLED


def test_a_settlement_that_waited_reads_what_the_lock_holder_committed(
    committed_app: Flask,
    postgres_engine: Engine,
    purchase: PurchaseRow,
    wallet_holder: Connection,
) -> None:
    # The holder settles the purchase itself while the other settlement waits.
    thread, outcome = _settle_in_thread(postgres_engine, purchase)
    _wait_until_blocked(postgres_engine)
    first = settlement.apply_invoice(
        wallet_holder, invoice_snapshot(invoice_object(purchase, "paid")), utcnow(), "holder"
    )
    wallet_holder.commit()
    thread.join(timeout=10)

    assert first.action == settlement.SettlementAction.SETTLED
    # Not a stale "open" purchase with a "pending" entry: it sees the settlement.
    assert outcome[0].action == settlement.SettlementAction.UNCHANGED
    with app_session(committed_app) as session:
        state = state_of(session, purchase.id)
    assert state.purchase_status == PurchaseStatus.SETTLED
    assert state.balance == Decimal("4.00000")
