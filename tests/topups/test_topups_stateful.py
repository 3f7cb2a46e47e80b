"""Automatic top-ups under random histories, on both databases.

A hypothesis state machine drives a wallet with a threshold rule and an interval rule
through credit applications, payments and failures of its top-ups (paid, voided,
uncollectible, payment failed), PUTs that resume its rules and time passing (the
worker's interval duty), and checks after every step that a rule never has two unpaid
top-ups, that a paused rule buys nothing, and that the ledger still adds up.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway import credits, ledger, purchases, settlement, topups, wallets
from gateway.models import (
    Customer,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    RecurringTransactionRule,
    RuleStatus,
    Subscription,
    TransactionStatus,
    Wallet,
    WalletTransaction,
)
from gateway.providers.base import META_PURCHASE_ID, InvoiceSnapshot
from gateway.rules import RuleInput

_ids = itertools.count()
ACTOR = "api:stateful"

threshold_rules = st.sampled_from(
    [
        RuleInput(trigger="threshold", threshold_credits=Decimal("30"), paid_credits=Decimal("20")),
        RuleInput(
            trigger="threshold",
            threshold_credits=Decimal("30"),
            paid_credits=Decimal("5"),
            granted_credits=Decimal("1"),
        ),
        RuleInput(
            trigger="threshold",
            method="target",
            threshold_credits=Decimal("30"),
            target_credits=Decimal("80"),
        ),
    ]
)
interval_rules = st.sampled_from(
    [
        RuleInput(trigger="interval", interval="weekly", paid_credits=Decimal("10")),
        RuleInput(
            trigger="interval", interval="monthly", method="target", target_credits=Decimal("60")
        ),
    ]
)


class TopUpMachine(RuleBasedStateMachine):
    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.savepoint = connection.begin_nested()
        self.session = Session(bind=connection, join_transaction_mode="create_savepoint")
        self.now = datetime(2031, 1, 31, 12, tzinfo=UTC)
        external_id = f"topups-{next(_ids)}"
        customer = Customer(external_id=external_id, currency="USD")
        self.session.add(customer)
        self.session.flush()
        self.session.add(Subscription(external_id=f"{external_id}-sub", customer_id=customer.id,
                                      plan_code="pro", status="active"))  # fmt: skip
        self.session.flush()
        self.customer = external_id
        self.wallet_id = ""
        self.given: list[RuleInput] = []
        self.invoices = itertools.count()
        # rule id -> how many entries it had made when it was seen paused
        self.paused_at: dict[str, int] = {}

    def teardown(self) -> None:
        self.session.close()
        self.savepoint.rollback()

    # -- helpers ------------------------------------------------------------------------

    def unpaid(self) -> list[Purchase]:
        return list(
            self.session.execute(
                select(Purchase)
                .where(
                    Purchase.wallet_id == self.wallet_id,
                    Purchase.status.in_([PurchaseStatus.CREATING, PurchaseStatus.OPEN]),
                )
                .order_by(Purchase.created_at, Purchase.id)
                .execution_options(populate_existing=True)
            ).scalars()
        )

    def invoice(self, purchase: Purchase, status: str) -> InvoiceSnapshot:
        cents = purchase.amount_cents
        return InvoiceSnapshot(
            id=purchase.provider_invoice_id or f"in_stateful{next(self.invoices)}",
            status=status,
            currency="USD",
            subtotal_cents=cents,
            tax_cents=0,
            total_cents=cents,
            amount_paid_cents=cents if status == "paid" else 0,
            has_discount=False,
            hosted_invoice_url=None,
            livemode=False,
            metadata={META_PURCHASE_ID: purchase.id},
        )

    def entries_by_rule(self) -> dict[str, int]:
        rows = self.session.execute(
            select(WalletTransaction.rule_id, func.count())
            .where(
                WalletTransaction.wallet_id == self.wallet_id,
                WalletTransaction.rule_id.is_not(None),
            )
            .group_by(WalletTransaction.rule_id)
        ).all()
        return {rule_id: count for rule_id, count in rows}

    # -- steps --------------------------------------------------------------------------

    @initialize(threshold=threshold_rules, interval=interval_rules)
    def wallet(self, threshold: RuleInput, interval: RuleInput) -> None:
        self.given = [threshold, interval]
        data = wallets.WalletInput(
            external_customer_id=self.customer,
            rate_amount=Decimal("1.00"),
            granted_credits=Decimal("100"),
            recurring_transaction_rules=self.given,
        )
        with self.session.begin_nested():
            result = wallets.create_wallet(
                self.session,
                data,
                self.now,
                created_by=ACTOR,
                provider=purchases.configured_provider,
            )
        self.wallet_id = result.wallet.id

    @rule(subtotal=st.integers(min_value=1, max_value=4000))
    def apply_credits(self, subtotal: int) -> None:
        request = credits.CreditApplicationInput(
            invoice_external_id=f"inv-{next(_ids)}",
            external_customer_id=self.customer,
            invoice_type="usage",
            currency="USD",
            subtotal_amount_cents=subtotal,
        )
        with self.session.begin_nested():
            credits.apply_credits(self.session, request, self.now, created_by=ACTOR)

    @precondition(lambda self: bool(self.unpaid()))
    @rule(which=st.integers(min_value=0, max_value=3))
    def pay(self, which: int) -> None:
        found = self.unpaid()
        purchase = found[which % len(found)]
        with self.session.begin_nested():
            settlement.apply_invoice(
                self.session.connection(), self.invoice(purchase, "paid"), self.now, "test"
            )

    @precondition(lambda self: bool(self.unpaid()))
    @rule(which=st.integers(min_value=0, max_value=3),
          how=st.sampled_from(["void", "uncollectible", "payment_failed"]))  # fmt: skip
    def fail(self, which: int, how: str) -> None:
        found = self.unpaid()
        purchase = found[which % len(found)]
        conn = self.session.connection()
        with self.session.begin_nested():
            if how == "payment_failed":
                snapshot = self.invoice(purchase, "open")
                settlement.record_payment_failure(conn, snapshot, "card declined", self.now, "t")
            else:
                settlement.apply_invoice(conn, self.invoice(purchase, how), self.now, "test")

    @rule()
    def put_the_rules_again(self) -> None:
        with self.session.begin_nested():
            wallets.update_wallet(
                self.session,
                self.wallet_id,
                recurring_transaction_rules=self.given,
                now=self.now,
                provider=purchases.configured_provider,
            )
        self.paused_at.clear()

    @rule(hours=st.integers(min_value=1, max_value=24 * 40))
    def time_passes(self, hours: int) -> None:
        self.now += timedelta(hours=hours)
        with self.session.begin_nested():
            while topups.buy_due_interval_top_ups(self.session, self.now, batch_size=10).rules:
                pass

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def a_rule_never_has_two_unpaid_top_ups(self) -> None:
        if not self.wallet_id:
            return
        rows = self.session.execute(
            select(WalletTransaction.rule_id, func.count())
            .where(
                WalletTransaction.wallet_id == self.wallet_id,
                WalletTransaction.rule_id.is_not(None),
                WalletTransaction.status == EntryStatus.PENDING,
                WalletTransaction.transaction_status == TransactionStatus.PURCHASED,
            )
            .group_by(WalletTransaction.rule_id)
        ).all()
        assert all(count <= 1 for _, count in rows), rows

    @invariant()
    def a_paused_rule_buys_nothing(self) -> None:
        if not self.wallet_id:
            return
        made = self.entries_by_rule()
        for rule_row in self.session.execute(
            select(RecurringTransactionRule)
            .where(RecurringTransactionRule.wallet_id == self.wallet_id)
            .execution_options(populate_existing=True)
        ).scalars():
            if rule_row.status == RuleStatus.PAUSED:
                assert rule_row.paused_reason
                seen = self.paused_at.setdefault(rule_row.id, made.get(rule_row.id, 0))
                assert made.get(rule_row.id, 0) == seen

    @invariant()
    def the_ledger_adds_up(self) -> None:
        if not self.wallet_id:
            return
        wallet = self.session.get_one(Wallet, self.wallet_id, populate_existing=True)
        assert wallet.credits_balance >= 0
        assert ledger.ledger_balance(self.session, self.wallet_id) == wallet.credits_balance


def test_top_up_invariants_hold_under_random_histories(app: Flask, connection: Connection) -> None:
    with app.app_context():
        run_state_machine_as_test(
            lambda: TopUpMachine(connection),
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )
