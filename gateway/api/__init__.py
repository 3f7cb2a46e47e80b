"""The JSON API under /api/v1 (bearer keys) and the service endpoints around it."""

from __future__ import annotations

from flask import Blueprint, Flask

from gateway.api.auth import require_api_key
from gateway.api.fields import refuse_nul_in_url

api_v1 = Blueprint("api_v1", __name__, url_prefix="/api/v1")
api_v1.before_request(require_api_key)
api_v1.before_request(refuse_nul_in_url)


def register_api(app: Flask) -> None:
    # Importing the view modules attaches their routes to the blueprints.
    import gateway.api.credit_applications  # noqa: F401
    from gateway.api import customers, events, health, spec, wallets  # noqa: F401

    app.register_blueprint(api_v1)
    app.register_blueprint(health.service)
    app.register_blueprint(spec.docs)
    from gateway.api.webhooks import stripe_webhooks

    app.register_blueprint(stripe_webhooks)
