"""Tests of gateway/wallets.py and expiry.py: the wallet lifecycle."""
