"""The console over HTTP, without a browser: sign-in, CSRF, escaping, labels, and the
forms acting through the API's use cases (tests/console/test_console_browser.py drives the same
screens in Chromium)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway import create_app
from gateway.models import Purchase, Wallet
from gateway.settings import ConfigurationError
from tests.support.api import create_wallet, delete, post, subscribed_customer, unique
from tests.support.config import TEST_SETTINGS
from tests.support.console import PASSWORD, audit, hidden, make_operator, sign_in, submit
from tests.support.ledger import entries
from tests.support.webhooks import make_purchase

# Granted credits only; paid ones are browser-tested.
pytestmark = pytest.mark.settings(STRIPE_SECRET_KEY="")


@pytest.fixture
def operator(app: Flask) -> str:
    return make_operator(app)


@pytest.fixture
def signed_in(client: FlaskClient, operator: str) -> FlaskClient:
    assert sign_in(client).status_code == 303
    return client


def errors_on(page: Any) -> dict[str, list[str]]:
    """Field errors as rendered: the `<p class="field-error" id="NAME-error-N">` lines."""
    found: dict[str, list[str]] = {}
    for name, text in re.findall(
        r'<p class="field-error" id="([a-z_]+)-error-\d+">([^<]*)</p>', page.get_data(as_text=True)
    ):
        found.setdefault(name, []).append(text)
    return found


def _without(page: Any, name: str) -> str:
    """The page less what differs by design: the name typed back and the CSRF token."""
    text: str = page.get_data(as_text=True)
    return text.replace(name, "").replace(hidden(page, "csrf_token"), "")


# --- signing in ------------------------------------------------------------------------


def test_every_page_sends_a_signed_out_visitor_to_sign_in(client: FlaskClient) -> None:
    for path in ("/console/customers", "/console/attention", "/console/customers/x"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/console/login?next=")


def test_sign_in_then_the_page_asked_for(client: FlaskClient, operator: str) -> None:
    page = client.get("/console/login?next=/console/attention")
    response = client.post(
        "/console/login?next=/console/attention",
        data={"csrf_token": hidden(page, "csrf_token"), "name": operator, "password": PASSWORD},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/attention"
    assert client.get("/console/attention").status_code == 200


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "/api/v1/wallets",
     "javascript:alert(1)", "/console\r\nLocation: https://evil.example"],
)  # fmt: skip
def test_next_only_leads_to_console_pages(client: FlaskClient, operator: str, target: str) -> None:
    page = client.get("/console/login")
    response = client.post(
        "/console/login",
        query_string={"next": target},
        data={"csrf_token": hidden(page, "csrf_token"), "name": operator, "password": PASSWORD},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/customers"


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(
    client: FlaskClient, operator: str
) -> None:
    wrong = sign_in(client, operator, "not the password at all")
    unknown = sign_in(client, "nobody-here", PASSWORD)

    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong name or password." in wrong.get_data(as_text=True)
    assert _without(wrong, operator) == _without(unknown, "nobody-here")
    assert client.get("/console/customers").status_code == 302


def test_repeated_failed_sign_ins_are_refused_for_a_while(
    client: FlaskClient, operator: str
) -> None:
    for _attempt in range(5):
        assert sign_in(client, operator, "wrong password!").status_code == 401

    refused = sign_in(client, operator)  # even the right password, for now

    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.get_data(as_text=True)
    assert client.get("/console/customers").status_code == 302
    assert make_operator(client.application, "bob") and sign_in(client, "bob").status_code == 303


def test_the_session_cookie_is_httponly_lax_and_secure_outside_development(
    client: FlaskClient, operator: str
) -> None:
    cookie = sign_in(client).headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" in cookie
    assert "Path=/console" in cookie


def test_development_drops_secure_and_may_run_without_a_secret_key(connection: Any) -> None:
    app = create_app(
        {**TEST_SETTINGS, "GATEWAY_ENV": "development", "SECRET_KEY": ""}, bind=connection
    )
    make_operator(app, "devop")
    client = app.test_client()
    cookie = sign_in(client, "devop").headers["Set-Cookie"]
    assert "Secure" not in cookie
    assert app.config["SECRET_KEY"]


def test_without_secret_key_outside_development_the_console_is_off(connection: Any) -> None:
    app = create_app({**TEST_SETTINGS, "SECRET_KEY": ""}, bind=connection)
    client = app.test_client()

    response = client.get("/console/login")

    assert response.status_code == 503
    assert "SECRET_KEY" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers
    assert client.get("/healthz").status_code == 200  # the rest of the service runs


def test_signing_in_starts_a_fresh_session(client: FlaskClient, operator: str) -> None:
    with client.session_transaction("/console/login") as before:
        before["planted"] = "by someone else"
    sign_in(client)
    with client.session_transaction("/console/login") as after:
        assert "planted" not in after
        assert "operator_id" in after


def test_signing_out_ends_the_session(signed_in: FlaskClient) -> None:
    page = signed_in.get("/console/customers")
    response = signed_in.post("/console/logout", data={"csrf_token": hidden(page, "csrf_token")})
    assert response.status_code == 303
    assert signed_in.get("/console/customers").status_code == 302


def test_a_disabled_operator_is_signed_out_at_the_next_request(
    app: Flask, signed_in: FlaskClient
) -> None:
    assert signed_in.get("/console/customers").status_code == 200
    result = app.test_cli_runner().invoke(args=["operators", "disable", "alice"])
    assert result.exit_code == 0, result.output

    assert signed_in.get("/console/customers").status_code == 302
    assert sign_in(signed_in).status_code == 401


def test_operators_commands(app: Flask) -> None:
    runner = app.test_cli_runner()
    prompted = runner.invoke(
        args=["operators", "create", "carol"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert prompted.exit_code == 0, prompted.output
    again = runner.invoke(args=["operators", "create", "carol", "--password-stdin"], input="x" * 20)
    assert again.exit_code == 1 and "already exists" in again.output
    short = runner.invoke(args=["operators", "create", "dave", "--password-stdin"], input="short\n")
    assert short.exit_code == 1 and "12 to 1024 characters" in short.output
    bad_name = runner.invoke(
        args=["operators", "create", "a b", "--password-stdin"], input=PASSWORD
    )
    assert bad_name.exit_code == 1
    unknown = runner.invoke(args=["operators", "disable", "nobody"])
    assert unknown.exit_code == 1 and "no operator" in unknown.output
    stored = app.test_client()
    assert sign_in(stored, "carol").status_code == 303


# --- CSRF -----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_a_form_without_a_valid_csrf_token_is_refused_and_changes_nothing(
    signed_in: FlaskClient, db_session: Session, token: str | None
) -> None:
    customer = subscribed_customer(signed_in)
    path = f"/console/customers/{customer}/wallets/new"
    page = signed_in.get(path)
    data = {"form_token": hidden(page, "form_token"), "rate_amount": "5", "granted_credits": "10"}
    if token is not None:
        data["csrf_token"] = token

    response = signed_in.post(path, data=data)

    assert response.status_code == 400
    assert "Nothing was changed" in response.get_data(as_text=True)
    assert db_session.execute(select(func.count()).select_from(Wallet)).scalar_one() == 0


def test_sign_in_and_sign_out_need_the_csrf_token(client: FlaskClient, operator: str) -> None:
    response = client.post("/console/login", data={"name": operator, "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/console/customers").status_code == 302


# --- screens -------------------------------------------------------------------------


def test_customers_newest_first_searchable_and_paged(signed_in: FlaskClient) -> None:
    tag = unique("find")
    names = [f"{tag}-{n:02d}" for n in range(23)]
    for name in names:
        post(signed_in, "/customers", {"customer": {"external_id": name, "currency": "USD",
                                                   "name": f"Name {name}"}})  # fmt: skip

    first = signed_in.get("/console/customers", query_string={"q": tag}).get_data(as_text=True)
    second = signed_in.get("/console/customers", query_string={"q": tag, "page": 2})
    by_name = signed_in.get("/console/customers", query_string={"q": f"Name {names[3]}"})

    shown = re.findall(rf">({tag}-\d\d)</a>", first)
    assert shown == list(reversed(names))[:20]
    assert "Page 1 of 2" in first
    assert re.findall(rf">({tag}-\d\d)</a>", second.get_data(as_text=True)) == names[2::-1]
    assert re.findall(rf">({tag}-\d\d)</a>", by_name.get_data(as_text=True)) == [names[3]]
    wildcard = signed_in.get("/console/customers", query_string={"q": "%"}).get_data(as_text=True)
    assert "No customer matches" in wildcard


def test_what_customers_typed_is_shown_as_text(signed_in: FlaskClient) -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    external_id = unique("esc")
    post(signed_in, "/customers", {"customer": {"external_id": external_id, "currency": "USD",
                                               "name": hostile}})  # fmt: skip
    post(signed_in, "/subscriptions", {"subscription": {"external_id": unique("sub"),
         "external_customer_id": external_id, "plan_code": "p"}})  # fmt: skip
    create_wallet(signed_in, external_id, name=hostile, granted_credits="1")

    for path in ("/console/customers", f"/console/customers/{external_id}"):
        text = signed_in.get(path).get_data(as_text=True)
        assert "<script>alert" not in text and "<img src=x" not in text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text


def test_every_input_has_a_label_and_the_seeds_words_are_used(signed_in: FlaskClient) -> None:
    customer = subscribed_customer(signed_in)
    wallet_id = create_wallet(signed_in, customer, granted_credits="5")["wallet"]["id"]
    login = audit(signed_in.application.test_client().get("/console/login"))
    assert login.unlabelled() == [] and "Sign in" in login.buttons
    pages = {
        "/console/customers": ["Search"],
        f"/console/customers/{customer}": [],
        f"/console/customers/{customer}/wallets/new": ["Add wallet & credits"],
        f"/console/wallets/{wallet_id}/edit": [],
        f"/console/wallets/{wallet_id}/top-up": ["Top up credit"],
        f"/console/wallets/{wallet_id}/information": ["Edit information"],
        f"/console/wallets/{wallet_id}/terminate": ["Terminate wallet"],
        "/console/attention": [],
    }
    for path, buttons in pages.items():
        page = signed_in.get(path)
        assert page.status_code == 200, path
        found = audit(page)
        assert found.unlabelled() == [], path
        for button in buttons:
            assert button in found.buttons, (path, found.buttons)
    menu = audit(signed_in.get(f"/console/customers/{customer}"))
    assert {"Customers", "Attention", "Wallets", "Edit wallet"} <= set(menu.links)
    choices = audit(signed_in.get(f"/console/wallets/{wallet_id}/edit"))
    assert {"Top up credit", "Edit information", "Terminate wallet"} <= set(choices.links)
    empty = audit(signed_in.get(f"/console/customers/{subscribed_customer(signed_in)}"))
    assert "Add a wallet & credits" in empty.links
    terminate = signed_in.get(f"/console/wallets/{wallet_id}/terminate").get_data(as_text=True)
    assert "cannot be undone" in terminate


# --- forms act through the use cases ------------------------------------------------


def test_add_a_wallet_and_credits_as_the_api_would(
    signed_in: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(signed_in)
    response = submit(
        signed_in, f"/console/customers/{customer}/wallets/new",
        name="Main", rate_amount="5.00", granted_credits="10", expiration_date="2099-01-31",
    )  # fmt: skip

    assert response.status_code == 303
    wallet = db_session.execute(select(Wallet)).scalar_one()
    assert (wallet.name, wallet.rate_amount, wallet.credits_balance) == ("Main", 5, 10)
    assert wallet.expiration_at == datetime(2099, 1, 31, 23, 59, 59, tzinfo=UTC)
    (granted,) = entries(db_session, wallet.id)
    assert granted.created_by == "operator:alice"
    page = signed_in.get(response.headers["Location"]).get_data(as_text=True)
    assert "Wallet added." in page and "10.00000 credits" in page and "50.00 USD" in page


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"rate_amount": "abc", "granted_credits": "1"}, "rate_amount", "not a valid decimal"),
        ({"rate_amount": "0", "granted_credits": "1"}, "rate_amount", "greater than 0"),
        ({"rate_amount": "1", "granted_credits": "-2"}, "granted_credits", "greater than 0"),
        ({"rate_amount": "1", "granted_credits": "1.123456"}, "granted_credits", "5 decimal"),
        ({"rate_amount": "1", "granted_credits": "1", "expiration_date": "2001-01-01"},
         "expiration_date", "in the future"),
        ({"rate_amount": "1", "granted_credits": "1", "expiration_date": "31/01/2099"},
         "expiration_date", "must be a date"),
    ],
)  # fmt: skip
def test_an_invalid_value_is_shown_next_to_its_field_and_nothing_is_stored(
    signed_in: FlaskClient, db_session: Session, fields: dict[str, str], field: str, message: str
) -> None:
    customer = subscribed_customer(signed_in)
    response = submit(signed_in, f"/console/customers/{customer}/wallets/new", **fields)

    assert response.status_code == 422
    shown = errors_on(response)
    assert list(shown) == [field]
    assert message in shown[field][0]
    assert f'id="{field}"' in response.get_data(as_text=True)
    assert 'aria-invalid="true"' in response.get_data(as_text=True)
    assert db_session.execute(select(func.count()).select_from(Wallet)).scalar_one() == 0


def test_a_refused_form_keeps_its_token_so_the_corrected_one_acts_once(
    signed_in: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(signed_in)
    path = f"/console/customers/{customer}/wallets/new"
    page = signed_in.get(path)
    tokens = {"csrf_token": hidden(page, "csrf_token"), "form_token": hidden(page, "form_token")}

    refused = signed_in.post(path, data={**tokens, "rate_amount": "x", "granted_credits": "1"})
    assert hidden(refused, "form_token") == tokens["form_token"]
    fixed = {**tokens, "rate_amount": "2", "granted_credits": "1"}
    first = signed_in.post(path, data=fixed)
    second = signed_in.post(path, data=fixed)  # a double click

    assert first.status_code == second.status_code == 303
    assert db_session.execute(select(func.count()).select_from(Wallet)).scalar_one() == 1


def test_a_top_up_submitted_twice_acts_once(signed_in: FlaskClient, db_session: Session) -> None:
    wallet_id = create_wallet(signed_in, subscribed_customer(signed_in))["wallet"]["id"]
    path = f"/console/wallets/{wallet_id}/top-up"
    page = signed_in.get(path)
    data = {"csrf_token": hidden(page, "csrf_token"), "form_token": hidden(page, "form_token"),
            "granted_credits": "7"}  # fmt: skip

    answers = [signed_in.post(path, data=data) for _ in range(3)]
    other_values = signed_in.post(path, data={**data, "granted_credits": "8"})

    assert [answer.status_code for answer in answers] == [303, 303, 303]
    assert (
        len(answers[0].headers["Location"]) and len({a.headers["Location"] for a in answers}) == 1
    )
    assert [(e.credit_amount, e.created_by) for e in entries(db_session, wallet_id)] == [
        (7, "operator:alice")
    ]
    assert other_values.status_code == 422
    assert "already sent with other values" in other_values.get_data(as_text=True)


def test_a_top_up_needs_some_credits(signed_in: FlaskClient) -> None:
    wallet_id = create_wallet(signed_in, subscribed_customer(signed_in))["wallet"]["id"]
    response = submit(signed_in, f"/console/wallets/{wallet_id}/top-up")
    assert response.status_code == 422
    assert "paid_credits" in errors_on(response)


def test_paid_credits_without_stripe_say_what_to_set(signed_in: FlaskClient) -> None:
    wallet_id = create_wallet(signed_in, subscribed_customer(signed_in))["wallet"]["id"]
    response = submit(signed_in, f"/console/wallets/{wallet_id}/top-up", paid_credits="5")
    assert response.status_code == 422
    assert "set STRIPE_SECRET_KEY" in response.get_data(as_text=True)


def test_edit_information_changes_name_and_removes_the_expiration(
    signed_in: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(signed_in)
    wallet_id = create_wallet(
        signed_in, customer, name="Old", expiration_at="2099-05-01T00:00:00Z"
    )["wallet"]["id"]
    form = signed_in.get(f"/console/wallets/{wallet_id}/information").get_data(as_text=True)
    assert 'value="Old"' in form and 'value="2099-05-01"' in form

    response = submit(
        signed_in, f"/console/wallets/{wallet_id}/information", name="New", expiration_date=""
    )

    assert response.status_code == 303
    db_session.expire_all()
    wallet = db_session.get(Wallet, wallet_id)
    assert wallet is not None and (wallet.name, wallet.expiration_at) == ("New", None)


def test_terminate_voids_the_credits_as_the_operator(
    signed_in: FlaskClient, db_session: Session
) -> None:
    customer = subscribed_customer(signed_in)
    wallet_id = create_wallet(signed_in, customer, granted_credits="4")["wallet"]["id"]

    response = submit(signed_in, f"/console/wallets/{wallet_id}/terminate")

    assert response.status_code == 303
    voided = entries(db_session, wallet_id)[-1]
    assert (voided.transaction_status, voided.credit_amount, voided.created_by) == (
        "voided", 4, "operator:alice"
    )  # fmt: skip
    page = signed_in.get(f"/console/customers/{customer}").get_data(as_text=True)
    assert "Wallet terminated." in page and "This customer has no active wallet." in page
    assert "Add a wallet &amp; credits" in page


@pytest.mark.parametrize("form", ["top-up", "information", "terminate"])
def test_a_terminated_wallets_forms_are_not_offered_and_refused_when_crafted(
    signed_in: FlaskClient, db_session: Session, form: str
) -> None:
    customer = subscribed_customer(signed_in)
    wallet_id = create_wallet(signed_in, customer, granted_credits="4")["wallet"]["id"]
    path = f"/console/wallets/{wallet_id}/{form}"
    page = signed_in.get(path)  # opened before the wallet ended
    assert delete(signed_in, f"/wallets/{wallet_id}").status_code == 200
    before = len(entries(db_session, wallet_id))

    offered = signed_in.get(path)
    customer_page = signed_in.get(f"/console/customers/{customer}").get_data(as_text=True)
    crafted = signed_in.post(
        path,
        data={"csrf_token": hidden(page, "csrf_token"), "form_token": hidden(page, "form_token"),
              "granted_credits": "1", "name": "x"},
    )  # fmt: skip

    assert offered.status_code == 409
    assert "<form" not in offered.get_data(as_text=True).split("<main>")[1]
    assert f"/console/wallets/{wallet_id}/edit" not in customer_page
    assert crafted.status_code == 422
    assert f"wallet {wallet_id} is terminated" in crafted.get_data(as_text=True)
    assert len(entries(db_session, wallet_id)) == before


def test_an_expired_wallet_is_not_offered_either(
    signed_in: FlaskClient, db_session: Session
) -> None:
    wallet_id = create_wallet(signed_in, subscribed_customer(signed_in), granted_credits="1")[
        "wallet"
    ]["id"]
    db_session.execute(
        update(Wallet)
        .where(Wallet.id == wallet_id)
        .values(expiration_at=datetime.now(UTC) - timedelta(minutes=1))
    )
    db_session.commit()
    assert signed_in.get(f"/console/wallets/{wallet_id}/top-up").status_code == 409


def test_attention_lists_purchases_that_need_a_person(
    signed_in: FlaskClient, db_session: Session
) -> None:
    purchase = make_purchase(db_session)
    db_session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id)
        .values(status="refund_required", attention_reason="paid after the wallet ended <b>")
    )
    db_session.commit()
    disputed = make_purchase(db_session)
    db_session.execute(
        update(Purchase)
        .where(Purchase.id == disputed.id)
        .values(status="refund_required", attention_reason="paid late", dispute_status="open")
    )

    spent = make_purchase(db_session)
    db_session.execute(
        update(Purchase)
        .where(Purchase.id == spent.id)
        .values(status="settled", shortfall_credits=Decimal("2.5"),
                attention_reason="refunded_after_consumption")
    )  # fmt: skip
    quiet = make_purchase(db_session)  # open: nothing to do
    ended = make_purchase(db_session)
    db_session.execute(
        update(Purchase)
        .where(Purchase.id == ended.id)
        .values(status="refunded", shortfall_credits=Decimal("4"),
                attention_reason="refunded_after_consumption")
    )  # fmt: skip
    db_session.execute(
        update(Wallet).where(Wallet.id == ended.wallet_id).values(status="terminated")
    )
    db_session.commit()

    page = signed_in.get("/console/attention").get_data(as_text=True)

    assert "Refund required" in page
    assert "paid after the wallet ended &lt;b&gt;" in page
    assert "Refund shortfall" in page and "2.50000 credits already spent" in page
    assert "4.00000 credits not taken back: the wallet has ended" in page
    # Only the disputed one: its bank may return the money; a refund would pay it twice.
    assert page.count("do not refund it while the dispute is open") == 1
    customers = re.findall(r'href="/console/customers/([^"]+)"', page)
    assert quiet.id and len(customers) == 4  # the open purchase is not listed


def test_sandbox_cannot_run_with_a_live_key() -> None:
    with pytest.raises(ConfigurationError, match="STRIPE_SANDBOX"):
        create_app({**TEST_SETTINGS, "STRIPE_SANDBOX": "1", "STRIPE_SECRET_KEY": "sk_live_x"})


def test_the_operator_is_named_in_the_entrys_event(signed_in: FlaskClient) -> None:
    wallet_id = create_wallet(signed_in, subscribed_customer(signed_in))["wallet"]["id"]
    assert (
        submit(signed_in, f"/console/wallets/{wallet_id}/top-up", granted_credits="3").status_code
        == 303
    )

    listed = signed_in.get(
        "/api/v1/events",
        query_string={"type": "wallet_transaction.created", "limit": 100},
        headers={"Authorization": "Bearer test-key-1"},
    ).json["events"]

    authors = [
        event["data"]["wallet_transaction"]["created_by"]
        for event in listed
        if event["data"]["wallet_transaction"]["wallet_id"] == wallet_id
    ]
    assert authors == ["operator:alice"]
