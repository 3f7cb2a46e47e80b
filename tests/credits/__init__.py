"""Tests of gateway/credits.py: credit applications."""
