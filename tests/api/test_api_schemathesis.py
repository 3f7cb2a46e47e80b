"""schemathesis drives the app from its own OpenAPI document (WSGI, no network).

Positive and negative cases of every operation (examples, coverage and fuzzing phases),
then the stateful phase following the document's links from a new customer to its
subscription, wallet and ledger. Every built-in check runs, except schemathesis's
"schema-valid request must get 2xx", which cannot know that a 422 such as
`wallet_already_exists` is a business answer: it is replaced by a stricter check of our
own, that a schema-valid request is never refused as malformed. Fixed seeds and bounded
examples keep it deterministic and fast; Stripe is the in-process stub.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import responses
import schemathesis
from flask import Flask
from hypothesis.stateful import Bundle, rule
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from gateway import create_app
from gateway.api.spec import build_spec
from tests.support.config import API_KEY, TEST_SETTINGS

SEED = 20261204
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "auth": {"openapi": {"bearer": {"bearer": API_KEY}}},
        "generation": {"mode": "all", "max-examples": 25, "with-security-parameters": False},
        # Negative cases are the other phases' work; chains of real ids need valid steps.
        "phases": {"stateful": {"generation": {"mode": "positive"}, "link-calibration": False}},
        "checks": {
            "enabled": True,
            "positive_data_acceptance": {"enabled": False},  # replaced, see the docstring
            # DELETE terminates a wallet or subscription: like Lago's, the terminated
            # resource stays readable (its ledger is the audit trail), so a GET after a
            # DELETE answering 200 is the contract, not a use after free.
            "use_after_free": {"enabled": False},
        },
    }
)

# The document is built without a database: it comes from the declarations alone.
create_app(TEST_SETTINGS, bind=create_engine("sqlite://"))
DOCUMENT = build_spec()
schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=CONFIG)


class CurrentApp:
    """The WSGI app schemathesis calls: the running test's app, whose database work is
    rolled back at the end of the test (set by the `under_test` fixture)."""

    target: Flask | None = None
    connection: Connection | None = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        assert self.target is not None, "schemathesis called the app outside a test"
        return self.target(environ, start_response)


CURRENT_APP = CurrentApp()
schema.app = CURRENT_APP


@pytest.fixture
def under_test(
    app: Flask,
    connection: Connection,
    stripe_http: responses.RequestsMock,
) -> Iterator[Flask]:
    CURRENT_APP.target, CURRENT_APP.connection = app, connection
    yield app
    CURRENT_APP.target = CURRENT_APP.connection = None


# The answers of a request refused for its shape, as opposed to a business refusal
# (`wallet_already_exists`, an expiration in the past, a subscription id in use...).
MALFORMED_CODES = {"invalid_json", "unsupported_media_type", "payload_too_large"}
SHAPE_MESSAGES = {
    "the request is not valid",  # the request schema (marshmallow)
    "the body must be a JSON object",
    "the request contains text that cannot be stored",
    "the URL contains NUL characters",
    "Idempotency-Key must be 1 to 255 characters",
}


def schema_valid_request_is_not_refused_as_malformed(ctx: Any, response: Any, case: Any) -> None:
    """A request the document calls valid must never fail our own request validation."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    body = response.json()
    refused_for_shape = body.get("code") in MALFORMED_CODES or (
        body.get("code") == "validation_errors" and body.get("message") in SHAPE_MESSAGES
    )
    assert not refused_for_shape, f"a schema-valid request was refused as malformed: {body}"


CHECKS = [schema_valid_request_is_not_refused_as_malformed]


@schema.parametrize()
@hypothesis.settings(suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
def test_every_operation_holds_to_the_document(case: Any, under_test: Flask) -> None:
    case.call_and_validate(additional_checks=CHECKS)


# --- stateful: links from a customer to everything about it --------------------------

REACHED: dict[str, set[int]] = {}


class Workflow(schema.as_state_machine()):  # type: ignore[misc]
    # schemathesis's root heuristics read `customer.external_id` as a reference to an
    # "External" resource nobody creates, so they never start from POST /customers: the
    # one operation every chain of this API starts from. This rule starts there.
    @rule(
        target=Bundle("catch_all"),
        case=schema["/api/v1/customers"]["POST"].as_strategy(
            generation_mode=GenerationMode.POSITIVE
        ),
    )
    def new_customer(self, case: Any) -> Any:
        step = StepInput.initial(case)
        self.recorder.record_case(case=case)
        self.control.record_step(step, self.recorder)
        return self._step(step)

    def setup(self) -> None:
        # Each scenario starts from the same empty database: hypothesis replays a
        # scenario and expects the same answers.
        assert CURRENT_APP.connection is not None
        self.scenario = CURRENT_APP.connection.begin_nested()

    def teardown(self) -> None:
        self.scenario.rollback()
        super().teardown()

    def after_call(self, response: Any, case: Any) -> None:
        super().after_call(response, case)
        REACHED.setdefault(case.operation.definition.raw["operationId"], set()).add(
            response.status_code
        )

    def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
        super().validate_response(response, case, additional_checks=CHECKS, **kwargs)


def test_stateful_phase_follows_the_links_without_failures(under_test: Flask) -> None:
    REACHED.clear()
    Workflow.run(
        settings=hypothesis.settings(
            max_examples=20,
            derandomize=True,
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )
    succeeded = {operation for operation, statuses in REACHED.items() if statuses & {200, 201}}
    # Its scenarios are random walks: they must start where every chain starts and reach a
    # wallet with real ids. That each link, followed, succeeds is proven step by step in
    # tests/api/test_openapi.py::test_every_link_leads_to_a_success_with_real_ids.
    assert {"upsert_customer", "create_subscription", "create_wallet"} <= succeeded, succeeded
