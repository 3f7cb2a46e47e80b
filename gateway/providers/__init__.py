"""Payment providers: the boundary (`base`) and the configured implementation.

`get_provider()` is how the service reaches its provider: one instance (one HTTP
client, one connection pool) per application, built on first use from the settings.
Tests and benchmarks choose what it talks to through configuration alone
(`STRIPE_API_BASE` pointing at a Stripe-compatible server), never by swapping objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from gateway.providers.base import PaymentProvider, ProviderEvent, ProviderNotConfigured
from gateway.settings import Settings

_EXTENSION = "payment_provider"


def build_provider(settings: Settings) -> PaymentProvider:
    """A new provider from `settings`; `ProviderNotConfigured` without a Stripe key."""
    if not settings.stripe_secret_key:
        raise ProviderNotConfigured("STRIPE_SECRET_KEY")
    from gateway.providers.stripe.client import StripeProvider

    return StripeProvider.from_settings(settings)


def get_provider(app: Flask | None = None) -> PaymentProvider:
    """The provider of `app` (default: the current one), built once and then reused."""
    extensions = (app if app is not None else current_app).extensions
    provider: PaymentProvider | None = extensions.get(_EXTENSION)
    if provider is None:
        built = build_provider(extensions["settings"])
        # Two first requests racing here build two; the first stored is kept by all.
        provider = extensions.setdefault(_EXTENSION, built)
    return provider


def provider_if_configured(app: Flask | None = None) -> PaymentProvider | None:
    """`get_provider`, or None when no provider is configured (no Stripe key)."""
    try:
        return get_provider(app)
    except ProviderNotConfigured:
        return None


def read_event(provider: str, event: Mapping[str, Any]) -> ProviderEvent:
    """What a verified event of `provider` means, in the boundary's terms."""
    if provider != "stripe":
        raise ValueError(f"no events are read for provider {provider!r}")
    from gateway.providers.stripe.events import read_event as read_stripe_event

    return read_stripe_event(event)
