"""Money and credit arithmetic: exact decimals, one place for every rounding rule.

Pure functions, no I/O. Credits are kept at 5 decimal places; money leaves this
module either as a `Decimal` in currency units or as an `int` of minor units.
"""

from __future__ import annotations

import re
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_UP,
    Decimal,
    InvalidOperation,
    localcontext,
)

CREDIT_PLACES = 5
CREDIT_QUANTUM = Decimal(1).scaleb(-CREDIT_PLACES)  # 0.00001
RATE_PLACES = 5
RATE_QUANTUM = Decimal(1).scaleb(-RATE_PLACES)
AMOUNT_PLACES = CREDIT_PLACES + RATE_PLACES
AMOUNT_QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)

# The largest number of credits or rate a request may carry. Far above any real
# purchase, far below what Numeric(30, 5) can hold, so products never overflow.
MAX_CREDITS = Decimal("1000000000")  # 1e9 credits
MAX_RATE = Decimal("1000000")  # 1e6 currency units per credit

# ISO 4217 currencies whose minor unit differs from 2 decimals. Stripe treats
# these as zero-decimal (amounts are whole units) or three-decimal currencies.
_ZERO_DECIMAL = frozenset(
    {
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG",
        "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
    }
)  # fmt: skip
_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})

# Currencies the service accepts (the ones Stripe can invoice in; the common set).
SUPPORTED_CURRENCIES = frozenset(
    {
        "USD", "EUR", "GBP", "CAD", "AUD", "NZD", "CHF", "SEK", "NOK", "DKK",
        "PLN", "CZK", "HUF", "RON", "BGN", "JPY", "KRW", "SGD", "HKD", "INR",
        "BRL", "MXN", "ZAR", "ILS", "AED", "THB", "MYR", "PHP", "IDR", "TWD",
        "CLP", "VND", "XOF", "XAF", "KWD", "BHD", "JOD", "OMR",
    }
)  # fmt: skip


class MoneyError(ValueError):
    """A value that cannot be used as money or credits."""


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    code = currency.upper()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


# A decimal in plain ASCII notation, optionally with an exponent: "10", "-0.5", "2.5e3".
# Decimal() alone would also take "1_000", "NaN", "Infinity" and non-ASCII digits.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def parse_decimal(value: object) -> Decimal:
    """A finite `Decimal` from a decimal string, an integer or a `Decimal`.

    Binary floats, booleans, NaN, infinities and anything but plain ASCII decimal
    notation are refused with a `MoneyError` saying why.
    """
    if isinstance(value, bool):
        raise MoneyError("must be a decimal number, not a boolean")
    if isinstance(value, float):
        raise MoneyError("must be a decimal string or an integer, not a binary float")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)  # exact, whatever the number of digits
    elif isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_TEXT.fullmatch(text):
            if text.lstrip("+-").lower() in ("nan", "snan", "inf", "infinity"):
                raise MoneyError("must be a finite number")
            raise MoneyError("is not a valid decimal number")
        try:
            result = Decimal(text)
        except InvalidOperation as exc:  # an exponent beyond what Decimal can hold
            raise MoneyError("is out of range") from exc
    else:
        raise MoneyError("must be a decimal string")
    if not result.is_finite():
        raise MoneyError("must be a finite number")
    return result


def quantize_credits(credits: Decimal) -> Decimal:
    """Credits at 5 decimal places; refuses values that need more precision."""
    quantized = credits.quantize(CREDIT_QUANTUM)
    if quantized != credits:
        raise MoneyError(f"credits have at most {CREDIT_PLACES} decimal places")
    return quantized


def returned_credits(purchased: Decimal, returned_cents: int, paid_cents: int) -> Decimal:
    """Credits that follow `returned_cents` of a `paid_cents` payment back out:
    round_half_up(purchased x returned / paid, 5), on the running total of what was
    returned (capped at what was paid), so partial returns add up to exactly the
    purchased credits once everything went back."""
    if paid_cents <= 0 or returned_cents <= 0:
        return Decimal("0").quantize(CREDIT_QUANTUM)
    with localcontext() as context:
        context.prec = 60  # no rounding before the last step, for any balance
        exact = purchased * Decimal(min(returned_cents, paid_cents)) / Decimal(paid_cents)
    return exact.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_UP)


def quantize_rate(rate: Decimal) -> Decimal:
    """A credit rate at 5 decimal places; refuses values that need more precision."""
    quantized = rate.quantize(RATE_QUANTUM)
    if quantized != rate:
        raise MoneyError(f"rate_amount has at most {RATE_PLACES} decimal places")
    return quantized


def credits_value(credits: Decimal, rate: Decimal) -> Decimal:
    """Exact value of `credits` in currency units (no rounding: at most 10 places)."""
    return (credits * rate).quantize(AMOUNT_QUANTUM)


def to_minor_exact(amount: Decimal, currency: str) -> Decimal:
    """`amount` in minor units, still exact (may have a fractional part)."""
    return amount.scaleb(minor_unit_exponent(currency))


def to_minor_half_up(amount: Decimal, currency: str) -> int:
    """`amount` in minor units, rounded to the nearest unit, halves up."""
    return int(to_minor_exact(amount, currency).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_minor_floor(amount: Decimal, currency: str) -> int:
    """`amount` in minor units, rounded down: never more than the value held."""
    return int(to_minor_exact(amount, currency).quantize(Decimal(1), rounding=ROUND_FLOOR))


def from_minor(cents: int, currency: str) -> Decimal:
    """Minor units back to a `Decimal` in currency units."""
    return Decimal(cents).scaleb(-minor_unit_exponent(currency))


def purchase_amount_minor(credits: Decimal, rate: Decimal, currency: str) -> int:
    """What a purchase of `credits` bills before tax, in minor units (halves up)."""
    return to_minor_half_up(credits * rate, currency)


def balance_minor(credits: Decimal, rate: Decimal, currency: str) -> int:
    """The spendable value of a balance in minor units (rounded down)."""
    return to_minor_floor(credits * rate, currency)


def credits_for_minor(cents: int, rate: Decimal, currency: str) -> Decimal:
    """Credits needed to cover `cents` minor units, rounded up to 5 places.

    Rounding up means the wallet never gives away value it did not pay for in
    credits; callers cap the result at the balance.
    """
    exact = from_minor(cents, currency) / rate
    return exact.quantize(CREDIT_QUANTUM, rounding=ROUND_CEILING)


def tax_minor(taxable_cents: int, tax_rate_percent: Decimal) -> int:
    """Tax on `taxable_cents` at a percentage rate, rounded halves up."""
    return int(
        (Decimal(taxable_cents) * tax_rate_percent / Decimal(100)).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
    )


def format_credits(credits: Decimal) -> str:
    """Credits as a fixed 5-place decimal string ("10.00000")."""
    return f"{credits.quantize(CREDIT_QUANTUM):f}"


def format_amount(amount: Decimal, currency: str) -> str:
    """An amount in currency units: exact, trailing zeros trimmed to the minor unit.

    "50.00" for USD, "200" for JPY, "0.999" when the exact value needs it.
    """
    places = minor_unit_exponent(currency)
    normalized = amount.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    shown = max(places, -exponent)
    return f"{amount.quantize(Decimal(1).scaleb(-shown)):f}"


def format_minor(cents: int, currency: str) -> str:
    """Minor units as an amount with its currency, for messages: `2.00 USD`, `500 JPY`."""
    return f"{format_amount(from_minor(cents, currency), currency)} {currency}"
