"""Stripe events read into the boundary's provider-neutral events.

`read_event` takes a verified event (a dict) and returns what it means for the
service: an invoice that moved, a failed charge, refunds of a payment, a credit note,
a dispute, or something the service does not act on. Nothing else of the service
reads Stripe's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.providers.base import (
    CreditNote,
    CreditNoteChanged,
    Dispute,
    DisputeChanged,
    DisputeOutcome,
    InvoiceChanged,
    InvoicePaymentFailed,
    InvoicePaymentMade,
    OtherEvent,
    ProviderEvent,
    Refund,
    RefundsChanged,
)
from gateway.providers.stripe.objects import int_field, invoice_snapshot, object_id

# Invoice events that move a purchase.
INVOICE_TYPES = frozenset(
    {"invoice.paid", "invoice.payment_succeeded", "invoice.voided", "invoice.marked_uncollectible"}
)
PAYMENT_FAILED_TYPE = "invoice.payment_failed"
INVOICE_PAYMENT_PAID_TYPE = "invoice_payment.paid"
# `refund.failed`: a refund can fail after it succeeded (a closed card account): the
# money did not go back after all. Endpoints on API versions before 2024-10-28 get the
# refund.* events only for refunds without a charge; a card refund's changes come as
# `charge.refund.updated` (its object a refund too).
REFUND_TYPES = frozenset(
    {"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)
CHARGE_REFUNDED_TYPE = "charge.refunded"
# A voided credit note gives nothing back any more.
CREDIT_NOTE_TYPES = frozenset({"credit_note.created", "credit_note.voided"})
DISPUTE_TYPES = frozenset({"charge.dispute.created", "charge.dispute.closed"})
# Every type the service acts on; the others are recorded as ignored.
HANDLED_TYPES = (
    INVOICE_TYPES
    | REFUND_TYPES
    | DISPUTE_TYPES
    | CREDIT_NOTE_TYPES
    | {PAYMENT_FAILED_TYPE, INVOICE_PAYMENT_PAID_TYPE, CHARGE_REFUNDED_TYPE}
)
# A dispute Stripe closed in the merchant's favour (`warning_closed`: an inquiry that
# never became a chargeback).
_DISPUTE_WON = frozenset({"won", "warning_closed"})


def read_event(event: Mapping[str, Any]) -> ProviderEvent:
    """What a verified Stripe event means for the service.

    An event that names an `account` is a connected account's (Connect): its objects
    are not ours, whatever metadata they carry, and the service is not a Connect
    platform; our own account's events never name one.
    """
    event_type = str(event["type"])
    account = event.get("account")
    if account and event_type in HANDLED_TYPES:
        return OtherEvent(f"an event of connected account {str(account)[:255]}, not of ours")
    data = event["data"]["object"]
    if event_type in INVOICE_TYPES:
        return InvoiceChanged(invoice_snapshot(data))
    if event_type == PAYMENT_FAILED_TYPE:
        return InvoicePaymentFailed(invoice_snapshot(data), payment_error(data, event))
    if event_type == INVOICE_PAYMENT_PAID_TYPE:
        return _invoice_payment(data)
    if event_type in REFUND_TYPES:
        refund = read_refund(data)
        return RefundsChanged(refund.payment_id, (refund,))
    if event_type == CHARGE_REFUNDED_TYPE:
        return _charge_refunds(data)
    if event_type in CREDIT_NOTE_TYPES:
        return CreditNoteChanged(read_credit_note(data))
    if event_type in DISPUTE_TYPES:
        return DisputeChanged(read_dispute(data))
    return OtherEvent()


def _required_id(data: Mapping[str, Any], what: str) -> str:
    found = object_id(data.get("id"))
    if found is None:
        raise ValueError(f"a Stripe {what} without an id")
    return found


def _currency(data: Mapping[str, Any]) -> str:
    return str(data.get("currency") or "").upper()


def _invoice_payment(data: Mapping[str, Any]) -> InvoicePaymentMade | OtherEvent:
    """`invoice_payment.paid`: an Invoice Payment, whose `payment` names the payment
    intent (other kinds of payment, out-of-band records, are not refunded through us)."""
    invoice_id = object_id(data.get("invoice"))
    payment = data.get("payment")
    payment_id = object_id(payment.get("payment_intent")) if isinstance(payment, Mapping) else None
    if invoice_id is None or payment_id is None:
        return OtherEvent()
    return InvoicePaymentMade(invoice_id, payment_id)


def read_refund(data: Mapping[str, Any]) -> Refund:
    return Refund(
        id=_required_id(data, "refund"),
        payment_id=object_id(data.get("payment_intent")),
        amount_cents=int_field(data, "amount"),
        currency=_currency(data),
        status=str(data.get("status") or ""),
    )


def _charge_refunds(charge: Mapping[str, Any]) -> RefundsChanged:
    """`charge.refunded`: the charge lists its refunds only when they were expanded
    (API versions since 2022-11-15 leave them out); then they must be read."""
    payment_id = object_id(charge.get("payment_intent"))
    listed = charge.get("refunds")
    if isinstance(listed, Mapping) and isinstance(listed.get("data"), list):
        refunds = tuple(
            read_refund({"payment_intent": payment_id, **refund})
            for refund in listed["data"]
            if isinstance(refund, Mapping)
        )
        return RefundsChanged(payment_id, refunds, complete=not listed.get("has_more"))
    return RefundsChanged(payment_id, (), complete=False)


def read_credit_note(data: Mapping[str, Any]) -> CreditNote:
    """A credit note. The value given back after payment is `post_payment_amount`
    (API versions that split a note into pre- and post-payment parts), else the whole
    amount of a `post_payment` note. Its refunds: `refunds[].refund` (newer versions)
    or `refund` (older ones)."""
    invoice_id = object_id(data.get("invoice"))
    if invoice_id is None:
        raise ValueError("a Stripe credit note without an invoice")
    if isinstance(data.get("post_payment_amount"), int):
        returned = int_field(data, "post_payment_amount")
    elif data.get("type") == "post_payment":
        returned = int_field(data, "amount")
    else:
        returned = 0
    refund_ids: list[str] = []
    refunds = data.get("refunds")
    if isinstance(refunds, list):
        for entry in refunds:
            if isinstance(entry, Mapping):
                found = object_id(entry.get("refund"))
                if found is not None:
                    refund_ids.append(found)
    single = object_id(data.get("refund"))
    if single is not None and single not in refund_ids:
        refund_ids.append(single)
    return CreditNote(
        id=_required_id(data, "credit note"),
        invoice_id=invoice_id,
        amount_cents=returned,
        currency=_currency(data),
        post_payment=returned > 0,
        refund_ids=tuple(refund_ids),
        voided=data.get("status") == "void",
    )


def read_dispute(data: Mapping[str, Any]) -> Dispute:
    status = str(data.get("status") or "")
    if status in _DISPUTE_WON:
        outcome = DisputeOutcome.WON
    elif status == "lost":
        outcome = DisputeOutcome.LOST
    else:
        outcome = DisputeOutcome.OPEN
    return Dispute(
        id=_required_id(data, "dispute"),
        payment_id=object_id(data.get("payment_intent")),
        amount_cents=int_field(data, "amount"),
        currency=_currency(data),
        outcome=outcome,
    )


def payment_error(invoice: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """A line for `last_payment_error` from an `invoice.payment_failed` event."""
    message = f"payment attempt {invoice.get('attempt_count') or '?'} failed"
    created = _timestamp(event.get("created"))
    if created:
        message += f" at {created}"
    intent = invoice.get("payment_intent")
    if isinstance(intent, Mapping):  # only when the event carries it expanded
        error = intent.get("last_payment_error")
        if isinstance(error, Mapping) and error.get("message"):
            message += f" ({error.get('code') or 'error'}: {error['message']})"
    next_attempt = _timestamp(invoice.get("next_payment_attempt"))
    message += f"; next attempt {next_attempt}" if next_attempt else "; no retry scheduled"
    return message


def _timestamp(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{datetime.fromtimestamp(value, UTC):%Y-%m-%dT%H:%M:%SZ}"
    return None
