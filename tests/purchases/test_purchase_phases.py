"""The three phases of a purchase, as statements and as what happens between them.

Phase 1 writes the pending entry and the purchase row and commits; phase 2 calls
Stripe with no transaction open; phase 3 stores the finalized invoice in a short
transaction. These tests pin what each phase costs in statements and what phase 3
does when something changed while Stripe was being called.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import ledger, wallets
from gateway.actors import SYSTEM
from gateway.db import get_session, utcnow
from gateway.errors import IdempotencyKeyInProgress
from gateway.models import EntryStatus, Purchase, PurchaseStatus, WalletTransaction
from gateway.providers.stripe.sandbox import StripeStub
from gateway.purchases import MAX_PURCHASES_PER_REQUEST, PurchaseBatch, RequestScope
from tests.support.api import create_wallet, post, subscribed_customer, top_up, wallet_body
from tests.support.stripe import during_finalize, only_purchase


def _shape(statement: str) -> tuple[str, str]:
    """(verb, table) of a statement: ("SELECT", "wallets"), ("UPDATE", "purchases")…"""
    words = statement.split()
    verb = words[0].upper()
    if verb == "WITH":  # a CTE feeding an INSERT: named by what it inserts into
        upper = [word.upper() for word in words]
        return "INSERT", words[upper.index("INSERT") + 2]
    if verb == "INSERT":
        return verb, words[2]
    if verb == "UPDATE":
        return verb, words[1]
    depth = 0  # the statement's own FROM, not a subquery's
    for word, following in itertools.pairwise(words):
        if depth == 0 and word.upper() == "FROM":
            return verb, following
        depth += word.count("(") - word.count(")")
    raise AssertionError(f"no FROM in {statement}")


@pytest.fixture
def recorded(connection: Connection) -> Iterator[tuple[list[str], list[int]]]:
    """Every statement the app sends (savepoints aside), and every database transaction
    a session began (a session that commits without having touched the database
    begins none)."""
    statements: list[str] = []
    transactions: list[int] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            statements.append(statement)

    def began(*_args: Any) -> None:
        transactions.append(1)

    event.listen(connection, "before_cursor_execute", before)
    event.listen(Session, "after_begin", began)
    try:
        yield statements, transactions
    finally:
        event.remove(connection, "before_cursor_execute", before)
        event.remove(Session, "after_begin", began)


def test_a_paid_top_up_is_a_few_statements_in_two_transactions(
    client: FlaskClient,
    stripe_http: responses.RequestsMock,
    stub: StripeStub,
    recorded: tuple[list[str], list[int]],
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client), paid_credits="5")["wallet"]["id"]
    statements, transactions = recorded
    statements.clear()
    transactions.clear()

    response = top_up(client, wallet_id, paid_credits="10")
    postgres = client.application.extensions["db"].engine.dialect.name == "postgresql"

    assert response.status_code == 201, response.json
    assert [_shape(statement) for statement in statements] == [
        # phase 1: the wallet's lock, the pending entry, the purchase (which brings back
        # the customer's Stripe id: no read of the customer)
        ("SELECT", "wallets"),
        ("INSERT", "wallet_transactions"),
        ("INSERT", "purchases"),
        # its `wallet_transaction.created` event (gateway.events): the payload's rows as
        # the API shows them (the entry with its purchase, its wallet, customer's id,
        # pending credits and whether it has rules, in one SELECT), then the wallet's
        # sequence and the event
        # row (one statement on PostgreSQL, a CTE)
        ("SELECT", "wallet_transactions"),
        *([] if postgres else [("UPDATE", "wallets")]),
        ("INSERT", "events"),
        # phase 3: the wallet's lock, the purchase taken to `open` with its invoice
        ("SELECT", "wallets"),
        ("UPDATE", "purchases"),
    ], statements
    assert len(transactions) == 2
    # The answer needed nothing more: the entry, its invoice block, all in hand.
    [transaction] = response.json["wallet_transactions"]
    assert transaction["status"] == "pending"
    assert transaction["invoice"]["status"] == "open"
    assert transaction["invoice"]["total_cents"] == 1000


def test_a_customers_first_purchase_reads_it_to_create_its_stripe_customer(
    client: FlaskClient, stripe_http: responses.RequestsMock, stub: StripeStub
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]

    response = top_up(client, wallet_id, paid_credits="10")

    assert response.status_code == 201, response.json
    [customer] = stub.customers.values()
    [invoice] = stub.invoices.values()
    assert invoice["customer"] == customer["id"]


def test_a_request_key_already_held_refuses_the_purchase_and_keeps_the_transaction(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"][
        "id"
    ]
    with app.app_context():
        session = get_session()
        wallet = ledger.lock_wallet(session, wallet_id)
        scope = RequestScope("principal:key", utcnow() + timedelta(hours=1))
        PurchaseBatch(scope).open(session, wallet, Decimal("10"), utcnow(), created_by=SYSTEM)

        with pytest.raises(IdempotencyKeyInProgress):
            PurchaseBatch(scope).open(session, wallet, Decimal("10"), utcnow(), created_by=SYSTEM)

        # No error reached the database: the transaction goes on.
        assert session.execute(text("SELECT 1")).scalar_one() == 1
        session.commit()

    held = db_session.execute(
        select(func.count()).where(Purchase.request_key == "principal:key:purchase:0")
    ).scalar_one()
    assert held == 1


def test_one_request_opens_at_most_the_purchases_a_retry_looks_for(
    app: Flask, client: FlaskClient, db_session: Session
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"][
        "id"
    ]
    with app.app_context():
        session = get_session()
        wallet = ledger.lock_wallet(session, wallet_id)
        batch = PurchaseBatch(RequestScope("principal:many", utcnow() + timedelta(hours=1)))
        for _ in range(MAX_PURCHASES_PER_REQUEST):
            batch.open(session, wallet, Decimal("10"), utcnow(), created_by=SYSTEM)

        with pytest.raises(RuntimeError, match="at most"):
            batch.open(session, wallet, Decimal("10"), utcnow(), created_by=SYSTEM)
        session.commit()

    opened = db_session.execute(
        select(func.count()).where(Purchase.request_key.like("principal:many:purchase:%"))
    ).scalar_one()
    assert opened == MAX_PURCHASES_PER_REQUEST


def elsewhere(connection: Connection, work: Callable[[Session], Any]) -> None:
    """`work` done and committed by another session (another request's, say)."""
    with Session(bind=connection, join_transaction_mode="create_savepoint") as session:
        work(session)
        session.commit()


def test_the_answer_shows_the_wallet_as_it_is_once_the_invoice_is_stored(
    client: FlaskClient,
    connection: Connection,
    stripe_mock: responses.RequestsMock,
    stub: StripeStub,
) -> None:
    def grant(invoice: dict[str, Any]) -> None:
        wallet_id = invoice["metadata"]["gateway_wallet_id"]
        elsewhere(
            connection,
            lambda session: wallets.top_up(
                session,
                wallet_id,
                granted=Decimal("3"),
                paid=None,
                now=utcnow(),
                created_by=SYSTEM,
            ),
        )

    during_finalize(stripe_mock, stub, grant)
    customer = subscribed_customer(client)

    response = post(
        client,
        "/wallets",
        wallet_body(customer, paid_credits="20"),
    )

    assert response.status_code == 201, response.json
    assert response.json["wallet"]["credits_balance"] == "3.00000"
    [purchased] = response.json["wallet_transactions"]
    assert purchased["status"] == "pending"
    assert purchased["invoice"]["status"] == "open"


def test_a_wallet_ended_while_stripe_made_the_invoice_has_it_voided_by_the_purchase(
    client: FlaskClient,
    connection: Connection,
    db_session: Session,
    stripe_mock: responses.RequestsMock,
    stub: StripeStub,
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"][
        "id"
    ]
    # The wallet ends while the invoice is being made, and nothing voids an invoice
    # Stripe's search does not show yet: the purchase stays flagged.
    stub.search_delay = 30.0
    during_finalize(
        stripe_mock,
        stub,
        lambda _invoice: elsewhere(
            connection,
            lambda session: wallets.terminate_wallet(
                session, wallet_id, utcnow(), created_by=SYSTEM
            ),
        ),
    )

    response = top_up(client, wallet_id, paid_credits="10")

    assert response.status_code == 201, response.json
    [transaction] = response.json["wallet_transactions"]
    assert transaction["status"] == EntryStatus.FAILED
    purchase = only_purchase(db_session)
    assert purchase.status == PurchaseStatus.FAILED
    assert purchase.failure_code == "wallet_ended"
    # Phase 3 stored the invoice on the failed purchase, saw the flag, and voided it.
    [invoice] = stub.invoices.values()
    assert purchase.provider_invoice_id == invoice["id"]
    assert invoice["status"] == "void"
    assert purchase.provider_void_pending is False
    stored_entry = db_session.get_one(
        WalletTransaction, purchase.transaction_id, populate_existing=True
    )
    assert stored_entry.status == EntryStatus.FAILED
