"""What Stripe will charge: the smallest and largest amount per currency, in minor units.

Stripe refuses a charge below its minimum for the currency (and quietly moves an
invoice that small onto the customer's balance instead of collecting it), and refuses
amounts with more than eight digits (99,999,999 minor units: $999,999.99). Checking
both before anything is stored turns those into clear errors for the caller.

It also refuses a card payment in a three-decimal currency (BHD, JOD, KWD, OMR, TND)
whose amount does not end in 0: those amounts must be whole hundredths.

Source: Stripe's "Supported currencies" guide, "Minimum and maximum charge amounts"
and "Three-decimal currencies".
Stripe states minimums for settlement currencies; for any other currency the minimum
is the equivalent of 0.50 USD, which we cannot know without an exchange rate, so those
fall back to 50 minor units (Stripe still refuses what is really too small, and that
answer is reported as `payment_provider_rejected`).
"""

from __future__ import annotations

MINIMUM_CHARGE_MINOR: dict[str, int] = {
    "AED": 200, "AUD": 50, "BGN": 100, "BRL": 50, "CAD": 50, "CHF": 50, "CZK": 1500,
    "DKK": 250, "EUR": 50, "GBP": 30, "HKD": 400, "HUF": 17500, "INR": 50, "JPY": 50,
    "MXN": 1000, "MYR": 200, "NOK": 300, "NZD": 50, "PLN": 200, "RON": 200, "SEK": 300,
    "SGD": 50, "THB": 1000, "USD": 50,
}  # fmt: skip
DEFAULT_MINIMUM_CHARGE_MINOR = 50

# Eight digits for every currency but IDR, which may use twelve.
MAXIMUM_CHARGE_MINOR: dict[str, int] = {"IDR": 999_999_999_999}
DEFAULT_MAXIMUM_CHARGE_MINOR = 99_999_999


def minimum_charge_minor(currency: str) -> int:
    return MINIMUM_CHARGE_MINOR.get(currency.upper(), DEFAULT_MINIMUM_CHARGE_MINOR)


def maximum_charge_minor(currency: str) -> int:
    return MAXIMUM_CHARGE_MINOR.get(currency.upper(), DEFAULT_MAXIMUM_CHARGE_MINOR)


# Card payments in these currencies must be a multiple of 10 minor units.
_TEN_MINOR_UNIT_STEP = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def charge_step_minor(currency: str) -> int:
    """Amounts in `currency` must be a multiple of this many minor units."""
    return 10 if currency.upper() in _TEN_MINOR_UNIT_STEP else 1
