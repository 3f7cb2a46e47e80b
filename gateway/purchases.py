"""Paid credits: the purchase row first, then the payment provider, then the result."""

from __future__ import annotations

from gateway.wallets import PurchaseOpener, paid_credits_unavailable


def purchase_opener() -> PurchaseOpener:
    """How this request opens purchases: refused until a payment provider is configured."""
    return paid_credits_unavailable
