"""Configuration: `config/default.py`, then an optional file, then the environment.

The Flask config holds raw values; `Settings` is the typed, validated view the rest
of the service reads (`current_settings()` inside a request or CLI command).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from gateway.actors import DEFAULT_API_KEY_LABEL, is_valid_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "config"

# Names an environment variable may override, with the type to parse it as.
_ENV_TYPES: dict[str, type | str] = {
    "DATABASE_URL": str,
    "GATEWAY_DB_POOL_SIZE": int,
    "GATEWAY_API_KEYS": str,
    "STRIPE_SECRET_KEY": str,
    "STRIPE_WEBHOOK_SECRETS": str,
    "STRIPE_API_BASE": str,
    "STRIPE_TAX_MODE": str,
    "STRIPE_TAX_RATE_IDS": str,
    "STRIPE_COLLECTION_METHOD": str,
    "STRIPE_DAYS_UNTIL_DUE": int,
    "STRIPE_MAX_NETWORK_RETRIES": int,
    "STRIPE_TIMEOUT_SECONDS": int,
    "STRIPE_WEBHOOK_TOLERANCE_SECONDS": int,
    "STRIPE_WEBHOOK_MAX_BODY_BYTES": int,
    "IDEMPOTENCY_KEY_TTL_HOURS": int,
    "PURCHASE_STUCK_GRACE_MINUTES": int,
    "PURCHASE_DEADLINE_SECONDS": int,
    "EXPIRY_BATCH_SIZE": int,
    "MAX_CONTENT_LENGTH": int,
    "METRICS_BEARER_TOKEN": str,
    "WEBHOOK_EVENT_RETENTION_DAYS": int,
    "GATEWAY_ENV": str,
    "SECRET_KEY": str,
    "CONSOLE_RATE_LIMIT_STORAGE_URI": str,
    "STRIPE_SANDBOX": str,
    "OUTGOING_WEBHOOKS_ALLOW_HTTP": "boolean",
    "OUTGOING_WEBHOOK_RETRY_SCHEDULE": str,
    "OUTGOING_WEBHOOK_TIMEOUT_SECONDS": int,
    "OUTGOING_WEBHOOK_CONCURRENCY": int,
    "EVENT_RETENTION_DAYS": int,
    "LOG_FORMAT": str,
}

# gunicorn kills a worker whose request runs longer than this (config/gunicorn.conf.py);
# a purchase must have answered well before.
WORKER_TIMEOUT_SECONDS = 30
# What a request needs besides waiting on the provider (its transactions, the answer).
_REQUEST_MARGIN_SECONDS = 5
# Bounds of the numeric settings: (minimum, maximum or None). A value outside them
# stops the start instead of failing every request later (a webhook tolerance of 0
# refuses every signature; a timeout of 0 fails every Stripe call).
_BOUNDS: dict[str, tuple[int, int | None]] = {
    "GATEWAY_DB_POOL_SIZE": (1, 1000),
    "STRIPE_DAYS_UNTIL_DUE": (1, None),
    "STRIPE_MAX_NETWORK_RETRIES": (0, 10),
    "STRIPE_TIMEOUT_SECONDS": (1, 600),
    "STRIPE_WEBHOOK_TOLERANCE_SECONDS": (1, 86_400),
    "STRIPE_WEBHOOK_MAX_BODY_BYTES": (1024, 16 * 1024 * 1024),
    "IDEMPOTENCY_KEY_TTL_HOURS": (1, 24 * 365),
    "PURCHASE_STUCK_GRACE_MINUTES": (0, None),
    "PURCHASE_DEADLINE_SECONDS": (1, WORKER_TIMEOUT_SECONDS - _REQUEST_MARGIN_SECONDS),
    "EXPIRY_BATCH_SIZE": (1, 100_000),
    "MAX_CONTENT_LENGTH": (1024, None),
    "WEBHOOK_EVENT_RETENTION_DAYS": (7, None),  # Stripe redelivers for 3 days
    "OUTGOING_WEBHOOK_TIMEOUT_SECONDS": (1, 600),
    "OUTGOING_WEBHOOK_CONCURRENCY": (1, 256),
    "EVENT_RETENTION_DAYS": (1, None),
}

TAX_MODES = ("automatic", "rates", "none")
LOG_FORMATS = ("text", "json")
ENVIRONMENTS = ("production", "development")
COLLECTION_METHODS = ("charge_automatically", "send_invoice")


class ConfigurationError(RuntimeError):
    """A setting has a value the service cannot run with."""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_boolean(value: Any) -> bool:
    """A boolean setting: a bool in a settings file; in the environment 1/true/yes/on
    or 0/false/no/off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_env(kind: type | str, raw: str) -> Any:
    if kind == "boolean":
        return parse_boolean(raw)
    assert isinstance(kind, type)
    return kind(raw)


def _retry_schedule(value: Any) -> tuple[int, ...]:
    """OUTGOING_WEBHOOK_RETRY_SCHEDULE: seconds, comma-separated (empty: no retry)."""
    try:
        delays = tuple(int(part) for part in _split(str(value)))
    except ValueError as exc:
        raise ConfigurationError(
            "OUTGOING_WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds, e.g. 5,300,1800"
        ) from exc
    if any(delay < 0 or delay > 30 * 86_400 for delay in delays) or len(delays) > 50:
        raise ConfigurationError(
            "OUTGOING_WEBHOOK_RETRY_SCHEDULE: at most 50 delays of 0 to 2592000 seconds"
        )
    return delays


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_api_keys(value: str) -> tuple[tuple[str, str], ...]:
    """`GATEWAY_API_KEYS` as (label, key) pairs: each entry `LABEL=key` or a bare key
    (label `default`). A key containing `=` must therefore be given with its label."""
    pairs = []
    for entry in _split(value):
        label, separator, key = entry.partition("=")
        if not separator:
            label, key = DEFAULT_API_KEY_LABEL, entry
        label, key = label.strip(), key.strip()
        if not is_valid_name(label) or not key:
            raise ConfigurationError(
                "GATEWAY_API_KEYS entries are `key` or `LABEL=key`, LABEL being 1-64 letters, "
                "digits or `_ . @ -` (a key containing `=` needs its label)"
            )
        pairs.append((label, key))
    return tuple(pairs)


@dataclass(frozen=True)
class Settings:
    database_url: str
    db_pool_size: int
    api_keys: tuple[str, ...]
    api_key_labels: tuple[str, ...]  # the label of each of `api_keys`, in the same order
    stripe_secret_key: str
    stripe_webhook_secrets: tuple[str, ...]
    stripe_api_base: str
    stripe_tax_mode: str
    stripe_tax_rate_ids: tuple[str, ...]
    stripe_collection_method: str
    stripe_days_until_due: int
    stripe_max_network_retries: int
    stripe_timeout_seconds: int
    webhook_tolerance_seconds: int
    webhook_max_body_bytes: int
    idempotency_key_ttl_hours: int
    purchase_stuck_grace_minutes: int
    purchase_deadline_seconds: int
    expiry_batch_size: int
    metrics_bearer_token: str
    webhook_event_retention_days: int
    outgoing_webhooks_allow_http: bool
    outgoing_webhook_retry_schedule: tuple[int, ...]
    outgoing_webhook_timeout_seconds: int
    outgoing_webhook_concurrency: int
    event_retention_days: int
    environment: str
    secret_key: str
    console_rate_limit_storage_uri: str
    stripe_sandbox: bool
    log_format: str = "text"

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @property
    def stripe_livemode(self) -> bool:
        """Events must match the key's mode: `sk_live_`/`rk_live_` keys are live."""
        return "_live_" in self.stripe_secret_key

    @classmethod
    def from_mapping(cls, config: Any) -> Settings:
        tax_rate_ids = _split(str(config["STRIPE_TAX_RATE_IDS"]))
        tax_mode = str(config["STRIPE_TAX_MODE"]).strip() or ("rates" if tax_rate_ids else "none")
        if tax_mode not in TAX_MODES:
            raise ConfigurationError(f"STRIPE_TAX_MODE must be one of {', '.join(TAX_MODES)}")
        if tax_mode == "rates" and not tax_rate_ids:
            raise ConfigurationError("STRIPE_TAX_MODE=rates needs STRIPE_TAX_RATE_IDS")
        collection = str(config["STRIPE_COLLECTION_METHOD"]).strip()
        if collection not in COLLECTION_METHODS:
            raise ConfigurationError(
                f"STRIPE_COLLECTION_METHOD must be one of {', '.join(COLLECTION_METHODS)}"
            )
        log_format = str(config.get("LOG_FORMAT") or "text").strip().lower()
        if log_format not in LOG_FORMATS:
            raise ConfigurationError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        api_keys = parse_api_keys(str(config["GATEWAY_API_KEYS"]))
        number = {name: _bounded(name, config[name], *bounds) for name, bounds in _BOUNDS.items()}
        environment = str(config["GATEWAY_ENV"]).strip()
        if environment not in ENVIRONMENTS:
            raise ConfigurationError(f"GATEWAY_ENV must be one of {', '.join(ENVIRONMENTS)}")
        sandbox = str(config["STRIPE_SANDBOX"]).strip().lower() in ("1", "true", "yes")
        secret_key = str(config["STRIPE_SECRET_KEY"]).strip()
        if sandbox and "_live_" in secret_key:
            raise ConfigurationError("STRIPE_SANDBOX cannot be used with a live STRIPE_SECRET_KEY")
        try:
            allow_http = parse_boolean(config["OUTGOING_WEBHOOKS_ALLOW_HTTP"])
        except ValueError as exc:
            raise ConfigurationError("OUTGOING_WEBHOOKS_ALLOW_HTTP must be true or false") from exc
        return cls(
            database_url=str(config["DATABASE_URL"]),
            db_pool_size=number["GATEWAY_DB_POOL_SIZE"],
            api_keys=tuple(key for _label, key in api_keys),
            api_key_labels=tuple(label for label, _key in api_keys),
            stripe_secret_key=str(config["STRIPE_SECRET_KEY"]).strip(),
            stripe_webhook_secrets=_split(str(config["STRIPE_WEBHOOK_SECRETS"])),
            stripe_api_base=str(config["STRIPE_API_BASE"]).strip().rstrip("/"),
            stripe_tax_mode=tax_mode,
            stripe_tax_rate_ids=tax_rate_ids,
            stripe_collection_method=collection,
            stripe_days_until_due=number["STRIPE_DAYS_UNTIL_DUE"],
            stripe_max_network_retries=number["STRIPE_MAX_NETWORK_RETRIES"],
            stripe_timeout_seconds=number["STRIPE_TIMEOUT_SECONDS"],
            webhook_tolerance_seconds=number["STRIPE_WEBHOOK_TOLERANCE_SECONDS"],
            webhook_max_body_bytes=number["STRIPE_WEBHOOK_MAX_BODY_BYTES"],
            idempotency_key_ttl_hours=number["IDEMPOTENCY_KEY_TTL_HOURS"],
            purchase_stuck_grace_minutes=number["PURCHASE_STUCK_GRACE_MINUTES"],
            purchase_deadline_seconds=number["PURCHASE_DEADLINE_SECONDS"],
            expiry_batch_size=number["EXPIRY_BATCH_SIZE"],
            metrics_bearer_token=str(config["METRICS_BEARER_TOKEN"]).strip(),
            webhook_event_retention_days=number["WEBHOOK_EVENT_RETENTION_DAYS"],
            environment=environment,
            secret_key=str(config["SECRET_KEY"] or ""),
            console_rate_limit_storage_uri=str(config["CONSOLE_RATE_LIMIT_STORAGE_URI"]).strip()
            or "memory://",
            stripe_sandbox=sandbox,
            outgoing_webhooks_allow_http=allow_http,
            outgoing_webhook_retry_schedule=_retry_schedule(
                config["OUTGOING_WEBHOOK_RETRY_SCHEDULE"]
            ),
            outgoing_webhook_timeout_seconds=number["OUTGOING_WEBHOOK_TIMEOUT_SECONDS"],
            outgoing_webhook_concurrency=number["OUTGOING_WEBHOOK_CONCURRENCY"],
            event_retention_days=number["EVENT_RETENTION_DAYS"],
            log_format=log_format,
        )


def _bounded(name: str, value: Any, minimum: int, maximum: int | None) -> int:
    """`value` as an int within [minimum, maximum]; else a `ConfigurationError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from exc
    if number < minimum or (maximum is not None and number > maximum):
        allowed = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
        raise ConfigurationError(f"{name} must be {allowed}, got {number}")
    return number


def load_config(app: Flask, overrides: dict[str, Any] | None = None) -> Settings:
    """Fill `app.config` (defaults, file, environment, overrides) and validate it."""
    app.config.from_pyfile(str(CONFIG_DIR / "default.py"))
    settings_file = os.environ.get("GATEWAY_SETTINGS")
    if settings_file:
        app.config.from_pyfile(settings_file)
    for name, kind in _ENV_TYPES.items():
        if name in os.environ:
            raw = os.environ[name]
            try:
                app.config[name] = _parse_env(kind, raw)
            except ValueError as exc:
                kind_name = kind if isinstance(kind, str) else kind.__name__
                raise ConfigurationError(f"{name} must be {kind_name}, got {raw!r}") from exc
    if overrides:
        app.config.update(overrides)
    if not app.config["DATABASE_URL"]:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        app.config["DATABASE_URL"] = f"sqlite:///{Path(app.instance_path) / 'gateway.sqlite3'}"
    settings = Settings.from_mapping(app.config)
    app.extensions["settings"] = settings
    return settings


def current_settings() -> Settings:
    settings: Settings = current_app.extensions["settings"]
    return settings
