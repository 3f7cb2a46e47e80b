"""gateway.money: exact decimals, currency minor units and every rounding rule."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import money
from gateway.money import MoneyError

CURRENCIES = sorted(money.SUPPORTED_CURRENCIES)

credits = st.decimals(
    min_value=Decimal("0.00001"), max_value=money.MAX_CREDITS, places=5, allow_nan=False
)
rates = st.decimals(
    min_value=Decimal("0.00001"), max_value=money.MAX_RATE, places=5, allow_nan=False
)
currencies = st.sampled_from(CURRENCIES)


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("USD", 2), ("EUR", 2), ("usd", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3)],
)
def test_minor_unit_exponent_follows_iso_4217(currency: str, exponent: int) -> None:
    assert money.minor_unit_exponent(currency) == exponent


def test_three_times_0_333_usd_bills_100_cents() -> None:
    assert money.purchase_amount_minor(Decimal("3"), Decimal("0.333"), "USD") == 100


def test_jpy_has_no_minor_unit() -> None:
    assert money.purchase_amount_minor(Decimal("2"), Decimal("100"), "JPY") == 200
    assert money.from_minor(200, "JPY") == Decimal("200")
    assert money.format_amount(Decimal("200"), "JPY") == "200"


def test_kwd_has_three_decimals_and_rounds_halves_up() -> None:
    # 1.2345 KWD is 1234.5 fils: halves go up.
    assert money.purchase_amount_minor(Decimal("1"), Decimal("1.2345"), "KWD") == 1235
    assert money.purchase_amount_minor(Decimal("1"), Decimal("1.2344"), "KWD") == 1234
    assert money.format_amount(Decimal("5"), "KWD") == "5.000"


def test_halves_round_up_not_to_even() -> None:
    # Banker's rounding would give 0 and 2; billing rounds halves up.
    assert money.to_minor_half_up(Decimal("0.005"), "USD") == 1
    assert money.to_minor_half_up(Decimal("0.025"), "USD") == 3
    assert money.to_minor_half_up(Decimal("0.5"), "JPY") == 1


@given(credits, rates, currencies)
def test_purchase_amount_is_the_exact_value_rounded_halves_up(
    quantity: Decimal, rate: Decimal, currency: str
) -> None:
    exact_minor = quantity * rate * Decimal(10) ** money.minor_unit_exponent(currency)
    billed = money.purchase_amount_minor(quantity, rate, currency)
    assert abs(Decimal(billed) - exact_minor) <= Decimal("0.5")
    # A tie (exactly .5) always goes up.
    if exact_minor - exact_minor.to_integral_value(rounding=ROUND_FLOOR) == Decimal("0.5"):
        assert Decimal(billed) > exact_minor


@given(credits, rates, currencies)
def test_balance_value_never_exceeds_what_the_credits_are_worth(
    quantity: Decimal, rate: Decimal, currency: str
) -> None:
    exact_minor = quantity * rate * Decimal(10) ** money.minor_unit_exponent(currency)
    shown = money.balance_minor(quantity, rate, currency)
    assert Decimal(shown) <= exact_minor < Decimal(shown + 1)


@given(st.integers(min_value=1, max_value=10**12), rates, currencies)
def test_credits_for_minor_cover_the_amount_with_the_fewest_credits(
    cents: int, rate: Decimal, currency: str
) -> None:
    needed = money.credits_for_minor(cents, rate, currency)
    assert needed == needed.quantize(money.CREDIT_QUANTUM)
    target = money.from_minor(cents, currency)
    assert needed * rate >= target
    assert (needed - money.CREDIT_QUANTUM) * rate < target


@given(credits, rates)
def test_credits_value_is_exact(quantity: Decimal, rate: Decimal) -> None:
    assert money.credits_value(quantity, rate) == quantity * rate


@given(st.decimals(min_value=0, max_value=Decimal("1e15"), places=10), currencies)
def test_format_amount_is_exact_and_shows_at_least_the_minor_unit(
    amount: Decimal, currency: str
) -> None:
    text = money.format_amount(amount, currency)
    assert Decimal(text) == amount
    places = len(text.partition(".")[2])
    assert places >= money.minor_unit_exponent(currency)


@given(credits)
def test_format_credits_has_five_places_and_round_trips(quantity: Decimal) -> None:
    text = money.format_credits(quantity)
    assert len(text.partition(".")[2]) == 5
    assert money.parse_decimal(text) == quantity


@given(st.integers(min_value=-(10**15), max_value=10**15), currencies)
def test_minor_units_round_trip(cents: int, currency: str) -> None:
    assert money.to_minor_half_up(money.from_minor(cents, currency), currency) == cents


@pytest.mark.parametrize(
    ("taxable", "rate", "tax"),
    [
        (1000, Decimal("20"), 200),
        (5, Decimal("10"), 1),
        (4, Decimal("12.5"), 1),
        (0, Decimal("20"), 0),
    ],
)
def test_tax_rounds_halves_up(taxable: int, rate: Decimal, tax: int) -> None:
    assert money.tax_minor(taxable, rate) == tax


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10", Decimal("10")),
        (" 0.5 ", Decimal("0.5")),
        ("-1.25", Decimal("-1.25")),
        ("2.5e3", Decimal("2500")),
        (7, Decimal("7")),
        (Decimal("0.1"), Decimal("0.1")),
        pytest.param(10**5000, Decimal(10) ** 5000, id="5001-digit-int"),
    ],
)
def test_parse_decimal_accepts_exact_numbers(value: object, expected: Decimal) -> None:
    assert money.parse_decimal(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.1, "not a binary float"),
        (True, "not a boolean"),
        ("NaN", "finite"),
        ("-Infinity", "finite"),
        ("inf", "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        ("1_000", "not a valid decimal"),
        ("\u0661\u0662", "not a valid decimal"),  # Arabic-Indic digits
        ("1,5", "not a valid decimal"),
        ("", "not a valid decimal"),
        ("0x10", "not a valid decimal"),
        ("1e9999999999999999999999", "out of range"),
        (None, "decimal string"),
        ([1], "decimal string"),
    ],
)
def test_parse_decimal_refuses_what_is_not_an_exact_finite_number(
    value: object, message: str
) -> None:
    with pytest.raises(MoneyError, match=message):
        money.parse_decimal(value)


def test_quantizing_refuses_more_than_five_places() -> None:
    assert money.quantize_credits(Decimal("1.5")) == Decimal("1.50000")
    with pytest.raises(MoneyError):
        money.quantize_credits(Decimal("1.000001"))
    with pytest.raises(MoneyError):
        money.quantize_rate(Decimal("0.000001"))
