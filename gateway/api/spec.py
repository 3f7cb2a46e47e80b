"""The OpenAPI 3 document, built from the `@endpoint` declarations and their schemas."""

from __future__ import annotations

import re
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response
from marshmallow import Schema, fields

from gateway.api import api_v1
from gateway.api.errors import STATUS_BY_CODE, error_body
from gateway.api.fields import STORABLE_TEXT_PATTERN, UTCDateTimeField
from gateway.api.framework import (
    BODY_ERRORS,
    COMMON_ERRORS,
    OPERATIONS,
    Link,
    Operation,
    json_response,
)
from gateway.api.schemas import ErrorSchema

docs = Blueprint("docs", __name__)

_PATH_ARG = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")

# An example for each path parameter, so every operation can be tried from the document.
PATH_PARAMETER_EXAMPLES: dict[str, str] = {
    "external_id": "acme-42",
    "wallet_id": "wal_01JEXAMPLE",
    "transaction_id": "wtx_01JEXAMPLE",
    "endpoint_id": "whe_01JEXAMPLE",
    "event_id": "evt_01JEXAMPLE",
}

# Kept from the field's own schema when `_exact_field` replaces the rest.
_ANNOTATIONS = ("description", "readOnly", "writeOnly", "example", "default")


def _exact_field(
    self: Any, field: fields.Field[Any], ret: dict[str, Any], **_: Any
) -> dict[str, Any]:
    """apispec attribute function: a field that knows its exact schema gives it.

    - `openapi_schema()` on the field: e.g. a decimal's pattern, bounds and number form;
    - `metadata={"openapi": {...}}`: a computed field's schema (`decimal_answer`);
    - `metadata={"schema": SomeSchema}`: a computed field shaped like a schema.
    Nullability (`allow_none`) becomes a `null` alternative.
    """
    fragment: dict[str, Any] | None = None
    describe = getattr(field, "openapi_schema", None)
    if callable(describe):
        fragment = describe()
    elif "openapi" in field.metadata:
        fragment = dict(field.metadata["openapi"])
    elif "schema" in field.metadata:
        fragment = self.resolve_nested_schema(field.metadata["schema"])
    if fragment is None:
        return {}
    kept = {key: ret[key] for key in _ANNOTATIONS if key in ret}
    ret.clear()
    if field.allow_none and fragment.get("type") != "null":
        alternatives = fragment.pop("anyOf", None) or [fragment]
        fragment = {"anyOf": [*alternatives, {"type": "null"}]}
    return {**fragment, **kept}


def _storable_text(
    self: Any, field: fields.Field[Any], ret: dict[str, Any], **_: Any
) -> dict[str, Any]:
    """apispec attribute function: free text says it cannot hold NUL (refused with 422)."""
    if (
        isinstance(field, fields.String)
        and "string" in str(ret.get("type"))
        and not {"pattern", "enum", "format"} & ret.keys()
    ):
        return {"pattern": STORABLE_TEXT_PATTERN}
    return {}


def _body_example(schema: type[Schema]) -> dict[str, Any]:
    """A request body made of its fields' `example` metadata (nested schemas included)."""
    example: dict[str, Any] = {}
    for name, field in schema().fields.items():
        if isinstance(field, fields.Nested) and isinstance(field.nested, type):
            example[field.data_key or name] = _body_example(field.nested)
        elif "example" in field.metadata:
            example[field.data_key or name] = field.metadata["example"]
    return example


def _error_response(codes: list[str], status: int) -> dict[str, Any]:
    """The error shape, narrowed to the status and the codes this operation can answer."""
    return {
        "description": "Error codes: " + ", ".join(codes),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "integer", "enum": [status]},
                                "error": {"type": "string", "enum": [HTTPStatus(status).phrase]},
                                "code": {"type": "string", "enum": codes},
                            },
                        },
                    ]
                },
                "example": error_body(codes[0], "what went wrong, in words", status=status),
            }
        },
    }


def _link(link: Link) -> dict[str, Any]:
    """An OpenAPI link; parameter names get their location (`path.wallet_id`), so no
    client has to guess between a path and a query parameter."""
    [target] = [op for op in OPERATIONS if op.view_name == link.operation]
    in_path = set(_PATH_ARG.findall(target.rule))
    document: dict[str, Any] = {"operationId": link.operation, "description": link.description}
    if link.parameters:
        document["parameters"] = {
            name if "." in name else f"{'path' if name in in_path else 'query'}.{name}": value
            for name, value in link.parameters.items()
        }
    if link.request_body is not None:
        document["requestBody"] = link.request_body
    return document


def _error_codes(op: Operation, path_parameters: list[str]) -> list[str]:
    codes = list(op.errors)
    if op.body is not None:
        codes += BODY_ERRORS
    if op.authenticated:
        codes += COMMON_ERRORS
        if path_parameters or op.query is not None:
            codes.append("validation_errors")  # a NUL in the URL (gateway.api.fields)
    else:
        codes.append("internal_error")
    return list(dict.fromkeys(codes))


def build_spec() -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Credit gateway",
        version="1.0.0",
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": "Prepaid credits and wallets, purchased through Stripe invoices."},
    )
    converter: Any = plugin.converter  # apispec's converter is untyped
    converter.map_to_openapi_type(UTCDateTimeField, "string", "date-time")
    converter.add_attribute_function(_exact_field)
    converter.add_attribute_function(_storable_text)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=ErrorSchema)

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = _PATH_ARG.sub(r"{\1}", op.rule)
        path_parameters = _PATH_ARG.findall(op.rule)
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.view_name,
            "responses": {},
        }
        parameters: list[Any] = [
            {
                "in": "path",
                "name": name,
                "required": True,
                "schema": {"type": "string", "minLength": 1, "pattern": STORABLE_TEXT_PATTERN},
                "example": PATH_PARAMETER_EXAMPLES.get(name),
            }
            for name in path_parameters
        ]
        if op.query is not None:
            parameters.append({"in": "query", "schema": op.query})
        if op.method == "POST" and op.authenticated:
            parameters.append(
                {
                    "in": "header",
                    "name": "Idempotency-Key",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "example": "5f1c0d0e-2a4b-4c8e-9d3f-0a1b2c3d4e5f",
                    "description": "Repeat a POST safely: same key and body replay the answer; "
                    "the same key with another body is refused (422 idempotency_key_reused).",
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": op.body, "example": _body_example(op.body)}
                },
            }
        success: dict[str, Any] = {"description": HTTPStatus(op.status).phrase}
        if op.response is not None:
            success["content"] = {"application/json": {"schema": op.response}}
        if op.links:
            success["links"] = {name: _link(link) for name, link in op.links.items()}
        operation["responses"][str(op.status)] = success
        for status, description in op.extra_statuses.items():
            operation["responses"][str(status)] = {**success, "description": description}
        if op.authenticated:
            operation["security"] = [{"bearer": []}]
        by_status: dict[int, list[str]] = {}
        for code in _error_codes(op, path_parameters):
            by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
        for status, status_codes in sorted(by_status.items()):
            operation["responses"][str(status)] = _error_response(status_codes, status)
        paths.setdefault(path, {})[op.method.lower()] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    return build_spec()


@api_v1.get("/openapi.json")
def openapi_json() -> Response:
    return json_response(openapi_document(), 200)


OPERATIONS.append(
    Operation(
        rule="/api/v1/openapi.json", method="GET", view_name="openapi_json",
        summary="This OpenAPI 3 document", body=None, query=None, response=None,
        status=200, errors=(), authenticated=True,
    )
)  # fmt: skip
