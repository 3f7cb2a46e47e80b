"""Customers and subscriptions: who may hold a wallet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.errors import NotFound, ValidationFailed
from gateway.models import Customer, Subscription, SubscriptionStatus, Wallet


@dataclass(frozen=True)
class CustomerInput:
    external_id: str
    currency: str
    name: str | None = None
    email: str | None = None


def get_customer(session: Session, external_id: str, *, lock: bool = False) -> Customer:
    """The customer; with `lock`, its row locked for the transaction (as the upsert
    locks it), so its currency cannot change until the caller commits."""
    query = select(Customer).where(Customer.external_id == external_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    customer = session.execute(query).scalar_one_or_none()
    if customer is None:
        raise NotFound(
            f"customer {external_id} does not exist", details={"customer": ["not_found"]}
        )
    return customer


def upsert_customer(session: Session, data: CustomerInput) -> tuple[Customer, bool]:
    """Create the customer, or update name and email of the existing one.

    Returns (customer, created). The currency of an existing customer is fixed once it
    holds a wallet, since wallet balances are valued in it.
    """
    customer = session.execute(
        select(Customer).where(Customer.external_id == data.external_id).with_for_update()
    ).scalar_one_or_none()
    if customer is None:
        customer = Customer(
            external_id=data.external_id,
            currency=data.currency,
            name=data.name,
            email=data.email,
        )
        try:
            with session.begin_nested():
                session.add(customer)
        except IntegrityError:
            # Another request created it first: fall through to the update path.
            customer = get_customer(session, data.external_id)
        else:
            return customer, True
    if data.currency != customer.currency:
        has_wallet = session.execute(
            select(Wallet.id).where(Wallet.customer_id == customer.id).limit(1)
        ).first()
        if has_wallet:
            raise ValidationFailed(
                "the currency of a customer with a wallet cannot change",
                details={"currency": [f"is {customer.currency} for this customer"]},
            )
        customer.currency = data.currency
    if data.name is not None:
        customer.name = data.name
    if data.email is not None:
        customer.email = data.email
    session.flush()
    return customer, False


def create_subscription(
    session: Session,
    *,
    external_id: str,
    external_customer_id: str,
    plan_code: str,
    now: datetime,
) -> Subscription:
    customer = get_customer(session, external_customer_id)
    subscription = Subscription(
        external_id=external_id,
        customer_id=customer.id,
        plan_code=plan_code,
        status=SubscriptionStatus.ACTIVE,
        started_at=now,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(subscription)
    except IntegrityError as exc:
        raise ValidationFailed(
            f"subscription {external_id} already exists",
            details={"external_id": ["already exists"]},
        ) from exc
    return subscription


def terminate_subscription(session: Session, external_id: str, now: datetime) -> Subscription:
    """End a subscription (idempotent). Wallets of the customer are left as they are."""
    subscription = session.execute(
        select(Subscription).where(Subscription.external_id == external_id).with_for_update()
    ).scalar_one_or_none()
    if subscription is None:
        raise NotFound(
            f"subscription {external_id} does not exist",
            details={"subscription": ["not_found"]},
        )
    if subscription.status != SubscriptionStatus.TERMINATED:
        subscription.status = SubscriptionStatus.TERMINATED
        subscription.terminated_at = now
    return subscription


def has_active_subscription(session: Session, customer: Customer) -> bool:
    return (
        session.execute(
            select(Subscription.id)
            .where(
                Subscription.customer_id == customer.id,
                Subscription.status == SubscriptionStatus.ACTIVE,
            )
            .limit(1)
        ).first()
        is not None
    )
