"""Only genuine, fresh Stripe deliveries of our mode get past POST /webhooks/stripe.

Every refusal answers 400 in the contract's error shape and stores nothing; the
signatures are real HMAC-SHA256 signatures computed the way Stripe computes them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.support.api import assert_error
from tests.support.webhooks import (
    PRIMARY_SECRET,
    SECONDARY_SECRET,
    WEBHOOK_PATH,
    encode,
    invoice_event,
    make_purchase,
    post_signed,
    sign,
    state_of,
    stored_events,
    stripe_event,
)


def _deliver(client: FlaskClient, body: bytes, signature: str | None) -> Any:
    headers = {} if signature is None else {"Stripe-Signature": signature}
    return client.post(WEBHOOK_PATH, data=body, headers=headers, content_type="application/json")


def _event() -> dict[str, Any]:
    return stripe_event("customer.created", {"id": "cus_1", "object": "customer"})


def _now() -> int:
    return int(time.time())


def _v1(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# Each case: a body and the Stripe-Signature header sent with it (None: no header).
Attack = Callable[[bytes], tuple[bytes, str | None]]
SIGNATURE_ATTACKS: dict[str, Attack] = {
    "missing header": lambda body: (body, None),
    "empty header": lambda body: (body, ""),
    "garbage header": lambda body: (body, "garbage"),
    "no timestamp": lambda body: (body, f"v1={_v1(body, PRIMARY_SECRET, _now())}"),
    "timestamp not a number": lambda body: (
        body,
        f"t=soon,v1={_v1(body, PRIMARY_SECRET, _now())}",
    ),
    "no v1 signature": lambda body: (body, f"t={_now()}"),
    "only a v0 signature": lambda body: (
        body,
        f"t={_now()},v0={_v1(body, PRIMARY_SECRET, _now())}",
    ),
    "signature not hex": lambda body: (body, f"t={_now()},v1=not-a-signature"),
    "wrong secret": lambda body: (body, sign(body, "whsec_someone_else")),
    "tampered body": lambda body: (
        body.replace(b'"cus_1"', b'"cus_2"'),
        sign(body),
    ),
    "body with a byte appended": lambda body: (body + b" ", sign(body)),
    "signature of another timestamp": lambda body: (
        body,
        f"t={_now()},v1={_v1(body, PRIMARY_SECRET, _now() - 1000)}",
    ),
    "timestamp older than 300 s": lambda body: (body, sign(body, timestamp=_now() - 301)),
    "timestamp more than 300 s ahead": lambda body: (body, sign(body, timestamp=_now() + 301)),
    "timestamp far in the future": lambda body: (body, sign(body, timestamp=_now() + 86_400)),
}


@pytest.mark.parametrize("attack", list(SIGNATURE_ATTACKS), ids=list(SIGNATURE_ATTACKS))
def test_bad_signatures_are_refused_and_nothing_is_stored(
    client: FlaskClient, db_session: Session, attack: str
) -> None:
    body, signature = SIGNATURE_ATTACKS[attack](encode(_event()))

    response = _deliver(client, body, signature)

    details = assert_error(response, 400, "invalid_signature")["error_details"]
    assert details["reason"] in ("missing_signature", "invalid_signature")
    text = response.get_data(as_text=True)
    assert PRIMARY_SECRET not in text and SECONDARY_SECRET not in text
    assert stored_events(db_session) == 0


def test_a_forged_paid_event_credits_nothing(client: FlaskClient, db_session: Session) -> None:
    purchase = make_purchase(db_session)
    body = encode(invoice_event(purchase, "invoice.paid"))

    response = _deliver(client, body, sign(body, "whsec_attacker"))

    assert_error(response, 400, "invalid_signature")
    assert state_of(db_session, purchase.id).balance == 0
    assert stored_events(db_session) == 0


PAYLOAD_ATTACKS: dict[str, bytes] = {
    "not JSON": b"this is not json",
    "truncated JSON": b'{"id": "evt_1", "object": "event"',
    "not UTF-8": b'{"id": "evt_\xff"}',
    "JSON array": b"[1, 2, 3]",
    "NaN literal": b'{"id": "evt_1", "object": "event", "amount": NaN}',
    "not an event": json.dumps({"id": "cus_1", "object": "customer"}).encode(),
    "event without data.object": json.dumps(
        {"id": "evt_1", "object": "event", "type": "invoice.paid", "livemode": False, "data": {}}
    ).encode(),
    "event without livemode": json.dumps(
        {"id": "evt_1", "object": "event", "type": "x.y", "data": {"object": {}}}
    ).encode(),
    "event id too long": json.dumps({**stripe_event("x.y", {}), "id": "evt_" + "x" * 300}).encode(),
}


@pytest.mark.parametrize("payload", list(PAYLOAD_ATTACKS), ids=list(PAYLOAD_ATTACKS))
def test_correctly_signed_bodies_that_are_not_stripe_events_are_refused(
    client: FlaskClient, db_session: Session, payload: str
) -> None:
    body = PAYLOAD_ATTACKS[payload]

    response = _deliver(client, body, sign(body))

    assert_error(response, 400, "invalid_webhook_payload")
    assert stored_events(db_session) == 0


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_WEBHOOK_MAX_BODY_BYTES": 4096}])
def test_an_oversized_body_is_refused_even_when_signed(
    client: FlaskClient, db_session: Session
) -> None:
    event = _event()
    event["data"]["object"]["description"] = "x" * 5000
    body = encode(event)

    response = _deliver(client, body, sign(body))

    details = assert_error(response, 400, "invalid_webhook_payload")["error_details"]
    assert details == {"reason": "invalid_payload"}
    assert "4096" in response.json["message"]
    assert stored_events(db_session) == 0


def test_the_webhook_limit_is_not_the_api_body_limit(
    client: FlaskClient, db_session: Session
) -> None:
    # 100 kB: over the API's MAX_CONTENT_LENGTH, under STRIPE_WEBHOOK_MAX_BODY_BYTES.
    event = _event()
    event["data"]["object"]["description"] = "x" * 100_000

    response = post_signed(client, event)

    assert response.status_code == 200, response.json
    assert stored_events(db_session) == 1


def test_an_event_of_the_other_mode_is_refused(client: FlaskClient, db_session: Session) -> None:
    purchase = make_purchase(db_session)
    live = invoice_event(purchase, "invoice.paid")
    live["livemode"] = True  # the configured key is sk_test_…

    response = post_signed(client, live)

    body = assert_error(response, 400, "livemode_mismatch")
    assert body["error_details"] == {"livemode": ["must be false"]}
    assert stored_events(db_session) == 0
    assert state_of(db_session, purchase.id).balance == 0


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_SECRET_KEY": "sk_live_gateway"}])
def test_a_live_key_refuses_test_events(client: FlaskClient, db_session: Session) -> None:
    response = post_signed(client, _event())

    assert_error(response, 400, "livemode_mismatch")
    assert stored_events(db_session) == 0


@pytest.mark.parametrize("secret", [PRIMARY_SECRET, SECONDARY_SECRET], ids=["first", "second"])
def test_each_configured_secret_is_accepted_during_a_rotation(
    client: FlaskClient, db_session: Session, secret: str
) -> None:
    purchase = make_purchase(db_session)

    response = post_signed(client, invoice_event(purchase, "invoice.paid"), secret=secret)

    assert response.status_code == 200, response.json
    assert state_of(db_session, purchase.id).balance == purchase.credits


def test_a_header_carrying_old_and_new_signatures_is_accepted(
    client: FlaskClient, db_session: Session
) -> None:
    # While Stripe rolls an endpoint secret it signs with both, one v1 each.
    body = encode(_event())
    now = _now()
    header = f"t={now},v1={_v1(body, 'whsec_retired', now)},v1={_v1(body, SECONDARY_SECRET, now)}"

    response = _deliver(client, body, header)

    assert response.status_code == 200, response.json
    assert stored_events(db_session) == 1


def test_a_small_clock_difference_is_tolerated(client: FlaskClient, db_session: Session) -> None:
    ahead = post_signed(client, _event(), timestamp=_now() + 120)
    behind = post_signed(client, _event(), timestamp=_now() - 290)

    assert ahead.status_code == 200 and behind.status_code == 200
    assert stored_events(db_session) == 2


@pytest.mark.parametrize("settings_overrides", [{"STRIPE_WEBHOOK_SECRETS": ""}])
def test_without_a_configured_secret_deliveries_are_refused_with_503(
    client: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)

    response = post_signed(client, invoice_event(purchase, "invoice.paid"))

    body = assert_error(response, 503, "webhook_not_configured")
    assert "STRIPE_WEBHOOK_SECRETS" in body["message"]
    assert body["error_details"] == {"setting": "STRIPE_WEBHOOK_SECRETS"}
    assert stored_events(db_session) == 0
    assert state_of(db_session, purchase.id).balance == Decimal(0)


def test_the_webhook_needs_no_api_key(client: FlaskClient, db_session: Session) -> None:
    response = post_signed(client, _event())

    assert response.status_code == 200
    assert "Authorization" not in response.request.headers
