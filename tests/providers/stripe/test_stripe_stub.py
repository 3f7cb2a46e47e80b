"""The Stripe stub keeps Stripe's rules, so tests built on it mean something."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from gateway.providers.stripe.sandbox import StripeStub, decode_form
from tests.support.stripe import SECRET_KEY

AUTH = {"Authorization": f"Bearer {SECRET_KEY}"}


def call(
    stub: StripeStub,
    method: str,
    path: str,
    params: dict[str, Any] | list[tuple[str, str]] | None = None,
    **headers: str,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    encoded = urlencode(params or {})
    status, answer_headers, body = stub.handle(
        method,
        path,
        encoded if method == "GET" else "",
        {**AUTH, **headers},
        encoded.encode() if method == "POST" else b"",
    )
    return status, answer_headers, json.loads(body)


def new_invoice(stub: StripeStub, **params: Any) -> dict[str, Any]:
    if "customer" not in params:
        _, _, customer = call(stub, "POST", "/v1/customers")
        params["customer"] = customer["id"]
    status, _, invoice = call(stub, "POST", "/v1/invoices", params)
    assert status == 200, invoice
    return invoice


def test_form_decoding_follows_stripes_bracket_notation() -> None:
    pairs = [
        ("customer", "cus_1"),
        ("metadata[a]", "1"),
        ("metadata[b]", "2"),
        ("default_tax_rates[0]", "txr_a"),
        ("default_tax_rates[1]", "txr_b"),
        ("automatic_tax[enabled]", "true"),
        ("discounts", ""),
        ("lines[0][price_data][unit_amount]", "5"),
    ]
    assert decode_form(pairs) == {
        "customer": "cus_1",
        "metadata": {"a": "1", "b": "2"},
        "default_tax_rates": ["txr_a", "txr_b"],
        "automatic_tax": {"enabled": "true"},
        "discounts": "",
        "lines": [{"price_data": {"unit_amount": "5"}}],
    }


def test_a_key_is_required() -> None:
    stub = StripeStub()
    status, _, body = stub.handle("GET", "/v1/invoices", "", {}, b"")
    assert status == 401
    assert body and json.loads(body)["error"]["type"] == "invalid_request_error"
    exact = StripeStub(api_key="sk_test_exact")
    assert call(exact, "GET", "/v1/invoices")[0] == 401
    assert call(exact, "GET", "/v1/invoices", Authorization="Bearer sk_test_exact")[0] == 200


def test_unknown_parameters_are_refused_like_stripe_does() -> None:
    stub = StripeStub()
    _, _, customer = call(stub, "POST", "/v1/customers")

    status, _, body = call(
        stub, "POST", "/v1/invoices", {"customer": customer["id"], "colection_method": "x"}
    )

    assert status == 400
    assert body["error"]["param"] == "colection_method"
    assert "unknown parameter" in body["error"]["message"]


def test_idempotency_keys_replay_or_refuse() -> None:
    stub = StripeStub()
    key = {"Idempotency-Key": "k1"}

    first = call(stub, "POST", "/v1/customers", {"name": "A"}, **key)
    again = call(stub, "POST", "/v1/customers", {"name": "A"}, **key)
    other = call(stub, "POST", "/v1/customers", {"name": "B"}, **key)

    assert again[2]["id"] == first[2]["id"]
    assert again[1]["Idempotent-Replayed"] == "true"
    assert len(stub.customers) == 1
    assert other[0] == 400 and other[2]["error"]["type"] == "idempotency_error"


def test_a_failed_answer_is_not_remembered_but_a_lost_one_is() -> None:
    stub = StripeStub()
    stub.fail_next("POST", "/v1/customers", status=500)
    assert call(stub, "POST", "/v1/customers", **{"Idempotency-Key": "k1"})[0] == 500
    assert not stub.customers  # failed before acting
    stub.fail_next("POST", "/v1/customers", status=500, after=True)
    assert call(stub, "POST", "/v1/customers", **{"Idempotency-Key": "k2"})[0] == 500
    [made] = stub.customers  # acted, answer lost
    _, _, replayed = call(stub, "POST", "/v1/customers", **{"Idempotency-Key": "k2"})
    assert replayed["id"] == made


def test_invoice_lifecycle_and_its_rules() -> None:
    stub = StripeStub(tax_rates={"txr_1": Decimal("10")})
    invoice = new_invoice(stub, currency="eur", **{"default_tax_rates[0]": "txr_1"})
    assert invoice["status"] == "draft" and invoice["hosted_invoice_url"] is None
    status, _, item = call(
        stub,
        "POST",
        "/v1/invoiceitems",
        {"customer": invoice["customer"], "invoice": invoice["id"], "amount": 1000},
    )
    assert status == 200 and item["currency"] == "eur"

    _, _, final = call(stub, "POST", f"/v1/invoices/{invoice['id']}/finalize")
    assert final["status"] == "open"
    assert (final["subtotal"], final["total"], final["amount_due"]) == (1000, 1100, 1100)
    assert final["total_taxes"][0]["amount"] == 100
    # Finalized: no more lines, no second finalization; drafts cannot be voided.
    assert (
        call(
            stub,
            "POST",
            "/v1/invoiceitems",
            {"customer": invoice["customer"], "invoice": invoice["id"], "amount": 5},
        )[0]
        == 400
    )
    assert call(stub, "POST", f"/v1/invoices/{invoice['id']}/finalize")[0] == 400
    draft = new_invoice(stub)
    assert call(stub, "POST", f"/v1/invoices/{draft['id']}/void")[0] == 400

    paid = stub.mark_paid(invoice["id"], amount_paid=500)
    assert paid["status"] == "open" and paid["amount_remaining"] == 600
    assert stub.mark_paid(invoice["id"], amount_paid=1100)["status"] == "paid"
    event = stub.event(invoice["id"], "invoice.paid")
    assert event["object"] == "event" and event["data"]["object"]["status"] == "paid"


def test_an_empty_invoice_is_paid_when_finalized() -> None:
    stub = StripeStub()
    invoice = new_invoice(stub)
    _, _, final = call(stub, "POST", f"/v1/invoices/{invoice['id']}/finalize")
    assert final["status"] == "paid"


def test_send_invoice_needs_days_until_due() -> None:
    stub = StripeStub()
    _, _, customer = call(stub, "POST", "/v1/customers")
    params = {"customer": customer["id"], "collection_method": "send_invoice"}
    assert call(stub, "POST", "/v1/invoices", params)[0] == 400
    assert call(stub, "POST", "/v1/invoices", {**params, "days_until_due": 3})[0] == 200


def test_lists_page_newest_first_with_filters() -> None:
    stub = StripeStub()
    made = [new_invoice(stub)["id"] for _ in range(5)]
    call(stub, "POST", f"/v1/invoices/{made[1]}/finalize")

    _, _, first = call(stub, "GET", "/v1/invoices", {"limit": 2})
    _, _, second = call(stub, "GET", "/v1/invoices", {"limit": 2, "starting_after": made[3]})
    _, _, before = call(stub, "GET", "/v1/invoices", {"limit": 2, "ending_before": made[1]})
    _, _, opened = call(stub, "GET", "/v1/invoices", {"status": "paid"})
    _, _, none = call(stub, "GET", "/v1/invoices", {"created[gt]": 2**40})

    assert [row["id"] for row in first["data"]] == [made[4], made[3]]
    assert first["has_more"] is True
    assert [row["id"] for row in second["data"]] == [made[2], made[1]]
    assert [row["id"] for row in before["data"]] == [made[3], made[2]]
    assert [row["id"] for row in opened["data"]] == [made[1]]  # empty: paid at once
    assert none["data"] == []
    assert call(stub, "GET", "/v1/invoices", {"status": "settled"})[0] == 400
    assert call(stub, "GET", "/v1/invoices", {"limit": 101})[0] == 400


def paid_invoice(stub: StripeStub, amount: int = 1000) -> str:
    invoice = new_invoice(stub)
    call(
        stub,
        "POST",
        "/v1/invoiceitems",
        {"customer": invoice["customer"], "invoice": invoice["id"], "amount": amount},
    )
    call(stub, "POST", f"/v1/invoices/{invoice['id']}/finalize")
    stub.mark_paid(invoice["id"])
    return str(invoice["id"])


def test_refunds_and_invoice_payments_map_a_refund_to_its_invoice() -> None:
    stub = StripeStub()
    first, second = paid_invoice(stub), paid_invoice(stub, 2000)
    credit_note = stub.refund(first, amount=300)  # a credit note: a refund object too
    direct = stub.refund_payment(second, amount=500)  # on the payment: the invoice shows nothing
    elsewhere = stub.refund_payment_intent("pi_elsewhere", 700)
    pi_first, pi_second = stub.payment_intent_of(first), stub.payment_intent_of(second)

    _, _, listed = call(stub, "GET", "/v1/refunds", {"limit": 2})
    _, _, rest = call(
        stub, "GET", "/v1/refunds", {"limit": 2, "starting_after": listed["data"][-1]["id"]}
    )
    _, _, none = call(stub, "GET", "/v1/refunds", {"created[gte]": 2**40})
    _, _, by_payment = call(
        stub,
        "GET",
        "/v1/invoice_payments",
        {"payment[type]": "payment_intent", "payment[payment_intent]": pi_second},
    )
    _, _, by_invoice = call(stub, "GET", "/v1/invoice_payments", {"invoice": first})

    assert [row["id"] for row in listed["data"]] == [elsewhere["id"], direct["id"]]
    assert listed["has_more"] is True
    assert [row["id"] for row in rest["data"]] == [credit_note_refund_id(stub, pi_first)]
    assert rest["has_more"] is False
    assert none["data"] == []
    assert stub.invoices[first]["post_payment_credit_notes_amount"] == 300
    assert credit_note["status"] == "paid"
    assert stub.invoices[second].get("post_payment_credit_notes_amount", 0) == 0
    assert (direct["amount"], direct["payment_intent"], direct["status"]) == (
        500,
        pi_second,
        "succeeded",
    )
    [payment] = by_payment["data"]
    assert payment["invoice"] == second
    assert payment["payment"] == {"type": "payment_intent", "payment_intent": pi_second}
    assert [row["payment"]["payment_intent"] for row in by_invoice["data"]] == [pi_first]
    assert call(stub, "GET", "/v1/refunds", {"invoice": first})[0] == 400
    assert call(stub, "GET", "/v1/invoice_payments", {"payment[payment_intent]": "pi_x"})[0] == 400
    assert call(stub, "GET", "/v1/refunds", {"starting_after": "re_unknown"})[0] == 404


def credit_note_refund_id(stub: StripeStub, payment_intent: str | None) -> str:
    [refund] = [r for r in stub.refunds.values() if r["payment_intent"] == payment_intent]
    return str(refund["id"])


def test_search_understands_stripes_query_language() -> None:
    stub = StripeStub()
    a = new_invoice(stub, **{"metadata[p]": "a", "currency": "usd"})
    b = new_invoice(stub, **{"metadata[p]": "b", "currency": "eur"})
    c = new_invoice(stub, **{"metadata[p]": "c'q", "currency": "usd"})

    def search(query: str, **params: Any) -> list[str]:
        status, _, body = call(stub, "GET", "/v1/invoices/search", {"query": query, **params})
        assert status == 200, body
        return [row["id"] for row in body["data"]]

    assert search("metadata['p']:'a'") == [a["id"]]
    assert search('metadata["p"]:"b"') == [b["id"]]
    assert search("metadata['p']:'c\\'q'") == [c["id"]]
    assert search("currency:'usd' AND -metadata['p']:'a'") == [c["id"]]
    assert search("metadata['p']:'a' OR metadata['p']:'b'") == [b["id"], a["id"]]
    assert search(f"created>={a['created']} status:'draft'") == [c["id"], b["id"], a["id"]]
    assert search("metadata['missing']:null") == [c["id"], b["id"], a["id"]]
    assert search("-metadata['p']:null") == [c["id"], b["id"], a["id"]]
    # Pages, with a next_page token.
    _, _, page = call(stub, "GET", "/v1/invoices/search", {"query": "status:'draft'", "limit": 2})
    assert page["has_more"] and page["next_page"]
    _, _, rest = call(
        stub,
        "GET",
        "/v1/invoices/search",
        {"query": "status:'draft'", "limit": 2, "page": page["next_page"]},
    )
    assert [row["id"] for row in rest["data"]] == [a["id"]] and rest["next_page"] is None
    assert call(stub, "GET", "/v1/invoices/search", {"query": "a:'1' AND b:'2' OR c:'3'"})[0] == 400
    assert call(stub, "GET", "/v1/invoices/search", {"query": "???"})[0] == 400


def test_served_over_http_with_latency_gates_and_dropped_connections() -> None:
    with StripeStub(latency=0.05) as stub:
        answer = requests.post(f"{stub.url}/v1/customers", headers=AUTH, timeout=5)
        assert answer.status_code == 200 and answer.json()["object"] == "customer"
        assert answer.headers["Request-Id"].startswith("req_")

        stub.fail_next("GET", "/v1/invoices", status=None)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{stub.url}/v1/invoices", headers=AUTH, timeout=5)

        gate = stub.hold("POST", "/v1/customers")
        results: list[int] = []
        caller = threading.Thread(
            target=lambda: results.append(
                requests.post(f"{stub.url}/v1/customers", headers=AUTH, timeout=10).status_code
            )
        )
        caller.start()
        assert gate.arrived.wait(5)
        assert results == []
        gate.release()
        caller.join(5)
        assert results == [200]
