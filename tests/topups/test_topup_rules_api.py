"""Recurring transaction rules on POST and PUT /wallets: shapes, replacement, bad input."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.db import utcnow
from gateway.models import RecurringTransactionRule, Wallet
from tests.support.api import (
    assert_error,
    create_wallet,
    delete,
    get,
    post,
    put,
    subscribed_customer,
    wallet_body,
)

THRESHOLD = {"trigger": "threshold", "threshold_credits": "10", "paid_credits": "50"}
MONTHLY = {
    "trigger": "interval",
    "interval": "monthly",
    "started_at": "2027-01-31T09:00:00Z",
    "method": "target",
    "target_credits": "100",
}


def rules_of(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["trigger"]: rule for rule in answer["wallet"]["recurring_transaction_rules"]}


def test_wallet_created_with_rules_answers_them_with_id_and_status(client: FlaskClient) -> None:
    customer = subscribed_customer(client)

    answer = create_wallet(
        client,
        customer,
        granted_credits="20",
        low_balance_threshold_credits="5",
        recurring_transaction_rules=[THRESHOLD, MONTHLY],
    )

    wallet = answer["wallet"]
    assert wallet["pending_credits"] == "0.00000"
    assert wallet["low_balance_threshold_credits"] == "5.00000"
    rules = rules_of(answer)
    assert rules["threshold"] == {
        "id": rules["threshold"]["id"],
        "trigger": "threshold",
        "method": "fixed",
        "status": "active",
        "paused_reason": None,
        "threshold_credits": "10.00000",
        "interval": None,
        "started_at": None,
        "paid_credits": "50.00000",
        "granted_credits": None,
        "target_credits": None,
        "created_at": rules["threshold"]["created_at"],
    }
    assert rules["threshold"]["id"].startswith("rtr_")
    assert rules["interval"]["interval"] == "monthly"
    assert rules["interval"]["started_at"] == "2027-01-31T09:00:00Z"
    assert rules["interval"]["target_credits"] == "100.00000"
    assert rules["interval"]["status"] == "active"
    assert answer["wallet_transactions"][0]["source"] == "manual"
    assert get(client, f"/wallets/{wallet['id']}").json == {"wallet": wallet}


def test_put_replaces_the_rules_keeps_ids_per_trigger_and_empty_list_removes(
    client: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(client)
    created = create_wallet(client, customer, recurring_transaction_rules=[THRESHOLD, MONTHLY])
    wallet_id = created["wallet"]["id"]
    first = rules_of(created)

    changed = put(
        client,
        f"/wallets/{wallet_id}",
        {"wallet": {"recurring_transaction_rules": [{**THRESHOLD, "paid_credits": "75"}]}},
    )

    assert changed.status_code == 200, changed.json
    rules = rules_of(changed.json)
    assert set(rules) == {"threshold"}
    assert rules["threshold"]["id"] == first["threshold"]["id"]
    assert rules["threshold"]["paid_credits"] == "75.00000"

    renamed = put(client, f"/wallets/{wallet_id}", {"wallet": {"name": "main"}})
    assert rules_of(renamed.json) == rules  # absent: unchanged

    removed = put(client, f"/wallets/{wallet_id}", {"wallet": {"recurring_transaction_rules": []}})
    assert removed.json["wallet"]["recurring_transaction_rules"] == []
    count = select(func.count()).select_from(RecurringTransactionRule)
    assert db_session.execute(count).scalar_one() == 0


def test_put_sets_and_removes_the_low_balance_threshold(client: FlaskClient) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]

    set_ = put(client, f"/wallets/{wallet_id}", {"wallet": {"low_balance_threshold_credits": "3"}})
    assert set_.json["wallet"]["low_balance_threshold_credits"] == "3.00000"
    cleared = put(
        client, f"/wallets/{wallet_id}", {"wallet": {"low_balance_threshold_credits": None}}
    )
    assert cleared.json["wallet"]["low_balance_threshold_credits"] is None


BAD_RULES = [
    pytest.param(
        [THRESHOLD, {**THRESHOLD, "threshold_credits": "20"}],
        "validation_errors",
        ("1", "trigger"),
        id="two-rules-one-trigger",
    ),
    pytest.param(
        [{"trigger": "threshold", "paid_credits": "50"}],
        "validation_errors",
        ("0", "threshold_credits"),
        id="threshold-without-threshold_credits",
    ),
    pytest.param(
        [{"trigger": "threshold", "threshold_credits": "10", "method": "target"}],
        "validation_errors",
        ("0", "target_credits"),
        id="target-without-target_credits",
    ),
    pytest.param(
        [{**THRESHOLD, "paid_credits": None, "method": "target", "target_credits": "10"}],
        "validation_errors",
        ("0", "target_credits"),
        id="target-at-the-threshold",
    ),
    pytest.param(
        [{"trigger": "interval", "paid_credits": "50"}],
        "validation_errors",
        ("0", "interval"),
        id="interval-without-interval",
    ),
    pytest.param(
        [{"trigger": "threshold", "threshold_credits": "10"}],
        "validation_errors",
        ("0", "paid_credits"),
        id="fixed-without-credits",
    ),
    pytest.param(
        [{**THRESHOLD, "interval": "weekly"}],
        "validation_errors",
        ("0", "interval"),
        id="interval-on-a-threshold-rule",
    ),
    pytest.param(
        [{**THRESHOLD, "paid_credits": "0.40"}],
        "amount_too_small",
        ("0", "paid_credits"),
        id="paid-below-the-minimum-charge",
    ),
    pytest.param(
        [{**THRESHOLD, "paid_credits": None, "method": "target", "target_credits": "10.2"}],
        "amount_too_small",
        ("0", "target_credits"),
        id="target-step-below-the-minimum-charge",
    ),
]


def _details_name(body: dict[str, Any], path: tuple[str, str]) -> None:
    details = body["error_details"]
    rules = (
        details.get("recurring_transaction_rules")
        or details["wallet"]["recurring_transaction_rules"]
    )
    assert path[1] in rules[path[0]], body


@pytest.mark.parametrize(("rules", "code", "path"), BAD_RULES)
def test_bad_rules_on_creation_are_refused_and_nothing_is_stored(
    client: FlaskClient,
    db_session: Session,
    rules: list[dict[str, Any]],
    code: str,
    path: tuple[str, str],
) -> None:
    customer = subscribed_customer(client)

    response = post(client, "/wallets", wallet_body(customer, recurring_transaction_rules=rules))

    _details_name(assert_error(response, 422, code), path)
    assert db_session.execute(select(func.count()).select_from(Wallet)).scalar_one() == 0


@pytest.mark.parametrize(("rules", "code", "path"), BAD_RULES)
def test_bad_rules_on_update_are_refused_and_the_old_ones_stay(
    client: FlaskClient, rules: list[dict[str, Any]], code: str, path: tuple[str, str]
) -> None:
    created = create_wallet(
        client, subscribed_customer(client), recurring_transaction_rules=[MONTHLY]
    )
    wallet_id = created["wallet"]["id"]

    response = put(
        client,
        f"/wallets/{wallet_id}",
        {"wallet": {"name": "renamed", "recurring_transaction_rules": rules}},
    )

    _details_name(assert_error(response, 422, code), path)
    after = get(client, f"/wallets/{wallet_id}").json
    assert after == {"wallet": created["wallet"]}


def test_unknown_interval_and_unknown_rule_fields_are_validation_errors(
    client: FlaskClient,
) -> None:
    customer = subscribed_customer(client)
    for rule, field in (
        ({**MONTHLY, "interval": "daily"}, "interval"),
        ({**THRESHOLD, "lago_id": "x"}, "lago_id"),
    ):
        response = post(
            client, "/wallets", wallet_body(customer, recurring_transaction_rules=[rule])
        )
        body = assert_error(response, 422, "validation_errors")
        assert field in body["error_details"]["wallet"]["recurring_transaction_rules"]["0"]


def test_rules_on_a_terminated_wallet_are_refused(client: FlaskClient) -> None:
    wallet_id = create_wallet(client, subscribed_customer(client))["wallet"]["id"]
    delete(client, f"/wallets/{wallet_id}")

    response = put(
        client, f"/wallets/{wallet_id}", {"wallet": {"recurring_transaction_rules": [THRESHOLD]}}
    )

    assert_error(response, 422, "wallet_is_terminated")


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_SECRET_KEY": ""}])
def test_rules_that_buy_need_a_payment_provider(client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    granted_only = {"trigger": "threshold", "threshold_credits": "1", "granted_credits": "5"}

    refused = post(
        client, "/wallets", wallet_body(customer, recurring_transaction_rules=[THRESHOLD])
    )
    allowed = post(
        client, "/wallets", wallet_body(customer, recurring_transaction_rules=[granted_only])
    )

    assert_error(refused, 503, "payment_provider_unavailable")
    assert allowed.status_code == 201, allowed.json


def test_an_interval_rule_started_in_the_past_next_buys_on_its_next_date(
    client: FlaskClient, db_session: Session
) -> None:
    started = utcnow() - timedelta(days=10)
    weekly = {"trigger": "interval", "interval": "weekly", "started_at": started.isoformat(),
              "granted_credits": "1"}  # fmt: skip
    created = create_wallet(
        client, subscribed_customer(client), recurring_transaction_rules=[weekly]
    )

    rule = db_session.get_one(RecurringTransactionRule, rules_of(created)["interval"]["id"])
    assert rule.next_run_at is not None
    assert rule.next_run_at - started == timedelta(weeks=2)
