"""Wallets: create, get, list, update, terminate — the lifecycle of issue 2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.ledger import ledger_balance
from gateway.models import Wallet, WalletTransaction
from tests.support.api import (
    assert_error,
    create_customer,
    create_subscription,
    create_wallet,
    delete,
    get,
    post,
    put,
    subscribed_customer,
)
from tests.support.clock import in_days, iso
from tests.support.ledger import entries, set_expiration

# No payment provider: paid credits must be refused before anything is stored.
pytestmark = pytest.mark.settings(STRIPE_SECRET_KEY="")


def wallet_count(db_session: Session, **filters: Any) -> int:
    query = select(func.count()).select_from(Wallet).filter_by(**filters)
    return int(db_session.execute(query).scalar_one())


# --- create --------------------------------------------------------------------------


def test_create_wallet_with_granted_credits(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    expiration = in_days(30)
    body = create_wallet(
        client,
        customer,
        rate_amount="5.00",
        granted_credits="10",
        name="Prepaid",
        expiration_at=expiration,
    )
    wallet = body["wallet"]
    assert wallet["id"].startswith("wal_")
    assert wallet["external_customer_id"] == customer
    assert wallet["status"] == "active"
    assert wallet["name"] == "Prepaid"
    assert wallet["currency"] == "USD"
    assert wallet["rate_amount"] == "5.00"
    assert wallet["credits_balance"] == "10.00000"
    assert wallet["balance_cents"] == 5000
    assert wallet["consumed_credits"] == "0.00000"
    assert wallet["consumed_amount_cents"] == 0
    assert wallet["expiration_at"] == expiration
    assert wallet["terminated_at"] is None
    [entry] = body["wallet_transactions"]
    assert entry["wallet_id"] == wallet["id"]
    assert entry["transaction_type"] == "inbound"
    assert entry["transaction_status"] == "granted"
    assert entry["status"] == "settled"
    assert entry["credit_amount"] == "10.00000"
    assert entry["amount"] == "50.00"
    assert entry["settled_at"] is not None
    assert entry["invoice"] is None
    assert ledger_balance(db_session, wallet["id"]) == Decimal("10")
    assert get(client, f"/wallets/{wallet['id']}").json == {"wallet": wallet}


def test_create_wallet_without_credits_or_name(client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    body = create_wallet(client, customer)
    assert body["wallet"]["name"] is None
    assert body["wallet"]["expiration_at"] is None
    assert body["wallet"]["credits_balance"] == "0.00000"
    assert body["wallet_transactions"] == []


def test_customer_needs_an_active_subscription(client: FlaskClient) -> None:
    customer = create_customer(client)["external_id"]
    body = {"wallet": {"external_customer_id": customer, "rate_amount": "1"}}
    assert_error(post(client, "/wallets", body), 422, "no_active_subscription")
    subscription = create_subscription(client, customer)
    delete(client, f"/subscriptions/{subscription['external_id']}")
    assert_error(post(client, "/wallets", body), 422, "no_active_subscription")
    create_subscription(client, customer)
    assert post(client, "/wallets", body).status_code == 201


def test_unknown_customer_is_404(client: FlaskClient) -> None:
    response = post(
        client, "/wallets", {"wallet": {"external_customer_id": "ghost", "rate_amount": "1"}}
    )
    assert_error(response, 404, "not_found")


def test_currency_is_the_customers(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client, currency="JPY")
    refused = post(
        client,
        "/wallets",
        {"wallet": {"external_customer_id": customer, "rate_amount": "100", "currency": "USD"}},
    )
    body = assert_error(refused, 422, "currency_mismatch")
    assert body["error_details"] == {"currency": ["must be JPY"]}
    assert wallet_count(db_session) == 0
    wallet = create_wallet(client, customer, rate_amount="100", currency="jpy", granted_credits="2")
    assert wallet["wallet"]["currency"] == "JPY"
    assert wallet["wallet"]["rate_amount"] == "100"
    assert wallet["wallet"]["balance_cents"] == 200
    assert wallet["wallet_transactions"][0]["amount"] == "200"


def test_currency_defaults_to_the_customers(client: FlaskClient) -> None:
    customer = subscribed_customer(client, currency="KWD")
    wallet = create_wallet(client, customer, rate_amount="1.5", granted_credits="1")["wallet"]
    assert wallet["currency"] == "KWD"
    assert wallet["rate_amount"] == "1.500"
    assert wallet["balance_cents"] == 1500


@pytest.mark.parametrize("rate", ["0", "-1", "0.000001", "1000001"])
def test_rate_amount_must_be_positive_and_in_range(client: FlaskClient, rate: str) -> None:
    customer = subscribed_customer(client)
    response = post(
        client, "/wallets", {"wallet": {"external_customer_id": customer, "rate_amount": rate}}
    )
    body = assert_error(response, 422, "validation_errors")
    assert list(body["error_details"]["wallet"]) == ["rate_amount"]


@pytest.mark.parametrize("delta", [timedelta(seconds=-1), timedelta(days=-365), timedelta(0)])
def test_expiration_must_be_in_the_future(
    client: FlaskClient, db_session: Session, delta: timedelta
) -> None:
    customer = subscribed_customer(client)
    response = post(
        client,
        "/wallets",
        {
            "wallet": {
                "external_customer_id": customer,
                "rate_amount": "1",
                "expiration_at": iso(datetime.now(UTC) + delta),
            }
        },
    )
    body = assert_error(response, 422, "validation_errors")
    assert body["error_details"] == {"expiration_at": ["must be in the future"]}
    assert wallet_count(db_session) == 0


def test_expiration_in_another_timezone_is_stored_in_utc(client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    utc = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    in_kolkata = utc.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    wallet = create_wallet(client, customer, expiration_at=in_kolkata)["wallet"]
    assert wallet["expiration_at"] == iso(utc)


def test_one_active_wallet_per_customer(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    create_wallet(client, customer)
    response = post(
        client,
        "/wallets",
        {"wallet": {"external_customer_id": customer, "rate_amount": "2", "granted_credits": "5"}},
    )
    body = assert_error(response, 422, "wallet_already_exists")
    assert body["error_details"] == {"external_customer_id": ["already has an active wallet"]}
    assert wallet_count(db_session) == 1
    assert db_session.execute(select(func.count()).select_from(WalletTransaction)).scalar_one() == 0


def test_the_database_refuses_a_second_active_wallet(
    client: FlaskClient, db_session: Session
) -> None:
    """The partial unique index, not only the check in code, keeps one active wallet."""
    from sqlalchemy.exc import IntegrityError

    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer)["wallet"]
    stored = db_session.get(Wallet, wallet["id"])
    assert stored is not None
    second = Wallet(
        customer_id=stored.customer_id, currency="USD", rate_amount=Decimal(1), status="active"
    )
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(second)
    # A terminated wallet does not count.
    terminated = Wallet(
        customer_id=stored.customer_id, currency="USD", rate_amount=Decimal(1), status="terminated"
    )
    with db_session.begin_nested():
        db_session.add(terminated)


def test_coupons_never_apply(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    response = post(
        client,
        "/wallets",
        {"wallet": {"external_customer_id": customer, "rate_amount": "1", "coupon": "HALF"}},
    )
    body = assert_error(response, 422, "coupons_not_applicable")
    assert "coupon" in body["error_details"]
    assert wallet_count(db_session) == 0


# --- paid credits without a payment provider -------------------------------------------


def test_paid_credits_without_a_provider_store_nothing(
    client: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(client)
    response = post(
        client,
        "/wallets",
        {
            "wallet": {
                "external_customer_id": customer,
                "rate_amount": "1",
                "paid_credits": "10",
                "granted_credits": "5",
            }
        },
    )
    body = assert_error(response, 503, "payment_provider_unavailable")
    assert "STRIPE_SECRET_KEY" in body["message"]
    assert wallet_count(db_session) == 0
    assert db_session.execute(select(func.count()).select_from(WalletTransaction)).scalar_one() == 0


def test_paid_top_up_without_a_provider_stores_nothing(
    client: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer, granted_credits="1")["wallet"]
    response = post(
        client,
        "/wallet_transactions",
        {
            "wallet_transaction": {
                "wallet_id": wallet["id"],
                "paid_credits": "3",
                "granted_credits": "2",
            }
        },
    )
    body = assert_error(response, 503, "payment_provider_unavailable")
    assert "STRIPE_SECRET_KEY" in body["message"]
    assert len(entries(db_session, wallet["id"])) == 1
    assert get(client, f"/wallets/{wallet['id']}").json["wallet"]["credits_balance"] == "1.00000"  # type: ignore[index]


# --- get and list --------------------------------------------------------------------


def test_unknown_wallet_is_404(client: FlaskClient) -> None:
    assert_error(get(client, "/wallets/wal_nope"), 404, "not_found")


def test_list_wallets_pages_newest_first(client: FlaskClient) -> None:
    ids = [create_wallet(client, subscribed_customer(client))["wallet"]["id"] for _ in range(5)]
    first = get(client, "/wallets", per_page=2).json
    assert first is not None
    assert [w["id"] for w in first["wallets"]] == ids[::-1][:2]
    assert first["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 3,
        "total_count": 5,
    }
    last = get(client, "/wallets", per_page=2, page=3).json
    assert last is not None
    assert [w["id"] for w in last["wallets"]] == [ids[0]]
    assert last["meta"] == {
        "current_page": 3,
        "next_page": None,
        "prev_page": 2,
        "total_pages": 3,
        "total_count": 5,
    }
    beyond = get(client, "/wallets", per_page=2, page=9).json
    assert beyond is not None
    assert beyond["wallets"] == []
    assert beyond["meta"]["total_count"] == 5
    default = get(client, "/wallets").json
    assert default is not None
    assert len(default["wallets"]) == 5
    assert default["meta"]["total_pages"] == 1


def test_list_wallets_filters(client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    old = create_wallet(client, customer)["wallet"]
    delete(client, f"/wallets/{old['id']}")
    new = create_wallet(client, customer)["wallet"]
    create_wallet(client, subscribed_customer(client))

    mine = get(client, "/wallets", external_customer_id=customer).json
    assert mine is not None
    assert [w["id"] for w in mine["wallets"]] == [new["id"], old["id"]]
    assert mine["meta"]["total_count"] == 2
    active = get(client, "/wallets", external_customer_id=customer, status="active").json
    assert active is not None
    assert [w["id"] for w in active["wallets"]] == [new["id"]]
    terminated = get(client, "/wallets", status="terminated").json
    assert terminated is not None
    assert [w["id"] for w in terminated["wallets"]] == [old["id"]]
    nobody = get(client, "/wallets", external_customer_id="ghost").json
    assert nobody == {
        "wallets": [],
        "meta": {
            "current_page": 1,
            "next_page": None,
            "prev_page": None,
            "total_pages": 1,
            "total_count": 0,
        },
    }


# --- update --------------------------------------------------------------------------


def test_update_sets_changes_and_removes_name_and_expiration(client: FlaskClient) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    path = f"/wallets/{wallet['id']}"
    first, later = in_days(10), in_days(20)

    body = put(client, path, {"wallet": {"name": "Main", "expiration_at": first}}).json
    assert body is not None
    assert body["wallet"]["name"] == "Main"
    assert body["wallet"]["expiration_at"] == first

    body = put(client, path, {"wallet": {"expiration_at": later}}).json
    assert body is not None
    assert body["wallet"]["expiration_at"] == later
    assert body["wallet"]["name"] == "Main"  # untouched

    body = put(client, path, {"wallet": {"name": "Renamed"}}).json
    assert body is not None
    assert body["wallet"]["name"] == "Renamed"
    assert body["wallet"]["expiration_at"] == later

    body = put(client, path, {"wallet": {"expiration_at": None, "name": None}}).json
    assert body is not None
    assert body["wallet"]["expiration_at"] is None
    assert body["wallet"]["name"] is None
    assert get(client, path).json == body

    unchanged = put(client, path, {"wallet": {}})
    assert unchanged.status_code == 200
    assert unchanged.json == body


def test_update_refuses_a_past_expiration(client: FlaskClient) -> None:
    wallet = create_wallet(client, subscribed_customer(client), expiration_at=in_days(30))["wallet"]
    response = put(
        client,
        f"/wallets/{wallet['id']}",
        {"wallet": {"expiration_at": iso(datetime.now(UTC) - timedelta(minutes=1))}},
    )
    assert_error(response, 422, "validation_errors")
    assert get(client, f"/wallets/{wallet['id']}").json == {"wallet": wallet}


def test_update_refuses_fields_it_does_not_change(client: FlaskClient) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    for field, value in (("rate_amount", "2"), ("status", "terminated"), ("currency", "EUR")):
        response = put(client, f"/wallets/{wallet['id']}", {"wallet": {field: value}})
        body = assert_error(response, 422, "validation_errors")
        assert body["error_details"] == {"wallet": {field: ["Unknown field."]}}


def test_update_unknown_wallet_is_404(client: FlaskClient) -> None:
    assert_error(put(client, "/wallets/wal_nope", {"wallet": {"name": "x"}}), 404, "not_found")


# --- terminate -----------------------------------------------------------------------


def test_terminate_voids_the_remaining_credits(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer, rate_amount="2", granted_credits="7.5")["wallet"]
    response = delete(client, f"/wallets/{wallet['id']}")
    assert response.status_code == 200
    ended = response.json["wallet"]  # type: ignore[index]
    assert ended["status"] == "terminated"
    assert ended["terminated_at"] is not None
    assert ended["credits_balance"] == "0.00000"
    assert ended["balance_cents"] == 0

    _granted, voided = entries(db_session, wallet["id"])
    assert (voided.transaction_type, voided.transaction_status, voided.status) == (
        "outbound",
        "voided",
        "settled",
    )
    assert voided.credit_amount == Decimal("7.5")
    assert voided.amount == Decimal("15")
    assert iso(voided.created_at) == ended["terminated_at"]
    assert ledger_balance(db_session, wallet["id"]) == 0

    listed = get(
        client, f"/wallets/{wallet['id']}/wallet_transactions", transaction_status="voided"
    ).json
    assert listed is not None
    [entry] = listed["wallet_transactions"]
    assert entry["credit_amount"] == "7.50000"
    assert entry["amount"] == "15.00"


def test_terminate_is_irreversible_and_repeats_the_same_answer(
    client: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(client)
    wallet = create_wallet(client, customer, granted_credits="3", expiration_at=in_days(30))[
        "wallet"
    ]
    path = f"/wallets/{wallet['id']}"
    first = delete(client, path)
    second = delete(client, path)
    assert second.status_code == 200
    assert second.get_data() == first.get_data()
    assert len(entries(db_session, wallet["id"])) == 2  # granted + one voided, not two

    for body in (
        {"wallet": {"name": "again"}},
        {"wallet": {"expiration_at": None}},
        {"wallet": {"expiration_at": in_days(30)}},
    ):
        refused = assert_error(put(client, path, body), 422, "wallet_is_terminated")
        assert refused["error_details"] == {"wallet": ["terminated"]}
    top_up = post(
        client,
        "/wallet_transactions",
        {"wallet_transaction": {"wallet_id": wallet["id"], "granted_credits": "1"}},
    )
    assert_error(top_up, 422, "wallet_is_terminated")
    assert get(client, path).json == first.json
    assert len(entries(db_session, wallet["id"])) == 2


def test_terminating_an_empty_wallet_writes_no_entry(
    client: FlaskClient, db_session: Session
) -> None:
    wallet = create_wallet(client, subscribed_customer(client))["wallet"]
    assert delete(client, f"/wallets/{wallet['id']}").status_code == 200
    assert entries(db_session, wallet["id"]) == []


def test_a_new_wallet_after_termination(client: FlaskClient, db_session: Session) -> None:
    customer = subscribed_customer(client)
    old = create_wallet(client, customer, granted_credits="1")["wallet"]
    delete(client, f"/wallets/{old['id']}")
    new = create_wallet(client, customer, granted_credits="2")["wallet"]
    assert new["id"] != old["id"]
    assert new["credits_balance"] == "2.00000"
    assert get(client, f"/wallets/{old['id']}").json["wallet"]["status"] == "terminated"  # type: ignore[index]
    assert wallet_count(db_session, status="active") == 1


def test_terminate_unknown_wallet_is_404(client: FlaskClient) -> None:
    assert_error(delete(client, "/wallets/wal_nope"), 404, "not_found")


# --- expiry seen through the API -------------------------------------------------------


def test_an_expired_wallet_is_replaced_on_create(client: FlaskClient, db_session: Session) -> None:
    """Creating a wallet records the expiry of the old one the sweep has not reached."""
    customer = subscribed_customer(client)
    old = create_wallet(client, customer, granted_credits="4", expiration_at=in_days(30))["wallet"]
    expired_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    set_expiration(db_session, old["id"], expired_at)

    new = create_wallet(client, customer)["wallet"]
    assert new["status"] == "active"
    ended = get(client, f"/wallets/{old['id']}").json["wallet"]  # type: ignore[index]
    assert ended["status"] == "terminated"
    assert ended["terminated_at"] == iso(expired_at)
    assert ended["credits_balance"] == "0.00000"
    [voided] = [e for e in entries(db_session, old["id"]) if e.transaction_status == "voided"]
    assert voided.credit_amount == Decimal("4")
    assert voided.created_at == expired_at


def test_deleting_an_expired_wallet_ends_it_at_its_expiration(
    client: FlaskClient, db_session: Session
) -> None:
    wallet = create_wallet(
        client, subscribed_customer(client), granted_credits="1", expiration_at=in_days(30)
    )["wallet"]
    expired_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    set_expiration(db_session, wallet["id"], expired_at)
    ended = delete(client, f"/wallets/{wallet['id']}").json["wallet"]  # type: ignore[index]
    assert ended["terminated_at"] == iso(expired_at)
    [voided] = [e for e in entries(db_session, wallet["id"]) if e.transaction_status == "voided"]
    assert voided.created_at == expired_at
