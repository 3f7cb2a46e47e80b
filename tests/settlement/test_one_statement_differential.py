"""PostgreSQL settles a paid purchase in one statement (`transitions.settle`); every
other database, and a connection with `transitions.PORTABLE_ONLY`, takes the portable
statements. The same random sequences of invoice events go through both, on twin
purchases, and must leave the same end state: purchase, entry, wallet and every
outgoing event's body, ids and times aside."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from gateway import transitions, webhooks
from gateway.db import Database
from gateway.models import (
    Event,
    Purchase,
    PurchaseStatus,
    RecurringTransactionRule,
    Wallet,
    WalletTransaction,
)
from tests.support.webhooks import PurchaseRow, invoice_event, make_purchase

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)

# One step of a sequence: an invoice event type and how its invoice differs from the
# purchase (paid short, another currency, a discount), or None for as billed.
_KINDS = ["invoice.paid", "invoice.payment_failed", "invoice.voided",
          "invoice.marked_uncollectible", "invoice.finalized"]  # fmt: skip
_step = st.tuples(
    st.sampled_from(_KINDS),
    st.sampled_from([None, None, None, "short", "currency", "discount"]),
)
_scenario = st.fixed_dictionaries(
    {
        "credits": st.decimals(min_value=Decimal("0.2"), max_value=Decimal(5000), places=5),
        "tax_cents": st.integers(min_value=0, max_value=500),
        "granted": st.sampled_from([None, Decimal(3)]),
        "threshold": st.sampled_from([None, Decimal(2), Decimal(4), Decimal(100000)]),
        "creating": st.booleans(),
        "expired": st.booleans(),
        "rules": st.booleans(),
        "steps": st.lists(_step, min_size=1, max_size=5),
    }
)


# PostgreSQL only: the one-statement path exists there alone.
pytestmark = pytest.mark.parametrize("engine", ["postgres"], indirect=True)


def _twin(session: Session, scenario: dict[str, Any]) -> PurchaseRow:
    purchase = make_purchase(
        session,
        credits=scenario["credits"],
        tax_cents=scenario["tax_cents"],
        granted=scenario["granted"],
        status=PurchaseStatus.CREATING if scenario["creating"] else None,
        expiration_at=NOW - timedelta(days=1) if scenario["expired"] else None,
    )
    wallet = session.get(Wallet, purchase.wallet_id)
    assert wallet is not None
    wallet.low_balance_threshold_credits = scenario["threshold"]
    if scenario["rules"]:  # one row per rule in the statement's read: both kinds
        session.add_all(
            [
                RecurringTransactionRule(
                    wallet_id=wallet.id, trigger="threshold", method="fixed",
                    threshold_credits=Decimal(1), granted_credits=Decimal(1),
                ),
                RecurringTransactionRule(
                    wallet_id=wallet.id, trigger="interval", method="target",
                    interval="weekly", started_at=NOW, next_run_at=NOW + timedelta(days=7),
                    target_credits=Decimal(9),
                ),
            ]
        )  # fmt: skip
    session.commit()
    return purchase


def _send_in_turn(
    conn: Connection, purchase: PurchaseRow, steps: list[Any], *, portable: bool
) -> None:
    conn.execution_options(**{transitions.PORTABLE_ONLY: portable})
    db = Database(conn)
    for event_type, twist in steps:
        invoice: dict[str, Any] = {}
        if twist == "short" and event_type == "invoice.paid":
            invoice["amount_paid"] = purchase.total_cents - 1
        elif twist == "currency":
            invoice["currency"] = "eur"
        elif twist == "discount":
            invoice["discounts"] = ["di_1"]
        # A failure is recorded alike on both paths, and compared with the rest.
        with contextlib.suppress(webhooks.EventProcessingFailed):
            webhooks.receive_event(db, invoice_event(purchase, event_type, **invoice), NOW)
    conn.execution_options(**{transitions.PORTABLE_ONLY: False})


_ID = re.compile(r"\b(?:wal|wtx|pur|cus|cust|evt|in|rtr)_[0-9A-Za-z_]+")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")


def _plain(value: Any) -> Any:
    """`value` with ids and times made anonymous (they differ between the twins)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return "<time>"
    if isinstance(value, str):
        return _TIME.sub("<time>", _ID.sub("<id>", value))
    return value


def _state(session: Session, purchase: PurchaseRow) -> dict[str, Any]:
    session.expire_all()

    def row(model: type[Any], key: str) -> dict[str, Any]:
        found = session.get(model, key)
        assert found is not None
        return {c.key: getattr(found, c.key) for c in model.__mapper__.column_attrs}

    bodies = session.execute(
        select(Event.body).where(Event.wallet_id == purchase.wallet_id).order_by(Event.position)
    ).scalars()
    return _plain(
        {
            "purchase": row(Purchase, purchase.id),
            "entry": row(WalletTransaction, purchase.transaction_id),
            "wallet": row(Wallet, purchase.wallet_id),
            "events": [json.loads(body) for body in bodies],
        }
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=_scenario)
def test_one_statement_settlement_ends_where_the_portable_one_does(
    connection: Connection, scenario: dict[str, Any]
) -> None:
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        fast, portable = _twin(session, scenario), _twin(session, scenario)
        _send_in_turn(connection, fast, scenario["steps"], portable=False)
        _send_in_turn(connection, portable, scenario["steps"], portable=True)
        assert _state(session, fast) == _state(session, portable)
    finally:
        session.close()


def test_the_portable_switch_really_changes_the_statements(connection: Connection) -> None:
    """The comparison above means something only if the two runs differ in their SQL."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    from sqlalchemy import event

    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    scenario = {"credits": Decimal(10), "tax_cents": 0, "granted": None, "threshold": None,
                "creating": False, "expired": False, "rules": True}  # fmt: skip
    fast, portable = _twin(session, scenario), _twin(session, scenario)
    event.listen(connection, "before_cursor_execute", record)
    try:
        _send_in_turn(connection, fast, [("invoice.paid", None)], portable=False)
        one_statement = [
            s for s in sent if "UPDATE purchases" in s and s.startswith("WITH entry AS")
        ]
        sent.clear()
        _send_in_turn(connection, portable, [("invoice.paid", None)], portable=True)
        portable_statements = [
            s for s in sent if "UPDATE purchases" in s and s.startswith("WITH entry AS")
        ]
    finally:
        event.remove(connection, "before_cursor_execute", record)
        session.close()
    assert len(one_statement) == 1
    assert portable_statements == []
    for purchase in (fast, portable):
        assert _state(session, purchase)["purchase"]["status"] == "settled"
    assert _state(session, fast) == _state(session, portable)
