"""The shape every API view shares: parse strictly, run in a unit of work, dump.

A view is declared with `@endpoint(...)`: its body and query schemas, its response
schema and status, and the error codes it can answer. The same declaration feeds
the OpenAPI document (`gateway.api.spec`), so the document cannot drift from the code.

Every authenticated POST honours an `Idempotency-Key` header (`gateway.api.idempotency`):
the view then runs at most once per key, and `flask.g.idempotency_scope` names the key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import Blueprint, Response, g, request
from marshmallow import Schema

from gateway.api import idempotency
from gateway.api.errors import ApiError
from gateway.api.fields import json_decimal, json_integer, refuse_unstorable_text
from gateway.db import get_session, unit_of_work, utcnow
from gateway.providers import deadline
from gateway.settings import current_settings


@dataclass
class Reply:
    """What a view returns: the object to dump with its response schema, and a status."""

    payload: Any
    status: int = 200


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from an operation's answer to the operation that uses its ids.

    `parameters` and `request_body` hold runtime expressions such as
    `$response.body#/wallet/id`, so a client (or stateful testing) can follow them.
    """

    operation: str
    description: str
    parameters: dict[str, str] = field(default_factory=dict)
    request_body: Any = None


@dataclass
class Operation:
    rule: str
    method: str
    view_name: str
    summary: str
    body: type[Schema] | None
    query: type[Schema] | None
    response: type[Schema] | None
    status: int
    errors: Sequence[str]
    authenticated: bool
    extra_statuses: dict[int, str] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)


OPERATIONS: list[Operation] = []

COMMON_ERRORS = ("unauthorized", "internal_error")
BODY_ERRORS = ("validation_errors", "invalid_json", "unsupported_media_type", "payload_too_large")
IDEMPOTENCY_ERRORS = ("validation_errors", "idempotency_key_reused", "idempotency_key_in_progress")


class _Refused(ValueError):
    """JSON the parser reads but the API refuses (the message says why)."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number")


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, unless a key appears twice: parsers disagree on which one wins, so a
    body that means one thing here could mean another to whoever signed or logged it."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Refused(f"the key {json.dumps(key)} appears more than once in an object")
        obj[key] = value
    return obj


def parse_json_body() -> Any:
    """The request's JSON, refusing wrong content types, bad UTF-8, NaN and Infinity,
    and a key repeated within an object.

    Numbers with a fraction become `Decimal`, never `float`.
    """
    if request.mimetype != "application/json":
        raise ApiError(
            "unsupported_media_type", "send the body as JSON (Content-Type: application/json)"
        )
    raw = request.get_data(cache=True)
    try:
        payload = json.loads(
            raw.decode("utf-8"),
            parse_float=json_decimal,
            parse_int=json_integer,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_without_repeated_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        message = "the body is not valid JSON"
        if isinstance(exc, json.JSONDecodeError):
            message += f" (line {exc.lineno}, column {exc.colno})"
        elif isinstance(exc, _Refused):
            message = f"the body is not valid JSON: {exc}"
        raise ApiError("invalid_json", message) from exc
    refuse_unstorable_text(payload)
    return payload


def load_body(schema: Schema) -> dict[str, Any]:
    payload = parse_json_body()
    if not isinstance(payload, dict):
        raise ApiError(
            "validation_errors",
            "the body must be a JSON object",
            {"_schema": ["must be an object"]},
        )
    loaded: dict[str, Any] = schema.load(payload)
    return loaded


def load_query(schema: Schema) -> dict[str, Any]:
    loaded: dict[str, Any] = schema.load(request.args.to_dict(flat=True))
    return loaded


def json_response(payload: Any, status: int) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status=status,
        mimetype="application/json",
    )


def endpoint(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    body: type[Schema] | None = None,
    query: type[Schema] | None = None,
    response: type[Schema] | None = None,
    status: int = 200,
    errors: Sequence[str] = (),
    authenticated: bool = True,
    extra_statuses: dict[int, str] | None = None,
    links: dict[str, Link] | None = None,
) -> Callable[[Callable[..., Reply]], Callable[..., Response]]:
    """Register `view` on `bp` and describe it for the OpenAPI document.

    The view gets the path arguments plus `body=` and/or `query=` (loaded dicts) and
    runs in a unit of work on the request's session: what is left open when it returns
    normally is committed, rolled back if it raises. The payment provider is never
    called inside a transaction: a purchase commits its phase 1 before calling it and
    runs what follows in transactions of its own; the invoices of a wallet a view ended
    are voided once that transaction has committed.
    `links` name the operations that take ids from this one's answer (OpenAPI links).
    """

    # Every authenticated POST accepts an Idempotency-Key (gateway.api.idempotency).
    keyed = method.upper() == "POST" and authenticated
    if keyed:
        errors = (*errors, *IDEMPOTENCY_ERRORS)

    def decorate(view: Callable[..., Reply]) -> Callable[..., Response]:
        full_rule = (bp.url_prefix or "") + rule
        OPERATIONS.append(
            Operation(
                rule=full_rule,
                method=method.upper(),
                view_name=view.__name__,
                summary=summary,
                body=body,
                query=query,
                response=response,
                status=status,
                errors=tuple(errors),
                authenticated=authenticated,
                extra_statuses=extra_statuses or {},
                links=links or {},
            )
        )
        response_schema = response() if response is not None else None

        def answer(kwargs: dict[str, Any]) -> Response:
            reply = view(**kwargs)
            dumped = (
                response_schema.dump(reply.payload)
                if response_schema is not None
                else reply.payload
            )
            return json_response(dumped, reply.status)

        @wraps(view)
        def wrapper(**path_args: Any) -> Response:
            g.idempotency_scope = None
            key = idempotency.requested_key() if keyed else None
            kwargs: dict[str, Any] = dict(path_args)
            if body is not None:
                kwargs["body"] = load_body(body())
            if query is not None:
                kwargs["query"] = load_query(query())
            session = get_session()
            settings = current_settings()
            # Every provider call the request makes (a purchase's, a void after a
            # wallet ends) shares one budget, well below gunicorn's worker timeout.
            with deadline.within(settings.purchase_deadline_seconds):
                if key is not None and "api_principal" in g:
                    return idempotency.execute_once(
                        session,
                        key,
                        lambda: answer(kwargs),
                        now=utcnow(),
                        ttl=timedelta(hours=settings.idempotency_key_ttl_hours),
                    )
                with unit_of_work(session):
                    return answer(kwargs)

        bp.add_url_rule(rule, endpoint=view.__name__, view_func=wrapper, methods=[method.upper()])
        return wrapper

    return decorate
