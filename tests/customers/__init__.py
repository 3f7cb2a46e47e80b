"""Tests of gateway/customers.py: customers and subscriptions."""
