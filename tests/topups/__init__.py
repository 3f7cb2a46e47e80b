"""Tests of gateway/topups.py, rules.py, intervals.py: automatic top-ups."""
