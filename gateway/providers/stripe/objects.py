"""Stripe's objects in their JSON form (an API answer, or an event's `data.object`),
read into the boundary's provider-neutral types. Pure functions: no network, no
`stripe` import, so the webhook path can read an event without the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.providers.base import InvoiceSnapshot


def object_id(value: Any) -> str | None:
    """The id of a field that holds an id, or the object itself when expanded."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def int_field(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _amounts(entries: Any) -> list[Mapping[str, Any]]:
    return [entry for entry in entries or () if isinstance(entry, Mapping)]


def _tax_cents(invoice: Mapping[str, Any]) -> int:
    taxes = invoice.get("total_taxes")
    if isinstance(taxes, list):
        return sum(int_field(tax, "amount") for tax in _amounts(taxes))
    if isinstance(invoice.get("tax"), int):  # API versions before `total_taxes`
        return int_field(invoice, "tax")
    if isinstance(invoice.get("total_excluding_tax"), int):
        return int_field(invoice, "total") - int_field(invoice, "total_excluding_tax")
    return 0


def _has_discount(invoice: Mapping[str, Any]) -> bool:
    """Any sign of a discount: `discounts`, the older `discount`, or discounted amounts."""
    if invoice.get("discounts") or invoice.get("discount"):
        return True
    if any(
        int_field(entry, "amount") > 0 for entry in _amounts(invoice.get("total_discount_amounts"))
    ):
        return True
    return any(
        entry.get("type") == "discount" and int_field(entry, "amount") > 0
        for entry in _amounts(invoice.get("total_pretax_credit_amounts"))
    )


def invoice_snapshot(invoice: Mapping[str, Any]) -> InvoiceSnapshot:
    """Our view of a Stripe invoice in its JSON form (an API answer, or an event's
    `data.object`): amounts in minor units, currency upper-case."""
    invoice_id = invoice.get("id")
    if not isinstance(invoice_id, str) or not invoice_id:
        raise ValueError("a Stripe invoice without an id")
    created = invoice.get("created")
    metadata = invoice.get("metadata")
    url = invoice.get("hosted_invoice_url")
    return InvoiceSnapshot(
        id=invoice_id,
        status=str(invoice.get("status") or ""),
        currency=str(invoice.get("currency") or "").upper(),
        subtotal_cents=int_field(invoice, "subtotal"),
        tax_cents=_tax_cents(invoice),
        total_cents=int_field(invoice, "total"),
        amount_paid_cents=int_field(invoice, "amount_paid"),
        has_discount=_has_discount(invoice),
        hosted_invoice_url=url if isinstance(url, str) else None,
        livemode=invoice.get("livemode") is True,
        created_at=(
            datetime.fromtimestamp(created, UTC)
            if isinstance(created, int) and not isinstance(created, bool)
            else None
        ),
        metadata=(
            {str(key): str(value) for key, value in metadata.items()}
            if isinstance(metadata, Mapping)
            else {}
        ),
        credited_after_payment_cents=int_field(invoice, "post_payment_credit_notes_amount"),
        payment_id=_payment_of(invoice),
    )


def _payment_of(invoice: Mapping[str, Any]) -> str | None:
    """The payment intent that paid the invoice: `payment_intent` in API versions
    before 2025-03-31, else the paid entry of `payments` when it is included."""
    legacy = object_id(invoice.get("payment_intent"))
    if legacy is not None:
        return legacy
    payments = invoice.get("payments")
    entries = payments.get("data") if isinstance(payments, Mapping) else None
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and entry.get("status") in ("paid", None):
            payment = entry.get("payment")
            if isinstance(payment, Mapping):
                found = object_id(payment.get("payment_intent"))
                if found is not None:
                    return found
    return None
