"""Tests of gateway/purchases.py and transitions.py: paid credits through invoices."""
