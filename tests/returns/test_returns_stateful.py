"""Money going back under random histories, on both databases.

A hypothesis state machine drives one wallet with several purchases through payments,
partial refunds (some made through credit notes, some pending first), credit notes to
the customer's balance, disputes opened and closed won or lost, credit applications
spending the balance, and repeats of any earlier delivery, in any order (a refund may
arrive before its payment). After every step it checks:

- each purchase: credits out never exceed the purchased credits, and equal them exactly
  when everything was returned (or a dispute holds them), with the running-total rule
  (round_half_up(purchased x returned / paid, 5)) otherwise;
- what the purchases say was taken back (out minus shortfall) is what the ledger's
  `refunded`, `disputed` and `reinstated` entries add up to;
- the balance is never negative and equals the sum of settled entries;
- `returned_cents` is what the distinct refunds and credit notes add up to (a refund made
  through a note counted once), capped at what was paid;
- a repeat changes nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import credits, ledger, money, returns, settlement
from gateway.models import (
    Customer,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    Subscription,
    TransactionStatus,
    Wallet,
    WalletTransaction,
)
from gateway.providers.base import (
    META_PURCHASE_ID,
    CreditNote,
    Dispute,
    DisputeOutcome,
    InvoiceSnapshot,
    Refund,
)

_ids = itertools.count()
ACTOR = "operator:stateful"
PURCHASES = 3


def _id(prefix: str) -> str:
    return f"{prefix}_st{next(_ids):06d}"


@dataclass
class ModelPurchase:
    """What the machine delivered for one purchase (the expected counts)."""

    id: str
    invoice_id: str
    payment_id: str
    credits: Decimal
    paid_cents: int
    paid: bool = False
    refunds: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> amount, status
    notes: dict[str, int] = field(default_factory=dict)  # id -> amount
    via_note: set[str] = field(default_factory=set)  # refunds a note counts
    dispute: str | None = None  # open, won, lost

    def returned(self) -> int:
        direct = sum(
            amount
            for refund_id, (amount, status) in self.refunds.items()
            if status == "succeeded" and refund_id not in self.via_note
        )
        return min(direct + sum(self.notes.values()), self.paid_cents)


Delivery = Any  # a callable applying one provider object on a connection


class ReturnsMachine(RuleBasedStateMachine):
    deliveries = Bundle("deliveries")

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.savepoint = connection.begin_nested()
        self.session = Session(bind=connection, join_transaction_mode="create_savepoint")
        self.now = datetime(2031, 1, 1, tzinfo=UTC)
        self.purchases: list[ModelPurchase] = []
        self._closed_as: dict[str, str] = {}
        self.notes: dict[str, tuple[ModelPurchase, CreditNote]] = {}  # issued, not voided

    def teardown(self) -> None:
        self.session.close()
        self.savepoint.rollback()

    # -- arranging ------------------------------------------------------------------------

    @initialize(
        rate=st.sampled_from([Decimal("1"), Decimal("0.333"), Decimal("2.5")]),
        bought=st.lists(
            st.sampled_from([Decimal("10"), Decimal("3"), Decimal("7.5")]),
            min_size=PURCHASES,
            max_size=PURCHASES,
        ),
        granted=st.sampled_from([Decimal("0"), Decimal("4")]),
    )
    def wallet_with_purchases(self, rate: Decimal, bought: list[Decimal], granted: Decimal) -> None:
        session = self.session
        self.customer = f"returns-{next(_ids)}"
        customer = Customer(external_id=self.customer, currency="USD")
        session.add(customer)
        session.flush()
        session.add(
            Subscription(
                external_id=f"{self.customer}-sub",
                customer_id=customer.id,
                plan_code="pro",
                status="active",
            )
        )
        wallet = Wallet(
            customer_id=customer.id,
            status="active",
            currency="USD",
            rate_amount=rate,
            credits_balance=Decimal(0),
            consumed_credits=Decimal(0),
            consumed_amount_cents=0,
        )
        session.add(wallet)
        session.flush()
        self.wallet_id = wallet.id
        if granted:
            ledger.grant_credits(session, wallet, granted, self.now, created_by=ACTOR)
        for amount in bought:
            entry = ledger.open_purchase_entry(session, wallet, amount, self.now, created_by=ACTOR)
            cents = money.purchase_amount_minor(amount, rate, "USD")
            purchase = Purchase(
                wallet_id=wallet.id,
                customer_id=customer.id,
                transaction_id=entry.id,
                status=PurchaseStatus.OPEN,
                currency="USD",
                credit_amount=amount,
                amount_cents=cents,
                provider_invoice_id=_id("in"),
                invoice_status="open",
                subtotal_cents=cents,
                tax_cents=0,
                total_cents=cents,
                created_at=self.now,
            )
            session.add(purchase)
            session.flush()
            self.purchases.append(
                ModelPurchase(
                    purchase.id,
                    purchase.provider_invoice_id or "",
                    _id("pi"),
                    amount,
                    cents,
                )
            )
        session.flush()

    # -- delivering ------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """One event's work, in its own savepoint (a webhook's transaction)."""
        self.now += timedelta(minutes=1)
        with self.session.begin_nested():
            delivery(self.session.connection(), self.now)

    def snapshot(self) -> tuple[Any, ...]:
        self.session.expire_all()
        wallet = self.session.get_one(Wallet, self.wallet_id)
        rows = self.session.execute(
            select(
                Purchase.status,
                Purchase.returned_cents,
                Purchase.dispute_status,
                Purchase.reclaimed_credits,
                Purchase.shortfall_credits,
            ).order_by(Purchase.id)
        ).all()
        entries = self.session.execute(
            select(func.count()).select_from(WalletTransaction)
        ).scalar_one()
        return (wallet.credits_balance, entries, tuple(tuple(row) for row in rows))

    @rule(target=deliveries, which=st.integers(0, PURCHASES - 1))
    def pay(self, which: int) -> Delivery:
        model = self.purchases[which]
        invoice = InvoiceSnapshot(
            id=model.invoice_id,
            status="paid",
            currency="USD",
            subtotal_cents=model.paid_cents,
            tax_cents=0,
            total_cents=model.paid_cents,
            amount_paid_cents=model.paid_cents,
            has_discount=False,
            hosted_invoice_url=None,
            livemode=False,
            metadata={META_PURCHASE_ID: model.id},
            payment_id=model.payment_id,
        )

        def delivery(conn: Connection, now: datetime) -> None:
            settlement.apply_invoice(conn, invoice, now, "stateful")

        self.deliver(delivery)
        model.paid = True
        return delivery

    @rule(
        target=deliveries,
        which=st.integers(0, PURCHASES - 1),
        share=st.sampled_from([1, 3, 7, 50, 100]),
        pending_first=st.booleans(),
    )
    def refund(self, which: int, share: int, pending_first: bool) -> Delivery:
        """A refund of `share` % of the payment (at least a cent), on the payment."""
        model = self.purchases[which]
        amount = max(1, model.paid_cents * share // 100)
        refund_id = _id("re")
        if pending_first:
            self.deliver(self._refund_delivery(model, refund_id, amount, "pending"))
            model.refunds[refund_id] = (amount, "pending")
        delivery = self._refund_delivery(model, refund_id, amount, "succeeded")
        self.deliver(delivery)
        model.refunds[refund_id] = (amount, "succeeded")
        return delivery

    def _refund_delivery(
        self, model: ModelPurchase, refund_id: str, amount: int, status: str
    ) -> Delivery:
        refund = Refund(refund_id, model.payment_id, amount, "USD", status)

        def delivery(conn: Connection, now: datetime) -> None:
            # The payment is looked up before the transaction when not stored yet.
            returns.apply_refunds(
                conn, [refund], now, "stateful", payment_id=model.payment_id,
                purchase_id=model.id,
            )  # fmt: skip

        return delivery

    @rule(
        target=deliveries,
        which=st.integers(0, PURCHASES - 1),
        share=st.sampled_from([5, 33, 100]),
        refunding=st.booleans(),
        refund_first=st.booleans(),
    )
    def credit_note(self, which: int, share: int, refunding: bool, refund_first: bool) -> Delivery:
        """A post-payment credit note; `refunding`: it refunds the payment too, and that
        refund's own event arrives before or after the note's."""
        model = self.purchases[which]
        amount = max(1, model.paid_cents * share // 100)
        refund_id = _id("re")
        note = CreditNote(
            _id("cn"), model.invoice_id, amount, "USD", True, (refund_id,) if refunding else ()
        )

        def delivery(conn: Connection, now: datetime) -> None:
            returns.apply_credit_note(conn, note, now, "stateful")

        if refunding and refund_first:
            self.deliver(self._refund_delivery(model, refund_id, amount, "succeeded"))
        self.deliver(delivery)
        if refunding and not refund_first:
            self.deliver(self._refund_delivery(model, refund_id, amount, "succeeded"))
        model.notes[note.id] = amount
        self.notes[note.id] = (model, note)
        if refunding:
            model.refunds[refund_id] = (amount, "succeeded")
            model.via_note.add(refund_id)
        return delivery

    @rule(target=deliveries, which=st.integers(0, PURCHASES - 1), pick=st.integers(0, 99))
    def refund_fails(self, which: int, pick: int) -> Delivery:
        """A succeeded refund fails after all (`refund.failed`): the money stayed."""
        model = self.purchases[which]
        succeeded = sorted(r for r, (_, status) in model.refunds.items() if status == "succeeded")
        if not succeeded:
            return lambda conn, now: None
        refund_id = succeeded[pick % len(succeeded)]
        amount, _ = model.refunds[refund_id]
        delivery = self._refund_delivery(model, refund_id, amount, "failed")
        self.deliver(delivery)
        model.refunds[refund_id] = (amount, "failed")
        return delivery

    @rule(target=deliveries, pick=st.integers(0, 99))
    def note_voided(self, pick: int) -> Delivery:
        """An issued credit note is voided (`credit_note.voided`): it gives nothing back,
        and a refund it made counts on its own."""
        if not self.notes:
            return lambda conn, now: None
        model, note = self.notes.pop(sorted(self.notes)[pick % len(self.notes)])
        voided = dataclasses.replace(note, voided=True)

        def delivery(conn: Connection, now: datetime) -> None:
            returns.apply_credit_note(conn, voided, now, "stateful")

        self.deliver(delivery)
        del model.notes[note.id]
        model.via_note.difference_update(note.refund_ids)
        return delivery

    @rule(target=deliveries, which=st.integers(0, PURCHASES - 1))
    def dispute_opens(self, which: int) -> Delivery:
        """`charge.dispute.created`, possibly delivered after its `closed` event: a
        closed dispute stays closed."""
        model = self.purchases[which]
        closed = model.dispute in ("won", "lost")
        delivery = self._dispute(model, DisputeOutcome.OPEN)
        if closed:
            model.dispute = self._closed_as[model.id]
        return delivery

    @rule(target=deliveries, which=st.integers(0, PURCHASES - 1), won=st.booleans())
    def dispute_closes(self, which: int, won: bool) -> Delivery:
        model = self.purchases[which]
        if model.dispute in ("won", "lost"):
            return lambda conn, now: None
        return self._dispute(model, DisputeOutcome.WON if won else DisputeOutcome.LOST)

    def _dispute(self, model: ModelPurchase, outcome: DisputeOutcome) -> Delivery:
        dispute = Dispute(f"dp_{model.id}", model.payment_id, model.paid_cents, "USD", outcome)

        def delivery(conn: Connection, now: datetime) -> None:
            returns.apply_dispute(conn, dispute, now, "stateful", purchase_id=model.id)

        self.deliver(delivery)
        if outcome != DisputeOutcome.OPEN:
            self._closed_as[model.id] = outcome.value
        model.dispute = outcome.value
        return delivery

    @rule(cents=st.integers(1, 1500))
    def spend(self, cents: int) -> None:
        request = credits.CreditApplicationInput(
            invoice_external_id=_id("bill"),
            external_customer_id=self.customer,
            invoice_type="usage",
            currency="USD",
            subtotal_amount_cents=cents,
        )
        with self.session.begin_nested():
            credits.apply_credits(self.session, request, self.now, created_by=ACTOR)

    @rule(delivery=deliveries)
    def repeat(self, delivery: Delivery) -> None:
        before = self.snapshot()
        self.deliver(delivery)
        assert self.snapshot() == before

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def balance_is_the_ledger_and_never_negative(self) -> None:
        if not self.purchases:
            return
        self.session.expire_all()
        wallet = self.session.get_one(Wallet, self.wallet_id)
        assert wallet.credits_balance >= 0
        assert wallet.credits_balance == ledger.ledger_balance(self.session, self.wallet_id)

    @invariant()
    def credits_out_follow_the_money(self) -> None:
        if not self.purchases:
            return
        self.session.expire_all()
        taken_by_purchases = Decimal(0)
        for model in self.purchases:
            row = self.session.get_one(Purchase, model.id)
            assert row.returned_cents == model.returned()
            assert row.dispute_status == model.dispute
            out, short = row.reclaimed_credits, row.shortfall_credits
            taken = out - short
            assert 0 <= short <= out <= model.credits
            assert 0 <= taken <= model.credits
            if not model.paid:
                assert out == 0  # no credits, nothing to take
                continue
            held = model.dispute in ("open", "lost")
            if held or model.returned() == model.paid_cents:
                assert out == model.credits
            else:
                assert out == money.returned_credits(
                    model.credits, model.returned(), model.paid_cents
                )
            if model.returned() == model.paid_cents:
                assert row.status == PurchaseStatus.REFUNDED
            else:
                assert row.status == PurchaseStatus.SETTLED
            taken_by_purchases += taken
        kinds = {
            TransactionStatus.REFUNDED: Decimal(1),
            TransactionStatus.DISPUTED: Decimal(1),
            TransactionStatus.REINSTATED: Decimal(-1),
        }
        in_ledger = Decimal(0)
        for kind, amount in self.session.execute(
            select(WalletTransaction.transaction_status, WalletTransaction.credit_amount).where(
                WalletTransaction.wallet_id == self.wallet_id,
                WalletTransaction.status == EntryStatus.SETTLED,
                WalletTransaction.transaction_status.in_(list(kinds)),
            )
        ):
            in_ledger += kinds[TransactionStatus(kind)] * amount
        assert in_ledger == taken_by_purchases


def test_credits_follow_the_money_back_out_under_random_histories(
    connection: Connection,
) -> None:
    run_state_machine_as_test(
        lambda: ReturnsMachine(connection),
        settings=settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
