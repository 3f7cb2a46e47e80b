"""The ledger invariant under random histories, on both databases.

A hypothesis state machine drives the wallet use cases (create with grants, top-ups,
deductions, expiration changes, terminations, time passing, expiry sweeps, and new
wallets after old ones end) and checks after every step that each stored balance
equals the sum of its settled entries (`ledger_balance`), is never negative, matches
a plain model of what should have happened, and that a customer never holds two
active wallets.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

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

from gateway import ledger, money, wallets
from gateway.errors import DomainError, ValidationFailed, WalletAlreadyExists, WalletIsTerminated
from gateway.models import Customer, Subscription, Wallet, WalletStatus

_ids = itertools.count()

credit_amounts = st.one_of(
    st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("1000"), places=5),
    st.decimals(min_value=Decimal("0.00001"), max_value=money.MAX_CREDITS, places=5),
)
rates = st.sampled_from([Decimal("1"), Decimal("0.33333"), Decimal("5.00"), Decimal("1000000")])
hours = st.integers(min_value=1, max_value=72)
customer_index = st.integers(min_value=0, max_value=1)

ACTOR = "operator:stateful"


@dataclass
class ModelWallet:
    customer: int
    balance: Decimal
    active: bool
    expiration_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expiration_at is not None and self.expiration_at <= now


class WalletLedgerMachine(RuleBasedStateMachine):
    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.savepoint = connection.begin_nested()
        self.session = Session(bind=connection, join_transaction_mode="create_savepoint")
        self.now = datetime(2031, 1, 1, tzinfo=UTC)
        self.customers: list[str] = []
        for _ in range(2):
            external_id = f"stateful-{next(_ids)}"
            customer = Customer(external_id=external_id, currency="USD")
            self.session.add(customer)
            self.session.flush()
            self.session.add(
                Subscription(
                    external_id=f"{external_id}-sub",
                    customer_id=customer.id,
                    plan_code="pro",
                    status="active",
                )
            )
            self.customers.append(external_id)
        self.session.flush()
        self.wallets: dict[str, ModelWallet] = {}
        self.latest: dict[int, str] = {}  # customer -> its newest wallet

    def teardown(self) -> None:
        self.session.close()
        self.savepoint.rollback()

    # -- helpers ----------------------------------------------------------------------

    def attempt(self, action: Callable[[], Any]) -> DomainError | None:
        """Run a use case in its own savepoint, as a request's transaction would."""
        try:
            with self.session.begin_nested():
                action()
        except DomainError as exc:
            return exc
        return None

    def usable(self, wallet_id: str) -> bool:
        model = self.wallets[wallet_id]
        return model.active and not model.expired(self.now)

    def end(self, wallet_id: str) -> None:
        self.wallets[wallet_id].active = False
        self.wallets[wallet_id].balance = Decimal(0)

    # -- rules --------------------------------------------------------------------------

    @initialize(
        rate=rates,
        granted=credit_amounts,
        expires_in=st.none() | hours,
    )
    def first_wallets(self, rate: Decimal, granted: Decimal, expires_in: int | None) -> None:
        for who in range(len(self.customers)):
            self.create_wallet(who, rate, granted, expires_in)

    @rule(
        who=customer_index,
        rate=rates,
        granted=st.none() | credit_amounts,
        expires_in=st.none() | hours,
    )
    def create_wallet(
        self, who: int, rate: Decimal, granted: Decimal | None, expires_in: int | None
    ) -> None:
        expiration = self.now + timedelta(hours=expires_in) if expires_in else None
        created: list[str] = []
        data = wallets.WalletInput(
            external_customer_id=self.customers[who],
            rate_amount=rate,
            granted_credits=granted,
            expiration_at=expiration,
        )
        error = self.attempt(
            lambda: created.append(
                wallets.create_wallet(self.session, data, self.now, created_by=ACTOR).wallet.id
            )
        )
        current = self.latest.get(who)
        if current is not None and self.usable(current):
            assert isinstance(error, WalletAlreadyExists)
            return
        assert error is None, error
        if current is not None and self.wallets[current].active:
            self.end(current)  # expired, not swept: recorded by the creation
        [wallet_id] = created
        self.wallets[wallet_id] = ModelWallet(who, granted or Decimal(0), True, expiration)
        self.latest[who] = wallet_id

    @precondition(lambda self: self.latest)
    @rule(who=customer_index, granted=credit_amounts)
    def top_up(self, who: int, granted: Decimal) -> None:
        wallet_id = self.latest.get(who)
        if wallet_id is None:
            return
        error = self.attempt(
            lambda: wallets.top_up(
                self.session, wallet_id, granted=granted, paid=None, now=self.now, created_by=ACTOR
            )
        )
        if self.usable(wallet_id):
            assert error is None, error
            self.wallets[wallet_id].balance += granted
        else:
            assert isinstance(error, WalletIsTerminated)

    @precondition(lambda self: self.latest)
    @rule(who=customer_index, share=st.fractions(min_value=0, max_value=1))
    def deduct(self, who: int, share: Any) -> None:
        """Credits consumed by an invoice (the ledger primitive credit applications use)."""
        wallet_id = self.latest.get(who)
        if wallet_id is None or not self.usable(wallet_id):
            return
        model = self.wallets[wallet_id]
        credits = (model.balance * Decimal(share.numerator) / Decimal(share.denominator)).quantize(
            money.CREDIT_QUANTUM
        )
        credits = min(credits, model.balance)
        if credits <= 0:
            return

        def consume() -> None:
            wallet = ledger.lock_wallet(self.session, wallet_id)
            cents = money.balance_minor(credits, wallet.rate_amount, wallet.currency)
            ledger.consume_credits(self.session, wallet, credits, cents, self.now, created_by=ACTOR)

        assert self.attempt(consume) is None
        model.balance -= credits

    @precondition(lambda self: self.latest)
    @rule(who=customer_index, expires_in=st.none() | st.integers(min_value=-5, max_value=72))
    def change_expiration(self, who: int, expires_in: int | None) -> None:
        wallet_id = self.latest.get(who)
        if wallet_id is None:
            return
        expiration = None if expires_in is None else self.now + timedelta(hours=expires_in)
        error = self.attempt(
            lambda: wallets.update_wallet(
                self.session, wallet_id, expiration_at=expiration, now=self.now
            )
        )
        if not self.usable(wallet_id):
            assert isinstance(error, WalletIsTerminated)
        elif expiration is not None and expiration <= self.now:
            assert isinstance(error, ValidationFailed)
        else:
            assert error is None, error
            self.wallets[wallet_id].expiration_at = expiration

    @precondition(lambda self: self.latest)
    @rule(who=customer_index)
    def terminate(self, who: int) -> None:
        wallet_id = self.latest.get(who)
        if wallet_id is None:
            return
        assert (
            self.attempt(
                lambda: wallets.terminate_wallet(
                    self.session, wallet_id, self.now, created_by=ACTOR
                )
            )
            is None
        )
        self.end(wallet_id)

    @rule(elapsed=st.integers(min_value=0, max_value=48))
    def time_passes(self, elapsed: int) -> None:
        self.now += timedelta(hours=elapsed)

    @rule(batch_size=st.integers(min_value=1, max_value=3))
    def sweep(self, batch_size: int) -> None:
        swept: list[str] = []
        while True:
            batch: list[str] = []

            def sweep_batch(batch: list[str] = batch) -> None:
                expired = wallets.expire_due_wallets(self.session, self.now, batch_size)
                batch.extend(expired.wallet_ids)

            assert self.attempt(sweep_batch) is None
            swept += batch
            if len(batch) < batch_size:
                break
        due = {
            wallet_id
            for wallet_id, model in self.wallets.items()
            if model.active and model.expired(self.now)
        }
        assert set(swept) == due
        for wallet_id in due:
            self.end(wallet_id)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def balances_equal_their_ledgers(self) -> None:
        self.session.expire_all()
        for wallet_id, model in self.wallets.items():
            wallet = self.session.get(Wallet, wallet_id)
            assert wallet is not None
            assert wallet.credits_balance >= 0
            assert wallet.credits_balance == ledger.ledger_balance(self.session, wallet_id)
            assert wallet.credits_balance == model.balance
            assert (wallet.status == WalletStatus.ACTIVE) == model.active
            if not model.active:
                assert wallet.credits_balance == 0
                assert wallet.terminated_at is not None

    @invariant()
    def at_most_one_active_wallet_per_customer(self) -> None:
        rows = self.session.execute(
            select(Wallet.customer_id, func.count())
            .where(Wallet.status == WalletStatus.ACTIVE)
            .group_by(Wallet.customer_id)
        ).all()
        assert all(count == 1 for _, count in rows)


def test_ledger_invariants_hold_under_random_histories(connection: Connection) -> None:
    run_state_machine_as_test(
        lambda: WalletLedgerMachine(connection),
        settings=settings(
            max_examples=20,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
