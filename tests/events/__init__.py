"""Tests of gateway/events.py, delivery.py, webhook_endpoints.py, worker.py: outgoing events."""
