"""Tests of gateway/api/: the HTTP contract (errors, auth, idempotency, OpenAPI, health
and clients)."""
