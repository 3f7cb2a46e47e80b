"""What a purchase bills, for any credits, rate and currency: a property test."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from gateway import money
from gateway.errors import AmountTooLarge, AmountTooSmall, ValidationFailed
from gateway.providers.stripe.client import StripeProvider
from gateway.providers.stripe.limits import (
    charge_step_minor,
    maximum_charge_minor,
    minimum_charge_minor,
)
from gateway.purchases import check_purchase_amount

credits = st.decimals(min_value=Decimal("0.00001"), max_value=money.MAX_CREDITS, places=5)
rates = st.decimals(min_value=Decimal("0.00001"), max_value=money.MAX_RATE, places=5)
currencies = st.sampled_from(sorted(money.SUPPORTED_CURRENCIES))
PROVIDER = StripeProvider(stripe.StripeClient("sk_test_limits"), tax_mode="none")  # no calls


@given(credits=credits, rate=rates, currency=currencies)
def test_a_purchase_bills_credits_times_rate_halves_up_within_stripes_limits(
    credits: Decimal, rate: Decimal, currency: str
) -> None:
    exponent = money.minor_unit_exponent(currency)
    expected = int((credits * rate * 10**exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if expected < minimum_charge_minor(currency):
        with pytest.raises(AmountTooSmall):
            check_purchase_amount(PROVIDER, credits, rate, currency)
    elif expected > maximum_charge_minor(currency):
        with pytest.raises(AmountTooLarge):
            check_purchase_amount(PROVIDER, credits, rate, currency)
    elif expected % charge_step_minor(currency):
        with pytest.raises(ValidationFailed):
            check_purchase_amount(PROVIDER, credits, rate, currency)
    else:
        assert check_purchase_amount(PROVIDER, credits, rate, currency) == expected


@pytest.mark.parametrize(
    ("currency", "step"), [("KWD", 10), ("bhd", 10), ("TND", 10), ("USD", 1), ("JPY", 1)]
)
def test_three_decimal_currencies_charge_in_steps_of_ten_minor_units(
    currency: str, step: int
) -> None:
    assert PROVIDER.charge_step_cents(currency) == step
