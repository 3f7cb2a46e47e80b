"""The OpenAPI 3 document, built from the `@endpoint` declarations and their schemas."""

from __future__ import annotations

import re
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response

from gateway.api import api_v1
from gateway.api.errors import STATUS_BY_CODE
from gateway.api.fields import DecimalString, UTCDateTimeField
from gateway.api.framework import (
    BODY_ERRORS,
    COMMON_ERRORS,
    OPERATIONS,
    Operation,
    json_response,
)
from gateway.api.schemas import ErrorSchema

docs = Blueprint("docs", __name__)

_PATH_ARG = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def build_spec() -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Credit gateway",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Prepaid credits and wallets, purchased through Stripe invoices."},
    )
    plugin.converter.map_to_openapi_type(DecimalString, "string", "decimal")  # type: ignore[union-attr]
    plugin.converter.map_to_openapi_type(UTCDateTimeField, "string", "date-time")  # type: ignore[union-attr]
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=ErrorSchema)

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path = _PATH_ARG.sub(r"{\1}", op.rule)
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.view_name,
            "responses": {},
        }
        parameters: list[Any] = [
            {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
            for name in _PATH_ARG.findall(op.rule)
        ]
        if op.query is not None:
            parameters.append({"in": "query", "schema": op.query})
        if op.method == "POST" and op.authenticated:
            parameters.append(
                {
                    "in": "header",
                    "name": "Idempotency-Key",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                    "description": "Repeat a POST safely: same key and body replay the answer.",
                }
            )
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": op.body}},
            }
        success: dict[str, Any] = {"description": HTTPStatus(op.status).phrase}
        if op.response is not None:
            success["content"] = {"application/json": {"schema": op.response}}
        operation["responses"][str(op.status)] = success
        for status, description in op.extra_statuses.items():
            operation["responses"][str(status)] = {**success, "description": description}
        codes = list(op.errors)
        if op.body is not None:
            codes += BODY_ERRORS
        if op.authenticated:
            codes += COMMON_ERRORS
            operation["security"] = [{"bearer": []}]
        else:
            codes.append("internal_error")
        by_status: dict[int, list[str]] = {}
        for code in dict.fromkeys(codes):
            by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
        for status, status_codes in sorted(by_status.items()):
            operation["responses"][str(status)] = {
                "description": "Error codes: " + ", ".join(status_codes),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
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
