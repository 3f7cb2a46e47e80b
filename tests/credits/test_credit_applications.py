"""POST /api/v1/credit_applications: credits off the subtotal, before tax, once per invoice."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import ledger
from gateway.db import utcnow
from gateway.models import CreditApplication, Wallet, WalletTransaction
from tests.support.api import (
    apply,
    assert_error,
    create_customer,
    create_wallet,
    delete,
    get,
    post,
    subscribed_customer,
    unique,
)


def wallet_with(
    client: FlaskClient, credits: str, rate: str = "1.00", currency: str = "USD"
) -> tuple[str, str]:
    """A subscribed customer whose wallet holds `credits` granted credits: (customer, wallet id)."""
    customer = subscribed_customer(client, currency=currency)
    fields: dict[str, Any] = {"rate_amount": rate}
    if credits != "0":
        fields["granted_credits"] = credits
    wallet = create_wallet(client, customer, **fields)["wallet"]
    return customer, wallet["id"]


def wallet_json(client: FlaskClient, wallet_id: str) -> dict[str, Any]:
    return get(client, f"/wallets/{wallet_id}").json["wallet"]  # type: ignore[no-any-return,index]


def invoiced_entries(client: FlaskClient, wallet_id: str) -> list[dict[str, Any]]:
    response = get(
        client, f"/wallets/{wallet_id}/wallet_transactions", transaction_status="invoiced"
    )
    return response.json["wallet_transactions"]  # type: ignore[no-any-return,index]


def test_credits_come_off_the_subtotal_before_tax(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "10", rate="5.00")  # worth 5000 cents

    response = apply(client, customer, 8000, tax_rate="20")

    assert response.status_code == 201, response.json
    result = response.json["credit_application"]
    assert result["status"] == "applied"
    assert result["reason"] is None
    assert result["wallet_id"] == wallet_id
    assert result["amount_cents"] == 5000
    assert result["credit_amount"] == "10.00000"
    assert result["subtotal_amount_cents"] == 8000
    assert result["subtotal_after_credits_amount_cents"] == 3000
    assert result["taxes_amount_cents"] == 600  # 20 % of what remains, not of 8000
    assert result["total_amount_cents"] == 3600
    assert result["tax_rate"] == "20"


def test_applied_credits_leave_a_settled_invoiced_entry_and_move_consumed(
    client: FlaskClient,
) -> None:
    customer, wallet_id = wallet_with(client, "10", rate="5.00")

    result = apply(client, customer, 1234).json["credit_application"]

    # 1234 cents at 5.00 a credit: 2.468 credits.
    assert result["amount_cents"] == 1234
    assert result["credit_amount"] == "2.46800"
    wallet = wallet_json(client, wallet_id)
    assert wallet["credits_balance"] == "7.53200"
    assert wallet["balance_cents"] == 3766
    assert wallet["consumed_credits"] == "2.46800"
    assert wallet["consumed_amount_cents"] == 1234
    [entry] = invoiced_entries(client, wallet_id)
    assert entry["transaction_type"] == "outbound"
    assert entry["status"] == "settled"
    assert entry["credit_amount"] == "2.46800"
    assert entry["amount"] == "12.34"


def test_deduction_never_exceeds_the_subtotal(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "100")

    result = apply(client, customer, 250).json["credit_application"]

    assert result["amount_cents"] == 250
    assert result["subtotal_after_credits_amount_cents"] == 0
    assert result["total_amount_cents"] == 0
    assert wallet_json(client, wallet_id)["credits_balance"] == "97.50000"


def test_consuming_the_whole_balance_leaves_no_dust(client: FlaskClient) -> None:
    # 3 credits at 0.333 are worth 99.9 cents: 99 can be deducted, and the whole
    # balance goes with them rather than leaving 0.9 of a cent behind.
    customer, wallet_id = wallet_with(client, "3", rate="0.333")

    result = apply(client, customer, 150).json["credit_application"]

    assert result["amount_cents"] == 99
    assert result["credit_amount"] == "3.00000"
    wallet = wallet_json(client, wallet_id)
    assert wallet["credits_balance"] == "0.00000"
    assert wallet["balance_cents"] == 0
    assert wallet["consumed_amount_cents"] == 99


def test_zero_decimal_currency(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "3", rate="100", currency="JPY")

    result = apply(client, customer, 250, currency="JPY", tax_rate="10").json["credit_application"]

    assert result["amount_cents"] == 250
    assert result["credit_amount"] == "2.50000"
    assert result["taxes_amount_cents"] == 0
    assert wallet_json(client, wallet_id)["balance_cents"] == 50


@pytest.mark.parametrize("invoice_type", ["add_on", "one_off", "credit"])
def test_add_on_one_off_and_credit_invoices_consume_nothing(
    client: FlaskClient, invoice_type: str
) -> None:
    customer, wallet_id = wallet_with(client, "10")

    response = apply(client, customer, 500, invoice_type=invoice_type, tax_rate="20")

    assert response.status_code == 201
    result = response.json["credit_application"]
    assert result["status"] == "not_applicable"
    assert result["reason"] == "invoice_type_not_eligible"
    assert result["amount_cents"] == 0
    assert result["credit_amount"] == "0.00000"
    assert result["subtotal_after_credits_amount_cents"] == 500
    assert result["taxes_amount_cents"] == 100  # on the full subtotal
    assert result["total_amount_cents"] == 600
    assert wallet_json(client, wallet_id)["credits_balance"] == "10.00000"
    assert invoiced_entries(client, wallet_id) == []


def test_usage_invoices_use_credits(client: FlaskClient) -> None:
    customer, _ = wallet_with(client, "10")
    result = apply(client, customer, 300, invoice_type="usage").json["credit_application"]
    assert result["status"] == "applied"
    assert result["amount_cents"] == 300


def test_customer_without_wallet_is_not_applicable(client: FlaskClient) -> None:
    customer = subscribed_customer(client)

    result = apply(client, customer, 500, tax_rate="5.5").json["credit_application"]

    assert result["status"] == "not_applicable"
    assert result["reason"] == "no_wallet"
    assert result["wallet_id"] is None
    assert result["taxes_amount_cents"] == 28  # 27.5 rounds half up
    assert result["total_amount_cents"] == 528


def test_terminated_wallet_is_not_applicable(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "10")
    assert delete(client, f"/wallets/{wallet_id}").status_code == 200

    result = apply(client, customer, 500).json["credit_application"]

    assert result["status"] == "not_applicable"
    assert result["reason"] == "wallet_terminated"
    assert result["wallet_id"] == wallet_id


def test_expired_wallet_is_not_applicable_before_the_sweep(
    client: FlaskClient, db_session: Session
) -> None:
    expires = (utcnow() + timedelta(days=1)).isoformat()
    customer = subscribed_customer(client)
    wallet_id = create_wallet(client, customer, granted_credits="10", expiration_at=expires)[
        "wallet"
    ]["id"]
    # Time passes: the expiration is behind us, the sweep has not run.
    db_session.execute(
        update(Wallet)
        .where(Wallet.id == wallet_id)
        .values(expiration_at=utcnow() - timedelta(minutes=1))
    )
    db_session.flush()

    result = apply(client, customer, 500).json["credit_application"]

    assert result["status"] == "not_applicable"
    assert result["reason"] == "wallet_expired"
    assert wallet_json(client, wallet_id)["credits_balance"] == "10.00000"


def test_zero_balance_is_not_applicable(client: FlaskClient) -> None:
    customer, _ = wallet_with(client, "0")
    result = apply(client, customer, 500).json["credit_application"]
    assert result["status"] == "not_applicable"
    assert result["reason"] == "zero_balance"


def test_balance_worth_less_than_a_cent_is_not_applicable(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "0.00001")  # a thousandth of a cent
    result = apply(client, customer, 500).json["credit_application"]
    assert result["status"] == "not_applicable"
    assert result["reason"] == "balance_below_minor_unit"
    assert wallet_json(client, wallet_id)["credits_balance"] == "0.00001"


def test_zero_subtotal_consumes_nothing(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "10")
    result = apply(client, customer, 0).json["credit_application"]
    assert result["status"] == "not_applicable"
    assert result["reason"] == "zero_subtotal"
    assert invoiced_entries(client, wallet_id) == []


def test_currency_other_than_the_wallets_is_refused_and_nothing_stored(
    client: FlaskClient,
) -> None:
    customer, wallet_id = wallet_with(client, "10")
    invoice = unique("inv")

    response = apply(client, customer, 500, invoice=invoice, currency="EUR")

    body = assert_error(response, 422, "currency_mismatch")
    assert "currency" in body["error_details"]
    assert wallet_json(client, wallet_id)["credits_balance"] == "10.00000"
    # Nothing was stored: the corrected invoice is answered normally.
    assert apply(client, customer, 500, invoice=invoice).status_code == 201


def test_unknown_customer_is_not_found(client: FlaskClient) -> None:
    assert_error(apply(client, "nobody", 500), 404, "not_found")


def test_repeat_of_an_invoice_returns_the_first_answer_and_consumes_once(
    client: FlaskClient,
) -> None:
    customer, wallet_id = wallet_with(client, "10")
    invoice = unique("inv")

    first = apply(client, customer, 400, invoice=invoice, tax_rate="20")
    again = apply(client, customer, 400, invoice=invoice, tax_rate="20.000")

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.get_data() == first.get_data()
    assert wallet_json(client, wallet_id)["credits_balance"] == "6.00000"
    assert len(invoiced_entries(client, wallet_id)) == 1


def test_not_applicable_answer_stands_after_a_top_up(client: FlaskClient) -> None:
    customer, wallet_id = wallet_with(client, "0")
    invoice = unique("inv")
    first = apply(client, customer, 400, invoice=invoice)
    topped = post(
        client,
        "/wallet_transactions",
        {"wallet_transaction": {"wallet_id": wallet_id, "granted_credits": "10"}},
    )
    assert topped.status_code == 201

    again = apply(client, customer, 400, invoice=invoice)

    assert again.status_code == 200
    assert again.get_data() == first.get_data()
    assert wallet_json(client, wallet_id)["credits_balance"] == "10.00000"


@pytest.mark.parametrize(
    "change",
    [
        {"subtotal_amount_cents": 401},
        {"invoice_type": "usage"},
        {"tax_rate": "19"},
    ],
)
def test_repeat_of_an_invoice_with_other_values_is_refused(
    client: FlaskClient, change: dict[str, Any]
) -> None:
    customer, wallet_id = wallet_with(client, "10")
    invoice = unique("inv")
    apply(client, customer, 400, invoice=invoice, tax_rate="20")

    values: dict[str, Any] = {"tax_rate": "20", **change}
    subtotal = values.pop("subtotal_amount_cents", 400)
    response = apply(client, customer, subtotal, invoice=invoice, **values)

    body = assert_error(response, 422, "invoice_already_applied")
    assert set(change) <= set(body["error_details"])
    assert wallet_json(client, wallet_id)["credits_balance"] == "6.00000"


def test_same_invoice_for_another_customer_is_refused(client: FlaskClient) -> None:
    customer, _ = wallet_with(client, "10")
    other, other_wallet = wallet_with(client, "10")
    invoice = unique("inv")
    apply(client, customer, 400, invoice=invoice)

    response = apply(client, other, 400, invoice=invoice)

    body = assert_error(response, 422, "invoice_already_applied")
    assert wallet_json(client, other_wallet)["credits_balance"] == "10.00000"
    # Issue 12 #6: which fields differ, not the first request's customer (nor its answer).
    assert body["error_details"] == {
        "external_customer_id": ["differs from the first request for this invoice"]
    }
    assert customer not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "change",
    [{"subtotal_amount_cents": 401}, {"invoice_type": "usage"}, {"tax_rate": "19"}],
)
def test_a_refused_repeat_names_the_fields_not_the_first_values(
    client: FlaskClient, change: dict[str, Any]
) -> None:
    customer, _ = wallet_with(client, "10")
    invoice = unique("inv")
    first = apply(client, customer, 400, invoice=invoice, tax_rate="20").json
    values: dict[str, Any] = {"tax_rate": "20", **change}
    subtotal = values.pop("subtotal_amount_cents", 400)

    body = assert_error(
        apply(client, customer, subtotal, invoice=invoice, **values), 422, "invoice_already_applied"
    )

    assert body["error_details"] == {
        name: ["differs from the first request for this invoice"] for name in change
    }
    text = json.dumps(body)
    assert first["credit_application"]["id"] not in text
    for leaked in ("400", "20", "subscription"):
        assert leaked not in json.dumps(body["error_details"])


def test_successive_invoices_use_up_the_balance_and_the_ledger_agrees(
    client: FlaskClient, db_session: Session
) -> None:
    customer, wallet_id = wallet_with(client, "10", rate="0.333")  # worth 333 cents
    deducted = [
        apply(client, customer, 100).json["credit_application"]["amount_cents"] for _ in range(5)
    ]

    # Each 100 cents costs 3.00301 credits (rounded up): 0.99097 credits are left,
    # worth 32.99 cents, so the fourth invoice gets 32 and takes the rest.
    assert deducted == [100, 100, 100, 32, 0]
    wallet = db_session.get(Wallet, wallet_id)
    assert wallet is not None
    assert wallet.credits_balance == 0
    assert ledger.ledger_balance(db_session, wallet_id) == wallet.credits_balance
    assert wallet.consumed_credits == Decimal("10")
    assert wallet.consumed_amount_cents == 332
    applied = db_session.execute(
        select(CreditApplication).where(CreditApplication.wallet_id == wallet_id)
    ).scalars()
    consumed = [
        (row.credit_amount, db_session.get(WalletTransaction, row.transaction_id))
        for row in applied
        if row.transaction_id is not None
    ]
    assert len(consumed) == 4
    assert all(entry is not None and entry.credit_amount == c for c, entry in consumed)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("invoice_type", "refund"),
        ("subtotal_amount_cents", -1),
        ("subtotal_amount_cents", "500"),
        ("subtotal_amount_cents", 5.5),
        ("subtotal_amount_cents", True),
        ("tax_rate", "101"),
        ("tax_rate", "-1"),
        ("tax_rate", "NaN"),
        ("currency", "XYZ"),
        ("coupon_code", "SAVE10"),
    ],
)
def test_invalid_requests_are_refused(client: FlaskClient, field: str, value: Any) -> None:
    customer = create_customer(client)["external_id"]
    response = apply(client, customer, 500, **{field: value})
    details = assert_error(response, 422, "validation_errors")["error_details"]
    assert field in details["credit_application"]


def test_missing_fields_are_named(client: FlaskClient) -> None:
    response = post(client, "/credit_applications", {"credit_application": {}})
    details = assert_error(response, 422, "validation_errors")["error_details"]
    assert set(details["credit_application"]) == {
        "invoice_external_id",
        "external_customer_id",
        "invoice_type",
        "currency",
        "subtotal_amount_cents",
    }
