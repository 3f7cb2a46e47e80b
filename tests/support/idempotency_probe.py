"""A test-only endpoint that exercises the `@endpoint` idempotency machinery.

Real views either finish in one transaction or (purchases) commit before a network
call and may then fail. This probe does each of those on demand, so the tests can
drive every path of `gateway.api.idempotency` through the real framework. It is
registered only on the test apps and kept out of the OpenAPI document.

POST /api/v1/_probe/acts {"note": "..."} creates one `Customer` whose name records
`g.idempotency_scope` (the effect the tests count), unless a customer with that name
exists already, in which case it is found and reused, as a resumable use case does.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from flask import Blueprint, Flask, g
from marshmallow import Schema, fields
from sqlalchemy import select

from gateway.api.auth import require_api_key
from gateway.api.framework import OPERATIONS, Reply, endpoint
from gateway.db import get_session, new_id
from gateway.errors import PaymentProviderUnavailable, ValidationFailed
from gateway.models import Customer
from gateway.purchases import RequestScope

probe = Blueprint("idempotency_probe", __name__, url_prefix="/api/v1/_probe")
probe.before_request(require_api_key)

# What the next calls do, in order ("ok" once the queue is empty).
BEHAVIOUR: deque[str] = deque()
# For "commit_then_wait": set once the mid-way commit is done; the view then waits
# for `PROCEED` before it answers.
COMMITTED = threading.Event()
PROCEED = threading.Event()


class ProbeBody(Schema):
    note = fields.String(required=True)


class ProbeAnswer(Schema):
    customer_id = fields.String()
    scope = fields.String(allow_none=True)
    resumed = fields.Boolean()


@endpoint(probe, "/acts", "POST", summary="test probe", body=ProbeBody, response=ProbeAnswer,
          status=201)  # fmt: skip
def act(body: dict[str, Any]) -> Reply:
    behaviour = BEHAVIOUR.popleft() if BEHAVIOUR else "ok"
    session = get_session()
    request_scope: RequestScope | None = g.idempotency_scope
    scope = request_scope.name if request_scope is not None else None
    customer = None
    if scope is not None:
        customer = session.execute(
            select(Customer).where(Customer.name == scope[:255])
        ).scalar_one_or_none()
    resumed = customer is not None
    if customer is None:
        customer = Customer(
            external_id=f"{body['note']}-{new_id('probe')}",
            currency="USD",
            name=scope[:255] if scope is not None else None,
        )
        session.add(customer)
        session.flush()
    if behaviour.startswith("commit_then_"):
        session.commit()
        behaviour = behaviour.removeprefix("commit_then_")
    if behaviour == "wait":
        COMMITTED.set()
        assert PROCEED.wait(timeout=30)
    elif behaviour == "fail_503":
        raise PaymentProviderUnavailable("the provider is down", details={"provider": ["down"]})
    elif behaviour == "refuse":
        raise ValidationFailed("refused by the probe", details={"note": ["refused"]})
    elif behaviour == "crash":
        raise RuntimeError("the probe crashed")
    return Reply({"customer_id": customer.id, "scope": scope, "resumed": resumed}, 201)


# Keep the probe out of the OpenAPI document of the real service.
OPERATIONS[:] = [op for op in OPERATIONS if not op.rule.startswith("/api/v1/_probe/")]


def install(app: Flask) -> Flask:
    app.register_blueprint(probe)
    return app


def reset() -> None:
    BEHAVIOUR.clear()
    COMMITTED.clear()
    PROCEED.clear()
