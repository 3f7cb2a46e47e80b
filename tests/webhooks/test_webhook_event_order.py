"""Stripe delivers at least once and in any order: the outcome must not depend on it."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from gateway.models import EntryStatus, PurchaseStatus
from tests.support.webhooks import (
    PurchaseRow,
    PurchaseState,
    invoice_event,
    make_purchase,
    post_signed,
    state_of,
)

# The order in which Stripe emits them for one invoice: charge attempts fail, the
# invoice may be marked uncollectible (and still be paid later) or be voided, and a
# payment emits invoice.paid and invoice.payment_succeeded.
NATURAL_ORDER = (
    "invoice.payment_failed",
    "invoice.marked_uncollectible",
    "invoice.voided",
    "invoice.paid",
    "invoice.payment_succeeded",
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Which events an invoice had, and one delivery order with duplicates in it."""
    kinds = draw(st.lists(st.sampled_from(NATURAL_ORDER), min_size=1, unique=True))
    repeats = draw(st.lists(st.sampled_from(kinds), max_size=4))
    order = draw(st.permutations(kinds + repeats))
    return sorted(kinds, key=NATURAL_ORDER.index), list(order)


def _deliver_in_order(
    client: FlaskClient, purchase: PurchaseRow, order: list[str], events: dict[str, dict]
) -> None:
    for kind in order:
        response = post_signed(client, events[kind])
        assert response.status_code == 200, response.json


def _comparable(state: PurchaseState, purchase: PurchaseRow) -> PurchaseState:
    """The state with this purchase's own ids taken out, to compare two purchases."""
    reason = state.attention_reason
    return dataclasses.replace(
        state,
        invoice_id="stored" if state.invoice_id == purchase.invoice_id else state.invoice_id,
        attention_reason=reason.replace(purchase.invoice_id, "IN").replace(
            purchase.wallet_id, "WAL"
        )
        if reason
        else None,
    )


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=deliveries(), invoice_stored=st.booleans())
# Cases worth keeping whatever the draw: a void delivered before the uncollectible
# mark that preceded it, and a payment delivered after the void (or the other way).
@example(
    case=(
        ["invoice.payment_failed", "invoice.marked_uncollectible", "invoice.voided"],
        ["invoice.voided", "invoice.marked_uncollectible", "invoice.payment_failed"],
    ),
    invoice_stored=True,
)
@example(
    case=(["invoice.voided", "invoice.paid"], ["invoice.paid", "invoice.voided"]),
    invoice_stored=False,
)
def test_any_delivery_order_ends_in_the_state_of_the_natural_order(
    client: FlaskClient,
    db_session: Session,
    case: tuple[list[str], list[str]],
    invoice_stored: bool,
) -> None:
    kinds, order = case
    natural = make_purchase(db_session, granted=Decimal("1"), invoice_stored=invoice_stored)
    shuffled = make_purchase(db_session, granted=Decimal("1"), invoice_stored=invoice_stored)

    _deliver_in_order(
        client, natural, kinds, {kind: invoice_event(natural, kind) for kind in kinds}
    )
    events = {kind: invoice_event(shuffled, kind) for kind in kinds}
    _deliver_in_order(client, shuffled, order, events)

    expected = state_of(db_session, natural.id)
    assert _comparable(state_of(db_session, shuffled.id), shuffled) == _comparable(
        expected, natural
    )
    # And the natural order itself ends where the contract says.
    paid = {"invoice.paid", "invoice.payment_succeeded"} & set(kinds)
    failed = {"invoice.voided", "invoice.marked_uncollectible"} & set(kinds)
    if paid:
        assert expected.purchase_status == PurchaseStatus.SETTLED
        assert expected.entry_status == EntryStatus.SETTLED
        assert expected.balance == Decimal("1") + natural.credits
    elif failed:
        assert expected.purchase_status == PurchaseStatus.FAILED
        assert expected.entry_status == EntryStatus.FAILED
        assert expected.balance == Decimal("1")
    else:
        assert expected.purchase_status == PurchaseStatus.OPEN
        assert expected.entry_status == EntryStatus.PENDING
        assert expected.last_payment_error is not None
        assert expected.balance == Decimal("1")
    assert expected.invoice_id == natural.invoice_id
