"""Tests of gateway/providers/: the payment-provider boundary."""
