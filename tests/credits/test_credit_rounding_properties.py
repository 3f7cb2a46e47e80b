"""Properties of the deduction rounding, over random balances, rates and subtotals.

The first group checks the arithmetic alone; the second runs the real use case on
the database (SQLite and PostgreSQL) and checks the wallet and its ledger after it.
"""

from __future__ import annotations

import itertools
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from gateway import credits, ledger, money
from gateway.actors import SYSTEM
from gateway.db import utcnow
from gateway.models import Wallet
from tests.support.ledger import wallet_row

CREDIT = Decimal("0.00001")

balances = st.integers(min_value=1, max_value=10**14).map(lambda n: Decimal(n) * CREDIT)
small_balances = st.integers(min_value=1, max_value=10**8).map(lambda n: Decimal(n) * CREDIT)
rates = st.one_of(
    st.sampled_from(
        [Decimal(r) for r in ("0.333", "0.00001", "0.01", "1", "5.00", "1000000", "999999.99999")]
    ),
    st.integers(min_value=1, max_value=10**11).map(lambda n: Decimal(n) * CREDIT),
)
subtotals = st.one_of(
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10**15),
)
currencies = st.sampled_from(["USD", "JPY"])
tax_rates = st.one_of(
    st.none(), st.integers(min_value=0, max_value=10**7).map(lambda n: Decimal(n) * CREDIT)
)


def exact_minor(credit_amount: Decimal, rate: Decimal, currency: str) -> Decimal:
    return (credit_amount * rate).scaleb(money.minor_unit_exponent(currency))


@settings(max_examples=2000, deadline=None)
@given(balance=balances, rate=rates, subtotal=subtotals, currency=currencies)
def test_deduction_stays_within_subtotal_and_balance_value(
    balance: Decimal, rate: Decimal, subtotal: int, currency: str
) -> None:
    value_cents = int(exact_minor(balance, rate, currency))  # floor: both are positive
    deduction = credits.compute_deduction(balance, rate, currency, subtotal)

    assert 0 <= deduction.amount_cents <= min(subtotal, value_cents)
    assert 0 <= deduction.credits <= balance
    assert deduction.credits == deduction.credits.quantize(CREDIT)
    assert (deduction.amount_cents == 0) == (deduction.credits == 0)
    if deduction.amount_cents == 0:
        assert value_cents == 0 or subtotal == 0
        return
    # The credits taken are worth at least what was deducted...
    assert exact_minor(deduction.credits, rate, currency) >= deduction.amount_cents
    if subtotal >= value_cents:
        # ...and a subtotal that uses up the wallet takes all of it: no dust.
        assert deduction.amount_cents == value_cents
        assert deduction.credits == balance
    else:
        # ...while a smaller subtotal is covered in full, for at most one credit
        # quantum more than it is worth.
        assert deduction.amount_cents == subtotal
        assert exact_minor(deduction.credits - CREDIT, rate, currency) < subtotal


@settings(max_examples=500, deadline=None)
@given(subtotal=subtotals, tax_rate=tax_rates)
def test_taxes_and_total_on_what_remains(subtotal: int, tax_rate: Decimal | None) -> None:
    taxes, total = credits.taxes_and_total(subtotal, tax_rate)
    expected = (
        0
        if tax_rate is None
        else int((subtotal * tax_rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    )
    assert taxes == expected
    assert total == subtotal + taxes
    assert 0 <= taxes <= subtotal


_ids = itertools.count()


def _request(
    wallet: Wallet, subtotal: int, tax_rate: Decimal | None = None
) -> credits.CreditApplicationInput:
    return credits.CreditApplicationInput(
        invoice_external_id=f"prop-invoice-{next(_ids)}",
        external_customer_id=wallet.customer.external_id,
        invoice_type="subscription",
        currency=wallet.currency,
        subtotal_amount_cents=subtotal,
        tax_rate=tax_rate,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(balance=balances, rate=rates, subtotal=subtotals, currency=currencies, tax_rate=tax_rates)
def test_applying_credits_moves_the_balance_by_exactly_what_it_consumes(
    db_session: Session,
    *,
    balance: Decimal,
    rate: Decimal,
    subtotal: int,
    currency: str,
    tax_rate: Decimal | None,
) -> None:
    savepoint = db_session.begin_nested()
    try:
        wallet = wallet_row(db_session, balance, rate, currency)
        value_cents = money.balance_minor(balance, rate, currency)

        result = credits.apply_credits(
            db_session, _request(wallet, subtotal, tax_rate), utcnow(), created_by=SYSTEM
        )

        answer = result.application
        db_session.refresh(wallet)
        assert 0 <= answer.amount_cents <= min(subtotal, value_cents)
        assert wallet.credits_balance == balance - answer.credit_amount
        assert wallet.credits_balance >= 0
        assert ledger.ledger_balance(db_session, wallet.id) == wallet.credits_balance
        assert wallet.consumed_credits == answer.credit_amount
        assert wallet.consumed_amount_cents == answer.amount_cents
        if subtotal >= value_cents > 0:
            assert wallet.credits_balance == 0  # exactly zero, no dust
        after = subtotal - answer.amount_cents
        assert answer.subtotal_after_credits_amount_cents == after
        assert answer.taxes_amount_cents == credits.taxes_and_total(after, tax_rate)[0]
        assert answer.total_amount_cents == after + answer.taxes_amount_cents
        assert (answer.status == "applied") == (answer.amount_cents > 0)
    finally:
        savepoint.rollback()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    balance=small_balances,
    rate=rates,
    currency=currencies,
    invoices=st.lists(st.integers(min_value=0, max_value=50_000), min_size=1, max_size=8),
)
def test_a_run_of_invoices_never_deducts_more_than_the_wallet_held(
    db_session: Session, balance: Decimal, rate: Decimal, currency: str, invoices: list[int]
) -> None:
    savepoint = db_session.begin_nested()
    try:
        wallet = wallet_row(db_session, balance, rate, currency)
        initial_value = money.balance_minor(balance, rate, currency)
        deducted = 0
        for subtotal in invoices:
            before = wallet.credits_balance
            answer = credits.apply_credits(
                db_session, _request(wallet, subtotal), utcnow(), created_by=SYSTEM
            )
            db_session.refresh(wallet)
            deducted += answer.application.amount_cents
            assert wallet.credits_balance == before - answer.application.credit_amount
            assert wallet.credits_balance >= 0
        assert deducted <= initial_value
        assert wallet.consumed_amount_cents == deducted
        assert wallet.credits_balance + wallet.consumed_credits == balance
        assert ledger.ledger_balance(db_session, wallet.id) == wallet.credits_balance
    finally:
        savepoint.rollback()
