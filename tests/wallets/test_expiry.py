"""The expiry sweep (`gateway expire-wallets`) and expired wallets the sweep has not reached."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.db import get_db
from gateway.expiry import expire_wallets
from gateway.ledger import ledger_balance
from gateway.models import Wallet, WalletTransaction
from tests.support.api import assert_error, create_wallet, get, post, put, subscribed_customer
from tests.support.clock import in_days, past
from tests.support.ledger import set_expiration

pytestmark = pytest.mark.settings(STRIPE_SECRET_KEY="")


def wallet_expiring(client: FlaskClient, granted: str | None = "10") -> str:
    extra = {"granted_credits": granted} if granted else {}
    body = create_wallet(client, subscribed_customer(client), expiration_at=in_days(30), **extra)
    return body["wallet"]["id"]  # type: ignore[no-any-return]


def voided_entries(db_session: Session, wallet_id: str) -> list[WalletTransaction]:
    db_session.expire_all()
    return list(
        db_session.execute(
            select(WalletTransaction).where(
                WalletTransaction.wallet_id == wallet_id,
                WalletTransaction.transaction_status == "voided",
            )
        ).scalars()
    )


def test_sweep_terminates_expired_wallets_and_voids_at_the_expiration(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session
) -> None:
    expired_id = wallet_expiring(client, granted="10")
    not_yet_id = wallet_expiring(client, granted="5")
    forever_id = create_wallet(client, subscribed_customer(client), granted_credits="1")["wallet"][
        "id"
    ]
    expired_at = past(hours=3)
    set_expiration(db_session, expired_id, expired_at)

    result = runner.invoke(args=["expire-wallets"])
    assert result.exit_code == 0, result.output
    assert "expired 1 wallet(s)" in result.output

    ended = get(client, f"/wallets/{expired_id}").json["wallet"]
    assert ended["status"] == "terminated"
    assert ended["credits_balance"] == "0.00000"
    assert ended["terminated_at"] == expired_at.isoformat().replace("+00:00", "Z")
    [voided] = voided_entries(db_session, expired_id)
    assert voided.transaction_type == "outbound"
    assert voided.status == "settled"
    assert voided.credit_amount == Decimal("10")
    assert voided.created_at == expired_at
    assert voided.settled_at == expired_at
    assert ledger_balance(db_session, expired_id) == 0

    for untouched in (not_yet_id, forever_id):
        assert get(client, f"/wallets/{untouched}").json["wallet"]["status"] == "active"
        assert voided_entries(db_session, untouched) == []


def test_sweep_runs_in_batches_and_is_idempotent(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session
) -> None:
    ids = [wallet_expiring(client, granted="1") for _ in range(5)]
    for offset, wallet_id in enumerate(ids):
        set_expiration(db_session, wallet_id, past(hours=offset + 1))

    first = runner.invoke(args=["expire-wallets", "--batch-size", "2"])
    assert first.exit_code == 0, first.output
    assert "expired 5 wallet(s) in 3 batch(es)" in first.output
    for wallet_id in ids:
        assert len(voided_entries(db_session, wallet_id)) == 1

    second = runner.invoke(args=["expire-wallets", "--batch-size", "2"])
    assert second.exit_code == 0, second.output
    assert "expired 0 wallet(s) in 0 batch(es)" in second.output
    for wallet_id in ids:
        assert len(voided_entries(db_session, wallet_id)) == 1


@pytest.mark.settings(EXPIRY_BATCH_SIZE=1)  # with the module's STRIPE_SECRET_KEY
class TestConfiguredBatchSize:
    def test_batch_size_defaults_to_the_setting(
        self, runner: FlaskCliRunner, client: FlaskClient, db_session: Session
    ) -> None:
        ids = [wallet_expiring(client) for _ in range(2)]
        for wallet_id in ids:
            set_expiration(db_session, wallet_id, past(hours=1))
        result = runner.invoke(args=["expire-wallets"])
        assert result.exit_code == 0, result.output
        assert "expired 2 wallet(s) in 2 batch(es)" in result.output


@pytest.mark.parametrize("size", ["0", "-1", "x"])
def test_batch_size_is_validated(runner: FlaskCliRunner, size: str) -> None:
    result = runner.invoke(args=["expire-wallets", "--batch-size", size])
    assert result.exit_code == 2


def test_an_expired_wallet_without_balance_ends_without_an_entry(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session
) -> None:
    wallet_id = wallet_expiring(client, granted=None)
    set_expiration(db_session, wallet_id, past(hours=1))
    result = runner.invoke(args=["expire-wallets"])
    assert result.exit_code == 0, result.output
    assert "expired 1 wallet(s)" in result.output
    assert get(client, f"/wallets/{wallet_id}").json["wallet"]["status"] == "terminated"
    assert voided_entries(db_session, wallet_id) == []


def test_expired_but_unswept_wallet_refuses_top_ups_and_updates(
    client: FlaskClient, db_session: Session
) -> None:
    wallet_id = wallet_expiring(client, granted="2")
    set_expiration(db_session, wallet_id, past(hours=1))

    top_up = post(
        client,
        "/wallet_transactions",
        {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "1"}},
    )
    body = assert_error(top_up, 422, "wallet_is_terminated")
    assert body["error_details"] == {"wallet": ["expired"]}
    assert "expired" in body["message"]

    for change in ({"name": "still mine"}, {"expiration_at": in_days(10)}, {"expiration_at": None}):
        body = assert_error(
            put(client, f"/wallets/{wallet_id}", {"wallet": change}), 422, "wallet_is_terminated"
        )
        assert body["error_details"] == {"wallet": ["expired"]}

    stored = db_session.get(Wallet, wallet_id)
    assert stored is not None
    db_session.refresh(stored)
    assert stored.credits_balance == Decimal("2")  # the sweep records the loss, not a refusal
    assert voided_entries(db_session, wallet_id) == []


def test_a_wallet_expiring_exactly_now_is_expired(client: FlaskClient, db_session: Session) -> None:
    wallet_id = wallet_expiring(client)
    set_expiration(db_session, wallet_id, datetime.now(UTC))
    top_up = post(
        client,
        "/wallet_transactions",
        {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "1"}},
    )
    assert_error(top_up, 422, "wallet_is_terminated")


def test_removing_the_expiration_keeps_the_wallet_out_of_the_sweep(
    runner: FlaskCliRunner, client: FlaskClient, db_session: Session
) -> None:
    wallet_id = wallet_expiring(client)
    assert (
        put(client, f"/wallets/{wallet_id}", {"wallet": {"expiration_at": None}}).status_code == 200
    )
    result = runner.invoke(args=["expire-wallets"])
    assert result.exit_code == 0, result.output
    assert "expired 0 wallet(s)" in result.output
    assert get(client, f"/wallets/{wallet_id}").json["wallet"]["status"] == "active"


@pytest.mark.postgres
def test_parallel_sweeps_expire_each_wallet_exactly_once(committed_app: Flask) -> None:
    """Two hosts sweeping at once share the work (SKIP LOCKED): one voided entry each."""
    client = committed_app.test_client()
    ids = [wallet_expiring(client, granted="3") for _ in range(24)]
    with committed_app.app_context():
        db = get_db()
        session = db.session()
        session.execute(
            update(Wallet).where(Wallet.id.in_(ids)).values(expiration_at=past(hours=1))
        )
        session.commit()
        session.close()

        barrier = threading.Barrier(2)
        results: list[int] = []
        errors: list[BaseException] = []

        def sweep() -> None:
            try:
                barrier.wait(timeout=10)
                now = datetime.now(UTC)
                results.append(expire_wallets(db, now=now, batch_size=3, provider=None).expired)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=sweep) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert sum(results) == len(ids)

        session = db.session()
        voided_per_wallet = dict(
            session.execute(
                select(WalletTransaction.wallet_id, func.count())
                .where(WalletTransaction.transaction_status == "voided")
                .group_by(WalletTransaction.wallet_id)
            ).all()
        )
        assert voided_per_wallet == dict.fromkeys(ids, 1)
        statuses = session.execute(
            select(Wallet.status, func.count()).where(Wallet.id.in_(ids)).group_by(Wallet.status)
        ).all()
        assert statuses == [("terminated", len(ids))]
        session.close()
