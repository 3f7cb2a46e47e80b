"""Customers and subscriptions."""

from __future__ import annotations

from typing import Any

from gateway import customers
from gateway.api import api_v1
from gateway.api.framework import Link, Reply, endpoint
from gateway.api.schemas import (
    CustomerRequest,
    CustomerResponse,
    SubscriptionRequest,
    SubscriptionResponse,
)
from gateway.db import get_session, utcnow


@endpoint(
    api_v1, "/customers", "POST",
    summary="Create a customer, or update the one with this external_id",
    body=CustomerRequest, response=CustomerResponse, status=201,
    extra_statuses={200: "The customer existed and was updated"},
    links={
        "GetCustomer": Link(
            "get_customer", "The customer just written",
            parameters={"external_id": "$response.body#/customer/external_id"},
        ),
        "CreateSubscription": Link(
            "create_subscription", "Subscribe the customer (a wallet needs an active subscription)",
            request_body={"subscription": {
                "external_id": "$response.body#/customer/external_id",
                "external_customer_id": "$response.body#/customer/external_id",
                "plan_code": "pro",
            }},
        ),
    },
)  # fmt: skip
def upsert_customer(body: dict[str, Any]) -> Reply:
    customer, created = customers.upsert_customer(
        get_session(), customers.CustomerInput(**body["customer"])
    )
    return Reply({"customer": customer}, 201 if created else 200)


@endpoint(
    api_v1, "/customers/<path:external_id>", "GET",
    summary="Get a customer by external_id", response=CustomerResponse, errors=["not_found"],
)  # fmt: skip
def get_customer(external_id: str) -> Reply:
    return Reply({"customer": customers.get_customer(get_session(), external_id)})


@endpoint(
    api_v1, "/subscriptions", "POST",
    summary="Start a subscription for a customer",
    body=SubscriptionRequest, response=SubscriptionResponse, status=201,
    errors=["not_found", "validation_errors"],
    links={
        "CreateWallet": Link(
            "create_wallet", "Give the subscribed customer a wallet with free credits",
            request_body={"wallet": {
                "external_customer_id": "$response.body#/subscription/external_customer_id",
                "rate_amount": "2.50",
                "granted_credits": "100",
                "paid_credits": None,
                "currency": None,
                "expiration_at": None,
            }},
        ),
        "TerminateSubscription": Link(
            "terminate_subscription", "End this subscription",
            parameters={"external_id": "$response.body#/subscription/external_id"},
        ),
    },
)  # fmt: skip
def create_subscription(body: dict[str, Any]) -> Reply:
    data = body["subscription"]
    subscription = customers.create_subscription(
        get_session(),
        external_id=data["external_id"],
        external_customer_id=data["external_customer_id"],
        plan_code=data["plan_code"],
        now=utcnow(),
    )
    return Reply({"subscription": subscription}, 201)


@endpoint(
    api_v1, "/subscriptions/<path:external_id>", "DELETE",
    summary="Terminate a subscription (its customer's wallet stays)",
    response=SubscriptionResponse, errors=["not_found"],
)  # fmt: skip
def terminate_subscription(external_id: str) -> Reply:
    subscription = customers.terminate_subscription(get_session(), external_id, utcnow())
    return Reply({"subscription": subscription})
