"""Tests of gateway/ledger.py and actors.py: the balance and who changed it."""
