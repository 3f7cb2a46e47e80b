"""Tests of gateway/webhooks.py: incoming Stripe events."""
