"""Idempotency-Key on every POST of /api/v1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from gateway import create_app
from gateway.api.auth import principal_of
from gateway.db import utcnow
from gateway.models import Customer, IdempotencyKey
from tests.support import idempotency_probe
from tests.support.api import (
    application_body,
    assert_error,
    create_customer,
    create_wallet,
    get,
    subscribed_customer,
    unique,
    wallet_body,
)
from tests.support.config import API_KEY, AUTH, TEST_SETTINGS


@pytest.fixture
def app(connection: Connection, settings_overrides: dict[str, Any]) -> Iterator[Flask]:
    idempotency_probe.reset()
    yield idempotency_probe.install(
        create_app({**TEST_SETTINGS, **settings_overrides}, bind=connection)
    )
    idempotency_probe.reset()


def keyed_post(
    client: FlaskClient,
    path: str,
    body: Any,
    key: str | None,
    auth: dict[str, str] = AUTH,
) -> TestResponse:
    headers = dict(auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"/api/v1{path}", json=body, headers=headers)


def probe(client: FlaskClient, key: str | None, note: str = "note") -> TestResponse:
    return keyed_post(client, "/_probe/acts", {"note": note}, key)


def probe_customers(db_session: Session) -> int:
    return db_session.execute(
        select(func.count()).select_from(Customer).where(Customer.external_id.like("note-%"))
    ).scalar_one()


def top_up_body(wallet_id: str, credits: str = "10") -> dict[str, Any]:
    return {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": credits}}


def balance(client: FlaskClient, wallet_id: str) -> str:
    return get(client, f"/wallets/{wallet_id}").json["wallet"]["credits_balance"]  # type: ignore[index,no-any-return]


# --- replays ---------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer_and_does_nothing_more(
    client: FlaskClient,
) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("key")

    first = keyed_post(client, "/wallet_transactions", top_up_body(wallet_id), key)
    again = keyed_post(client, "/wallet_transactions", top_up_body(wallet_id), key)

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert balance(client, wallet_id) == "10.00000"


def test_without_a_key_each_post_acts(client: FlaskClient) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    keyed_post(client, "/wallet_transactions", top_up_body(wallet_id), None)
    keyed_post(client, "/wallet_transactions", top_up_body(wallet_id), None)
    assert balance(client, wallet_id) == "20.00000"


@pytest.mark.parametrize(
    "path",
    ["/customers", "/subscriptions", "/wallets", "/wallet_transactions", "/credit_applications"],
)
def test_every_post_of_the_api_replays(client: FlaskClient, db_session: Session, path: str) -> None:
    customer = subscribed_customer(client)
    wallet_id = create_wallet(client, customer, granted_credits="10")["wallet"]["id"]
    other = subscribed_customer(client)
    bodies: dict[str, Any] = {
        "/customers": {"customer": {"external_id": unique("cust"), "currency": "USD"}},
        "/subscriptions": {
            "subscription": {
                "external_id": unique("sub"),
                "external_customer_id": customer,
                "plan_code": "pro",
            }
        },
        "/wallets": wallet_body(other),
        "/wallet_transactions": top_up_body(wallet_id),
        "/credit_applications": application_body(customer, 300),
    }
    key = unique("key")

    first = keyed_post(client, path, bodies[path], key)
    again = keyed_post(client, path, bodies[path], key)

    assert first.status_code == 201, first.json
    # Without the key the repeat would be an upsert (200), a duplicate (422) or a
    # second top-up or application; with it, the first answer comes back as it was.
    assert (again.status_code, again.get_data()) == (201, first.get_data())
    assert again.headers["Idempotent-Replayed"] == "true"
    stored = db_session.execute(
        select(IdempotencyKey).where(IdempotencyKey.key == key)
    ).scalar_one()
    assert stored.response_status == 201
    assert stored.path == f"/api/v1{path}"


def test_key_order_and_spacing_of_the_body_do_not_matter(client: FlaskClient) -> None:
    key = unique("key")
    external_id = unique("cust")
    headers = {**AUTH, "Idempotency-Key": key, "Content-Type": "application/json"}
    first = client.post(
        "/api/v1/customers",
        data=json.dumps({"customer": {"external_id": external_id, "currency": "USD"}}),
        headers=headers,
    )
    again = client.post(
        "/api/v1/customers",
        data=json.dumps({"customer": {"currency": "USD", "external_id": external_id}}, indent=3),
        headers=headers,
    )
    assert first.status_code == 201
    assert again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"


# --- reuse of a key for another request ----------------------------------------------


def test_same_key_with_another_body_is_refused(client: FlaskClient) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("key")
    keyed_post(client, "/wallet_transactions", top_up_body(wallet_id, "10"), key)

    response = keyed_post(client, "/wallet_transactions", top_up_body(wallet_id, "11"), key)

    body = assert_error(response, 422, "idempotency_key_reused")
    assert "Idempotency-Key" in body["error_details"]
    assert balance(client, wallet_id) == "10.00000"


def test_same_key_on_another_path_is_refused(client: FlaskClient) -> None:
    key = unique("key")
    customer = create_customer(client)["external_id"]
    keyed_post(
        client, "/customers", {"customer": {"external_id": customer, "currency": "USD"}}, key
    )

    response = keyed_post(
        client,
        "/subscriptions",
        {"subscription": {"external_id": "s", "external_customer_id": customer, "plan_code": "p"}},
        key,
    )

    body = assert_error(response, 422, "idempotency_key_reused")
    assert "/api/v1/customers" in body["message"]


def test_keys_belong_to_the_api_key_that_sent_them(client: FlaskClient) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("key")
    other_api_key = {"Authorization": "Bearer test-key-2"}

    keyed_post(client, "/wallet_transactions", top_up_body(wallet_id, "10"), key)
    second = keyed_post(
        client, "/wallet_transactions", top_up_body(wallet_id, "5"), key, auth=other_api_key
    )

    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers
    assert balance(client, wallet_id) == "15.00000"


# --- which answers are kept -------------------------------------------------------


def test_a_refusal_is_kept_and_replayed(client: FlaskClient) -> None:
    customer = create_customer(client)["external_id"]  # no subscription yet
    body = wallet_body(customer)
    key = unique("key")

    first = keyed_post(client, "/wallets", body, key)
    assert_error(first, 422, "no_active_subscription")
    # The situation changes, but this key's answer was given.
    subscribed = keyed_post(
        client,
        "/subscriptions",
        {"subscription": {"external_id": unique("sub"), "external_customer_id": customer,
                          "plan_code": "pro"}},
        None,
    )  # fmt: skip
    assert subscribed.status_code == 201

    again = keyed_post(client, "/wallets", body, key)

    assert (again.status_code, again.get_data()) == (422, first.get_data())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert keyed_post(client, "/wallets", body, unique("key")).status_code == 201


def test_a_refusal_undoes_the_views_work_and_keeps_the_answer(
    client: FlaskClient, db_session: Session
) -> None:
    idempotency_probe.BEHAVIOUR.extend(["refuse", "ok"])
    key = unique("key")

    first = probe(client, key)
    again = probe(client, key)

    assert_error(first, 422, "validation_errors")
    assert again.get_data() == first.get_data()
    assert probe_customers(db_session) == 0


def test_an_invalid_body_is_not_kept_so_the_key_can_be_used_for_the_fixed_request(
    client: FlaskClient,
) -> None:
    key = unique("key")
    invalid = keyed_post(client, "/customers", {"customer": {"currency": "USD"}}, key)
    assert_error(invalid, 422, "validation_errors")

    fixed = keyed_post(
        client, "/customers", {"customer": {"external_id": unique("c"), "currency": "USD"}}, key
    )

    assert fixed.status_code == 201


def test_a_server_error_is_not_kept_and_a_retry_runs_again(
    client: FlaskClient, db_session: Session
) -> None:
    idempotency_probe.BEHAVIOUR.extend(["fail_503", "ok"])
    key = unique("key")

    failed = probe(client, key)
    retried = probe(client, key)

    assert_error(failed, 503, "payment_provider_unavailable")
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.json["resumed"] is False  # the failed attempt left nothing behind
    assert probe_customers(db_session) == 1
    assert probe(client, key).get_data() == retried.get_data()


def test_an_unexpected_error_is_not_kept(client: FlaskClient, db_session: Session) -> None:
    idempotency_probe.BEHAVIOUR.extend(["crash", "ok"])
    key = unique("key")

    assert_error(probe(client, key), 500, "internal_error")
    assert probe(client, key).status_code == 201
    assert probe_customers(db_session) == 1


# --- views that commit mid-way (purchases) ------------------------------------------


def test_a_503_after_a_midway_commit_releases_the_key_and_the_retry_resumes(
    client: FlaskClient, db_session: Session
) -> None:
    idempotency_probe.BEHAVIOUR.extend(["commit_then_fail_503", "ok"])
    key = unique("key")

    failed = probe(client, key)
    assert_error(failed, 503, "payment_provider_unavailable")
    # What was committed before the failure stays; the key does not.
    assert probe_customers(db_session) == 1
    assert (
        db_session.execute(
            select(IdempotencyKey).where(IdempotencyKey.key == key)
        ).scalar_one_or_none()
        is None
    )

    retried = probe(client, key)

    assert retried.status_code == 201
    assert retried.json["resumed"] is True  # found its earlier work through the scope
    assert probe_customers(db_session) == 1
    assert probe(client, key).get_data() == retried.get_data()


def test_a_refusal_after_a_midway_commit_is_kept(client: FlaskClient, db_session: Session) -> None:
    idempotency_probe.BEHAVIOUR.extend(["commit_then_refuse", "ok"])
    key = unique("key")

    first = probe(client, key)

    assert_error(first, 422, "validation_errors")
    assert probe(client, key).get_data() == first.get_data()
    assert probe_customers(db_session) == 1


def test_a_claim_left_by_a_midway_commit_answers_in_progress_until_its_lease_ends(
    client: FlaskClient, db_session: Session
) -> None:
    key = unique("key")
    first = probe(client, key)
    assert first.status_code == 201
    # Put the key back in the state a mid-way commit leaves while its request runs.
    in_progress = update(IdempotencyKey).where(IdempotencyKey.key == key)
    db_session.execute(
        in_progress.values(
            response_status=None,
            response_body=None,
            locked_until=utcnow() + timedelta(minutes=1),
        )
    )
    db_session.flush()

    assert_error(probe(client, key), 409, "idempotency_key_in_progress")

    # The request died without answering; once its lease is over a retry takes over.
    db_session.execute(in_progress.values(locked_until=utcnow() - timedelta(seconds=1)))
    db_session.flush()
    retried = probe(client, key)

    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.json["resumed"] is True
    assert probe_customers(db_session) == 1
    assert probe(client, key).get_data() == retried.get_data()


def _key_statements(connection: Connection, send: Any) -> list[str]:
    """The first words of each statement on idempotency_keys while `send()` runs."""
    statements: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "idempotency_keys" in statement:
            statements.append(" ".join(statement.split()[:3]))

    event.listen(connection, "before_cursor_execute", before)
    try:
        send()
    finally:
        event.remove(connection, "before_cursor_execute", before)
    return statements


def test_a_new_key_is_one_insert_and_its_answer_one_update(
    client: FlaskClient, connection: Connection
) -> None:
    key = unique("key")
    answers: list[TestResponse] = []

    first = _key_statements(connection, lambda: answers.append(probe(client, key)))
    again = _key_statements(connection, lambda: answers.append(probe(client, key)))

    assert [answer.status_code for answer in answers] == [201, 201]
    # Claimed by an INSERT that cannot fail (nothing to read first, no savepoint), the
    # answer written by one UPDATE that holds only while the claim is this request's.
    assert first == ["INSERT INTO idempotency_keys", "UPDATE idempotency_keys SET"]
    # A replay: the INSERT finds the key, which is read (locked) for its answer.
    assert again == [
        "INSERT INTO idempotency_keys",
        "SELECT idempotency_keys.id, idempotency_keys.principal,",
    ]
    assert answers[1].get_data() == answers[0].get_data()


def test_the_view_sees_the_key_scope(client: FlaskClient) -> None:
    key = unique("key")
    assert probe(client, key).json["scope"] == f"{principal_of(API_KEY)}:{key}"
    assert probe(client, None).json["scope"] is None


# --- the key itself --------------------------------------------------------------


def test_a_key_of_255_characters_is_accepted_and_256_refused(client: FlaskClient) -> None:
    assert probe(client, "k" * 255).status_code == 201
    response = probe(client, "k" * 256)
    body = assert_error(response, 422, "validation_errors")
    assert "Idempotency-Key" in body["error_details"]


def test_an_empty_key_is_refused(client: FlaskClient) -> None:
    assert_error(probe(client, "  "), 422, "validation_errors")


def test_the_api_key_is_checked_before_the_idempotency_key(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/_probe/acts",
        json={"note": "x"},
        headers={"Authorization": "Bearer wrong", "Idempotency-Key": "k"},
    )
    assert_error(response, 401, "unauthorized")


# --- expiry ----------------------------------------------------------------------


def test_an_expired_key_is_as_if_never_used(client: FlaskClient, db_session: Session) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    key = unique("key")
    keyed_post(client, "/wallet_transactions", top_up_body(wallet_id, "10"), key)
    db_session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    db_session.flush()

    response = keyed_post(client, "/wallet_transactions", top_up_body(wallet_id, "5"), key)

    assert response.status_code == 201
    assert balance(client, wallet_id) == "15.00000"


@pytest.mark.parametrize("settings_overrides", [{"IDEMPOTENCY_KEY_TTL_HOURS": 3}])
def test_keys_expire_after_the_configured_time(client: FlaskClient, db_session: Session) -> None:
    key = unique("key")
    before = utcnow()
    probe(client, key)
    row = db_session.execute(select(IdempotencyKey).where(IdempotencyKey.key == key)).scalar_one()
    assert before + timedelta(hours=3) <= row.expires_at <= utcnow() + timedelta(hours=3)


def test_purge_deletes_expired_keys_only(
    client: FlaskClient, runner: FlaskCliRunner, db_session: Session
) -> None:
    keys = [unique("key") for _ in range(5)]
    for key in keys:
        probe(client, key)
    db_session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key.in_(keys[:3]))
        .values(expires_at=utcnow() - timedelta(minutes=1))
    )
    db_session.flush()

    result = runner.invoke(args=["idempotency", "purge", "--batch-size", "2"])

    assert result.exit_code == 0, result.output
    assert "purged 3 expired idempotency key(s)" in result.output
    left = db_session.execute(
        select(IdempotencyKey.key).where(IdempotencyKey.key.in_(keys))
    ).scalars()
    assert sorted(left) == sorted(keys[3:])


def test_get_requests_ignore_the_header(client: FlaskClient, db_session: Session) -> None:
    customer = create_customer(client)["external_id"]
    response = client.get(
        f"/api/v1/customers/{customer}", headers={**AUTH, "Idempotency-Key": "x" * 300}
    )
    assert response.status_code == 200
    assert db_session.execute(select(func.count()).select_from(IdempotencyKey)).scalar_one() == 0


def test_openapi_lists_the_idempotency_errors_on_posts(client: FlaskClient) -> None:
    document = get(client, "/openapi.json").json
    post_op = document["paths"]["/api/v1/wallet_transactions"]["post"]
    assert "409" in post_op["responses"]
    assert "idempotency_key_reused" in post_op["responses"]["422"]["description"]
    assert "/api/v1/_probe/acts" not in document["paths"]
