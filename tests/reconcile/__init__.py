"""Tests of gateway/reconcile/ and cli/reconcile.py: reconciliation."""
