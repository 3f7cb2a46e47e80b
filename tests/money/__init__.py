"""Tests of gateway/money.py and exact numerics on both databases."""
