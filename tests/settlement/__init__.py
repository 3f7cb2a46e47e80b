"""Tests of gateway/settlement.py: applying what the provider says of an invoice."""
