"""Tests of gateway/providers/stripe/: the Stripe client, its stub and the sandbox."""
