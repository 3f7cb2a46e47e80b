"""Credit applications: how much of an invoice's subtotal prepaid credits cover."""

from __future__ import annotations

from typing import Any

from gateway import credits
from gateway.api import api_v1
from gateway.api.auth import api_actor
from gateway.api.framework import Reply, endpoint
from gateway.api.schemas import CreditApplicationRequest, CreditApplicationResponse
from gateway.db import get_session, utcnow


@endpoint(
    api_v1, "/credit_applications", "POST",
    summary="Deduct prepaid credits from an invoice's subtotal, before tax (once per invoice)",
    body=CreditApplicationRequest, response=CreditApplicationResponse, status=201,
    errors=["not_found", "currency_mismatch", "invoice_already_applied"],
    extra_statuses={200: "The invoice was answered before: the same answer again"},
)  # fmt: skip
def apply_credits(body: dict[str, Any]) -> Reply:
    result = credits.apply_credits(
        get_session(),
        credits.CreditApplicationInput(**body["credit_application"]),
        utcnow(),
        created_by=api_actor(),
    )
    return Reply({"credit_application": result.application}, 201 if result.created else 200)
