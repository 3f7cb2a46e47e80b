"""The operator console at /console: the seed's screens, server-rendered.

Jinja templates, one stylesheet served by the app (no CDN), no JavaScript. Operators
sign in with a name and password (`gateway operators create NAME`); the session is
Flask's signed cookie (HttpOnly, SameSite=Lax, Secure outside development); every
form carries a CSRF token (Flask-WTF's `CSRFProtect`) and a one-time form token used
as the operation's idempotency key (`gateway.console.once`).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from flask import Blueprint, Flask
from flask_wtf.csrf import CSRFProtect

console = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
)
csrf = CSRFProtect()


def init_console(app: Flask) -> None:
    """Session and CSRF settings, the sign-in limiter, then the console's routes."""
    from gateway.console import auth, views  # noqa: F401  (attach the routes)
    from gateway.settings import current_settings

    with app.app_context():
        settings = current_settings()
    secret_key = settings.secret_key
    if not secret_key and settings.is_development:
        # Sessions then last as long as the process: fine for a development server.
        secret_key = secrets.token_hex(32)
    app.config.update(
        SECRET_KEY=secret_key or None,
        SESSION_COOKIE_NAME="gateway_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not settings.is_development,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=int(app.config["PERMANENT_SESSION_LIFETIME"])),
        # Checked by the console's own before_request, not on the API or the webhook.
        WTF_CSRF_CHECK_DEFAULT=False,
        # A form stays valid as long as the session: an operator may leave one open.
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    auth.init_sign_in_limiter(app, settings.console_rate_limit_storage_uri)
    app.register_blueprint(console)
