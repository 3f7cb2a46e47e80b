"""A production settings file. Copy it, point GATEWAY_SETTINGS at the copy, and keep
secrets in the environment (the environment always wins over files)."""

DATABASE_URL = "postgresql+psycopg://gateway@db.internal:5432/gateway"
STRIPE_TAX_MODE = "automatic"
STRIPE_COLLECTION_METHOD = "charge_automatically"
STRIPE_MAX_NETWORK_RETRIES = 2
EXPIRY_BATCH_SIZE = 1000
# GATEWAY_API_KEYS, STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRETS: set in the environment.
