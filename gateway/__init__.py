"""Credit gateway: prepaid credits sold through Stripe invoices and kept in a ledger."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

__all__ = ["create_app"]


def create_app(
    overrides: dict[str, Any] | None = None, *, bind: Engine | Connection | None = None
) -> Flask:
    """The application factory: config → database → blueprints → errors → CLI.

    `overrides` replace settings (tests); `bind` reuses an engine or connection
    instead of building one from DATABASE_URL (tests, benchmarks).
    """
    from gateway import cli, logs, metrics
    from gateway.api import register_api
    from gateway.api.errors import register_error_handlers
    from gateway.console import init_console
    from gateway.db import Database, build_engine
    from gateway.settings import load_config

    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    settings = load_config(app, overrides)
    logs.configure(
        settings.log_format,
        secrets=(
            *settings.api_keys,
            *settings.stripe_webhook_secrets,
            settings.stripe_secret_key,
            settings.secret_key,
            settings.metrics_bearer_token,
        ),
    )
    logs.init_app(app)

    Database(
        bind
        if bind is not None
        else build_engine(settings.database_url, pool_size=settings.db_pool_size)
    ).init_app(app)
    metrics.init_app(app)
    register_api(app)
    register_error_handlers(app)
    init_console(app)
    cli.register_commands(app)
    return app
