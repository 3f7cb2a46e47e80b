from flask.testing import FlaskClient

from tests.helpers import create_wallet, get, subscribed_customer


def test_granted_credits_raise_the_balance_at_once(client: FlaskClient) -> None:
    customer = subscribed_customer(client)
    body = create_wallet(client, customer, rate_amount="5.00", granted_credits="10")
    wallet = body["wallet"]
    assert wallet["credits_balance"] == "10.00000"
    assert wallet["balance_cents"] == 5000
    assert wallet["rate_amount"] == "5.00"
    [entry] = body["wallet_transactions"]
    assert entry["status"] == "settled"
    assert entry["transaction_status"] == "granted"
    assert entry["amount"] == "50.00"
    again = get(client, f"/wallets/{wallet['id']}")
    assert again.json["wallet"]["credits_balance"] == "10.00000"
