"""Tests of gateway/returns.py: refunds, credit notes and disputes."""
