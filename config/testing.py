"""Settings for the test suite (loaded by tests/conftest.py on top of default.py)."""

GATEWAY_API_KEYS = "test-key-1,test-key-2"
STRIPE_SECRET_KEY = "sk_test_gateway"
STRIPE_WEBHOOK_SECRETS = "whsec_test_primary,whsec_test_secondary"
STRIPE_MAX_NETWORK_RETRIES = 0
