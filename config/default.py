"""Default settings. Every name can be overridden by an environment variable of the
same name (see gateway/settings.py), or by a file named in GATEWAY_SETTINGS."""

# SQLAlchemy URL. Empty means a SQLite file in the instance folder.
DATABASE_URL = ""
# Connections per process to PostgreSQL (plus 10 overflow): keep gunicorn's threads below.
GATEWAY_DB_POOL_SIZE = 10
# Comma-separated bearer keys accepted on /api/v1. Empty: every call is refused.
GATEWAY_API_KEYS = ""

# Stripe. Without a secret key, purchases answer payment_provider_unavailable.
STRIPE_SECRET_KEY = ""
STRIPE_WEBHOOK_SECRETS = ""
STRIPE_API_BASE = ""
STRIPE_TAX_MODE = ""  # automatic | rates | none; empty: rates when ids are set, else none
STRIPE_TAX_RATE_IDS = ""
STRIPE_COLLECTION_METHOD = "charge_automatically"  # or send_invoice
STRIPE_DAYS_UNTIL_DUE = 30
STRIPE_MAX_NETWORK_RETRIES = 2
STRIPE_TIMEOUT_SECONDS = 20
STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300
STRIPE_WEBHOOK_MAX_BODY_BYTES = 262144

# Idempotency keys are kept this long (hours) and then deleted.
IDEMPOTENCY_KEY_TTL_HOURS = 24
# Stuck purchases no caller can claim and Stripe never finalized are failed by reconcile
# after this (minutes).
PURCHASE_STUCK_GRACE_MINUTES = 60
# A purchase's calls to Stripe together, at most (seconds; below gunicorn's 30 s worker
# timeout less a margin: 1 to 25). Past it the caller gets 503 payment_provider_unavailable.
PURCHASE_DEADLINE_SECONDS = 20
# Rows handled per transaction by the expiry sweep.
EXPIRY_BATCH_SIZE = 500

# Largest JSON body accepted on the API.
MAX_CONTENT_LENGTH = 65536

# /metrics answers only with "Authorization: Bearer <token>" when set. Empty: open
# (then keep it off the public network: see README, Operations).
METRICS_BEARER_TOKEN = ""

# Stored Stripe events processed or ignored are deleted this many days after they were
# received (`gateway webhooks purge`); failed ones are kept until they succeed.
WEBHOOK_EVENT_RETENTION_DAYS = 90

# production (default) or development: development allows a missing SECRET_KEY (one is
# made per process) and a console session cookie without the Secure flag (plain http).
GATEWAY_ENV = "production"
# Signs the console's session cookie and CSRF tokens. Without it (outside development)
# the console answers 503; the API and commands do not need it.
SECRET_KEY = ""
# Where failed console sign-ins are counted (limits storage URI): memory:// counts per
# process; use e.g. redis://host:6379 to count across processes and hosts.
CONSOLE_RATE_LIMIT_STORAGE_URI = "memory://"
# Set by `make run` when it starts the local Stripe sandbox: the console says so.
# Refused with a live Stripe key.
STRIPE_SANDBOX = ""
# A console session lasts this long after sign-in.
PERMANENT_SESSION_LIFETIME = 8 * 3600

# Outgoing events (webhooks to the billing core, `gateway worker`).
# Endpoint URLs must be https://; true also allows http:// (development and tests only).
OUTGOING_WEBHOOKS_ALLOW_HTTP = False
# Seconds to wait before each retry of a failed delivery; after the last, it is failed.
OUTGOING_WEBHOOK_RETRY_SCHEDULE = "5,300,1800,7200,18000,36000"
# One delivery attempt's timeout (connect, and each read).
OUTGOING_WEBHOOK_TIMEOUT_SECONDS = 10
# Endpoints one worker delivers to at the same time (one thread per endpoint's queue).
OUTGOING_WEBHOOK_CONCURRENCY = 8
# Events are kept this many days, then purged by the worker once nothing is left to send.
EVENT_RETENTION_DAYS = 30

# Logs on standard error: `text` (lines for people) or `json` (one object per line:
# requests, Stripe events and everything else; see README, Logs).
LOG_FORMAT = "text"
