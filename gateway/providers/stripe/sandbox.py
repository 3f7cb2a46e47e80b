"""A small Stripe-compatible API for tests, benchmarks and the development sandbox:
customers, invoices, items, refunds, invoice payments, credit notes and disputes.

It keeps its objects in memory and answers the way Stripe's v1 API does for the calls
this service makes, in Stripe's JSON shapes (API version of the installed stripe
library), with Stripe's error shape. It can be used two ways:

- over real HTTP: `with StripeStub() as stub:` starts a threaded server on
  127.0.0.1:<free port>; point the service at it with `STRIPE_API_BASE=stub.url`;
- in process, behind `responses`: `stub.register(rsps)` routes every request for
  https://api.stripe.com to the same handler (then `rsps.calls` holds what was sent);
- on its own, for benchmarks or a manual try: `python -m gateway.providers.stripe.sandbox
  --port 12111 [--latency 0.2] [--tax-rate txr_vat=20]`.

Endpoints
    POST /v1/customers                  create (name, email, metadata, ...)
    POST /v1/invoices                   create a draft (customer, currency, metadata,
                                        collection_method, days_until_due, discounts,
                                        automatic_tax, default_tax_rates, ...)
    POST /v1/invoiceitems               create an item, attached to a draft `invoice`
    POST /v1/invoices/{id}/finalize     draft -> open (a zero total becomes paid)
    POST /v1/invoices/{id}/void         open/uncollectible -> void
    GET  /v1/invoices/{id}
    GET  /v1/invoices                   limit, starting_after, ending_before, status,
                                        customer, created / created[gt|gte|lt|lte]
    GET  /v1/invoices/search            query (metadata['k']:'v', status:'paid',
                                        customer:'cus_x', currency:'usd', created>N ...
                                        joined by AND or OR, '-' negates), limit, page
    GET  /v1/refunds                    limit, starting_after, ending_before,
                                        payment_intent, charge, created / created[...]
    GET  /v1/invoice_payments           limit, starting_after, ending_before, invoice,
                                        payment[type], payment[payment_intent], status
    GET  /v1/credit_notes               limit, starting_after, ending_before, invoice,
                                        customer, created / created[...]
    GET  /v1/disputes                   limit, starting_after, ending_before,
                                        payment_intent, charge, created / created[...]
    GET  /v1/disputes/{id}

Behaviour kept from Stripe
    - `Authorization: Bearer sk_test_...` is required (401 otherwise); `api_key=`
      requires one exact key.
    - Unknown parameters are refused (400 "Received unknown parameter"), so a
      misspelled parameter fails here as it would at Stripe.
    - `Idempotency-Key` on a POST: the same key with the same parameters replays the
      first answer (header `Idempotent-Replayed: true`); with other parameters it is
      refused (400, type `idempotency_error`). Answers >= 500 are not remembered.
    - Lists are newest first; list and search page the way stripe-python's
      `auto_paging_iter()` expects.
    - Taxes: `default_tax_rates` must name rates known to the stub (`tax_rates=`, id ->
      percent, exclusive); `automatic_tax[enabled]=true` adds `automatic_tax_percent`.
      Discounts are never applied (the service never asks for one).

Controls for tests
    stub.latency = 0.2                      seconds added to every answer
    stub.fail_next("POST", "/v1/invoiceitems", status=500, after=True)
                                            the next matching request fails; with
                                            after=True it is carried out first and only
                                            its answer is lost (a timeout at Stripe);
                                            status=None drops the connection instead
    gate = stub.hold("POST", "/v1/invoices")
                                            matching requests wait until gate.release()
    stub.mark_paid(invoice_id)              the customer paid (also mark_uncollectible)
    stub.refund(invoice_id)                 a credit note refunds a paid invoice (and,
                                            as at Stripe, makes a refund of its payment)
    stub.refund_payment(invoice_id)         a refund made on the payment alone (Dashboard
                                            "Refund"): the invoice shows nothing
    stub.refund_payment_intent(pi, amount)  a refund of any payment intent
    stub.credit_note(invoice_id, amount, refund=False)
                                            a post-payment credit note crediting the
                                            customer's balance (or, refund=True,
                                            refunding the payment: `refund` does that)
    stub.last_credit_note(invoice_id)       the newest credit note of an invoice
    stub.dispute(invoice_id)                a dispute of the invoice's payment (needs
                                            response); stub.close_dispute(id, "won")
                                            closes it (won, lost, warning_closed)
    stub.event(invoice_id, "invoice.paid")  a Stripe event carrying the invoice
    stub.object_event(obj, "refund.created")
                                            a Stripe event carrying any object (a refund,
                                            credit note, dispute, charge)
    stub.charge_of(payment_intent)          the charge of a payment, its refunds listed
    stub.invoices_with(purchase_id=...)     invoices whose metadata matches
    stub.search_delay = 30.0                invoices become searchable only this long
                                            after they change, as at Stripe
    stub.forget_idempotency_keys()          as Stripe does after 24 hours
    stub.requests                           every request received (RecordedRequest)
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

API_VERSION: str = stripe.api_version
DEFAULT_BASE = "https://api.stripe.com"

Json = dict[str, Any]


class StubError(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"error": {"type": type_, "message": message}}
        if code is not None:
            self.body["error"]["code"] = code
        if param is not None:
            self.body["error"]["param"] = param


class DropConnection(Exception):
    """Close the connection without an answer (a network failure for the client)."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    params: Mapping[str, Any]  # decoded form or query parameters, nested
    form: tuple[tuple[str, str], ...]  # the raw pairs, as sent
    headers: Mapping[str, str]


@dataclass
class _Fault:
    method: str
    path_prefix: str
    status: int | None
    times: int
    after: bool
    type_: str
    message: str
    code: str | None
    retry_after: int | None = None


class Gate:
    """Holds matching requests until `release()`; `arrived` is set when one waits."""

    def __init__(self, method: str, path_prefix: str) -> None:
        self.method = method
        self.path_prefix = path_prefix
        self.arrived = threading.Event()
        self._open = threading.Event()

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and path.startswith(self.path_prefix)

    def wait(self, timeout: float) -> None:
        self.arrived.set()
        self._open.wait(timeout)

    def release(self) -> None:
        self._open.set()


# --- form decoding ---------------------------------------------------------------------

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def decode_form(pairs: list[tuple[str, str]]) -> Json:
    """Stripe's bracket notation back into nested dicts and lists.

    `metadata[k]=v` -> {"metadata": {"k": "v"}}; `default_tax_rates[0]=a` -> {"...": ["a"]}.
    Values stay strings, as on the wire.
    """
    result: Json = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(key[len(head) :])]
        node: Any = result
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            following = None if last else parts[index + 1]
            child_default: Any = [] if following is not None and following.isdigit() else {}
            if isinstance(node, list):
                position = int(part)
                while len(node) <= position:
                    node.append(None)
                if last:
                    node[position] = value
                else:
                    if node[position] is None:
                        node[position] = child_default
                    node = node[position]
            elif last:
                node[part] = value
            else:
                node = node.setdefault(part, child_default)
    return result


def _flag(value: Any, param: str) -> bool:
    if value in ("true", True):
        return True
    if value in ("false", False):
        return False
    raise StubError(400, f"Invalid boolean: {value}", param=param)


def _integer(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise StubError(400, f"Invalid integer: {value}", param=param) from exc


def _refuse_unknown(params: Mapping[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise StubError(400, f"Received unknown parameter: {name}", param=name)


def _metadata(params: Mapping[str, Any]) -> dict[str, str]:
    value = params.get("metadata", {})
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise StubError(400, "Invalid metadata", param="metadata")
    return {str(key): str(item) for key, item in value.items()}


# --- search queries --------------------------------------------------------------------

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>metadata\[(?P<q1>['"])(?P<key>.+?)(?P=q1)\]|[a-z_]+)
        \s*(?P<op>:|>=|<=|>|<)\s*
        (?:(?P<q2>['"])(?P<text>(?:\\.|(?!(?P=q2)).)*)(?P=q2)|(?P<number>-?\d+)|(?P<null>null))\s*""",
    re.VERBOSE,
)


def _parse_query(query: str) -> tuple[str, list[Callable[[Json], bool]]]:
    """A Stripe search query as ("AND" | "OR", [predicate, ...])."""
    clauses: list[Callable[[Json], bool]] = []
    joiner: str | None = None
    position = 0
    while position < len(query):
        match = _CLAUSE.match(query, position)
        if match is None:
            raise StubError(400, f"Invalid search query at position {position}", param="query")
        clauses.append(_predicate(match))
        position = match.end()
        word = re.match(r"(AND|OR)\s+", query[position:], re.IGNORECASE)
        if word:
            this = word.group(1).upper()
            if joiner is not None and joiner != this:
                raise StubError(400, "AND and OR cannot be mixed in one query", param="query")
            joiner = this
            position += word.end()
    if not clauses:
        raise StubError(400, "Search query is empty", param="query")
    return joiner or "AND", clauses


def _predicate(match: re.Match[str]) -> Callable[[Json], bool]:
    negate = bool(match.group("neg"))
    op = match.group("op")
    key = match.group("key")
    field_name = match.group("field")
    text = match.group("text")
    if text is not None:
        text = re.sub(r"\\(.)", r"\1", text)
    number = match.group("number")
    is_null = match.group("null") is not None

    def value_of(invoice: Json) -> Any:
        if key is not None:
            return invoice["metadata"].get(key)
        return invoice.get(field_name)

    def test(invoice: Json) -> bool:
        actual = value_of(invoice)
        if is_null:
            outcome = actual is None
        elif op == ":":
            expected: Any = text if text is not None else number
            outcome = actual is not None and str(actual) == str(expected)
        else:
            if not isinstance(actual, int):
                return False
            bound = int(number if number is not None else text or 0)
            outcome = {
                ">": actual > bound,
                ">=": actual >= bound,
                "<": actual < bound,
                "<=": actual <= bound,
            }[op]
        return outcome != negate

    return test


# --- the stub --------------------------------------------------------------------------

_INVOICE_CREATE_PARAMS = {
    "customer", "currency", "collection_method", "days_until_due", "due_date", "description",
    "metadata", "discounts", "pending_invoice_items_behavior", "auto_advance", "automatic_tax",
    "default_tax_rates", "footer", "expand", "statement_descriptor",
}  # fmt: skip
_ITEM_CREATE_PARAMS = {
    "customer", "invoice", "amount", "currency", "description", "discountable", "discounts",
    "metadata", "tax_behavior", "tax_rates", "tax_code", "period", "expand", "quantity",
}  # fmt: skip
_CUSTOMER_CREATE_PARAMS = {
    "name", "email", "metadata", "description", "phone", "address", "expand",
    "preferred_locales", "invoice_settings",
}  # fmt: skip
_LIST_PARAMS = {
    "limit", "starting_after", "ending_before", "status", "customer", "created",
    "collection_method", "expand",
}  # fmt: skip
_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
_PAYMENT_OBJECT_LIST_PARAMS = {  # refunds and disputes
    "limit", "starting_after", "ending_before", "payment_intent", "charge", "created",
    "expand",
}  # fmt: skip
_CREDIT_NOTE_LIST_PARAMS = {
    "limit", "starting_after", "ending_before", "invoice", "customer", "created", "expand",
}  # fmt: skip
_INVOICE_PAYMENT_LIST_PARAMS = {
    "limit", "starting_after", "ending_before", "invoice", "payment", "status", "created",
    "expand",
}  # fmt: skip


class StripeStub:
    """In-memory Stripe: see the module docstring for what it serves and its controls."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        latency: float = 0.0,
        tax_rates: Mapping[str, Decimal] | None = None,
        automatic_tax_percent: Decimal = Decimal("10"),
        search_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.tax_rates = dict(tax_rates or {})
        self.automatic_tax_percent = automatic_tax_percent
        self.search_delay = search_delay
        self.customers: dict[str, Json] = {}
        self.invoices: dict[str, Json] = {}
        self.items: dict[str, Json] = {}
        self.refunds: dict[str, Json] = {}
        self.invoice_payments: dict[str, Json] = {}
        self.credit_notes: dict[str, Json] = {}
        self.disputes: dict[str, Json] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)
        self._order: dict[str, int] = {}  # invoice id -> creation sequence
        self._searchable_at: dict[str, float] = {}
        self._idempotency: dict[str, tuple[str, str, tuple[tuple[str, str], ...], int, bytes]] = {}
        self._faults: list[_Fault] = []
        self._gates: list[Gate] = []
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- running as a server -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give the service as STRIPE_API_BASE."""
        if self._server is None:
            raise RuntimeError("the stub is not serving; call start() first")
        return f"http://{self._host}:{self._server.server_address[1]}"

    def start(self) -> str:
        """Serve on host:port (port 0: a free one) in a daemon thread; returns the URL."""
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer((self._host, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stripe-stub", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        for gate in self._gates:
            gate.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StripeStub:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- running behind `responses` ----------------------------------------------------

    def register(self, rsps: Any, base: str = DEFAULT_BASE) -> None:
        """Route every method and path under `base` to this stub in `rsps` (a RequestsMock)."""
        pattern = re.compile(re.escape(base) + r"/v1/.*")
        for method in ("GET", "POST", "DELETE"):
            rsps.add_callback(method, pattern, callback=self._responses_callback)

    def _responses_callback(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        try:
            return self.handle(request.method, split.path, split.query, request.headers, body)
        except DropConnection as exc:
            import requests

            raise requests.ConnectionError("connection dropped by the stub") from exc

    # --- test controls -----------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        *,
        status: int | None = 500,
        times: int = 1,
        after: bool = False,
        type_: str = "api_error",
        message: str = "An unknown error occurred",
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next `times` requests matching fail with `status` (None: dropped).

        The answer is in Stripe's error shape with `type_`, `message` and `code`;
        `retry_after` adds a Retry-After header (seconds), as on a throttled answer.
        """
        with self._lock:
            self._faults.append(
                _Fault(
                    method.upper(),
                    path_prefix,
                    status,
                    times,
                    after,
                    type_,
                    message,
                    code,
                    retry_after,
                )
            )

    def hold(self, method: str, path_prefix: str) -> Gate:
        """Matching requests wait (outside the stub's lock) until the gate is released."""
        gate = Gate(method.upper(), path_prefix)
        with self._lock:
            self._gates.append(gate)
        return gate

    def forget_idempotency_keys(self) -> None:
        """As Stripe does after 24 hours: a repeated key acts anew."""
        with self._lock:
            self._idempotency.clear()

    def mark_paid(self, invoice_id: str, amount_paid: int | None = None) -> Json:
        """The customer paid the open invoice (in full unless `amount_paid` says less)."""
        with self._lock:
            invoice = self._invoice(invoice_id)
            if invoice["status"] != "open":
                raise ValueError(f"invoice {invoice_id} is {invoice['status']}, not open")
            paid = invoice["amount_due"] if amount_paid is None else amount_paid
            invoice["amount_paid"] = paid
            invoice["amount_remaining"] = max(0, invoice["amount_due"] - paid)
            if invoice["amount_remaining"] == 0:
                invoice["status"] = "paid"
                invoice["paid"] = True
                invoice["status_transitions"]["paid_at"] = int(time.time())
            if paid > 0:
                self._record_payment(invoice)
            self._touched(invoice_id)
            return _copy(invoice)

    def _record_payment(self, invoice: Json) -> None:
        """The invoice's payment intent and its Invoice Payment (one per invoice here)."""
        if self.payment_intent_of(invoice["id"]) is not None:
            return
        now = int(time.time())
        invoice_payment = {
            "id": self._new_id("inpay"),
            "object": "invoice_payment",
            "amount_paid": invoice["amount_paid"],
            "amount_requested": invoice["amount_due"],
            "created": now,
            "currency": invoice["currency"],
            "invoice": invoice["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": self._new_id("pi")},
            "status": "paid",
            "status_transitions": {"canceled_at": None, "paid_at": now},
        }
        self._order[invoice_payment["id"]] = next(self._sequence)
        self.invoice_payments[invoice_payment["id"]] = invoice_payment

    def payment_intent_of(self, invoice_id: str) -> str | None:
        """The payment intent that paid the invoice (None before it was paid)."""
        with self._lock:
            for invoice_payment in self.invoice_payments.values():
                if invoice_payment["invoice"] == invoice_id:
                    payment_intent: str = invoice_payment["payment"]["payment_intent"]
                    return payment_intent
            return None

    def mark_uncollectible(self, invoice_id: str) -> Json:
        with self._lock:
            invoice = self._invoice(invoice_id)
            invoice["status"] = "uncollectible"
            invoice["status_transitions"]["marked_uncollectible_at"] = int(time.time())
            self._touched(invoice_id)
            return _copy(invoice)

    def refund(self, invoice_id: str, amount: int | None = None) -> Json:
        """A credit note refunding `amount` (default: all) of a paid invoice, as Stripe
        records it: the invoice stays `paid`, post_payment_credit_notes_amount grows, and
        the note's refund of the payment is listed in its `refunds`."""
        with self._lock:
            self.credit_note(invoice_id, amount, refund=True)
            return _copy(self._invoice(invoice_id))

    def credit_note(
        self, invoice_id: str, amount: int | None = None, *, refund: bool = False
    ) -> Json:
        """A post-payment credit note of `amount` (default: all that was paid): it
        refunds the payment (`refund=True`) or credits the customer's balance."""
        with self._lock:
            invoice = self._invoice(invoice_id)
            if invoice["status"] != "paid":
                raise ValueError(f"invoice {invoice_id} is {invoice['status']}, not paid")
            credited = invoice["amount_paid"] if amount is None else amount
            invoice["post_payment_credit_notes_amount"] = (
                invoice.get("post_payment_credit_notes_amount", 0) + credited
            )
            refunds: list[Json] = []
            payment_intent = self.payment_intent_of(invoice_id)
            if refund and payment_intent is not None:
                made = self.refund_payment_intent(payment_intent, credited, invoice["currency"])
                refunds.append({"amount_refunded": credited, "refund": made["id"]})
            note: Json = {
                "id": self._new_id("cn"),
                "object": "credit_note",
                "amount": credited,
                "created": int(time.time()),
                "currency": invoice["currency"],
                "customer": invoice["customer"],
                "customer_balance_transaction": None if refund else self._new_id("cbtxn"),
                "invoice": invoice_id,
                "livemode": False,
                "memo": None,
                "metadata": {},
                "number": f"{invoice_id}-CN",
                "out_of_band_amount": None,
                "post_payment_amount": credited,
                "pre_payment_amount": 0,
                "reason": None,
                "refunds": refunds,
                "status": "issued",
                "subtotal": credited,
                "total": credited,
                "type": "post_payment",
                "voided_at": None,
            }
            self._order[note["id"]] = next(self._sequence)
            self.credit_notes[note["id"]] = note
            self._touched(invoice_id)
            return _copy(note)

    def void_credit_note(self, note_id: str) -> Json:
        """POST /v1/credit_notes/{id}/void: the note gives nothing back any more; the
        invoice's post-payment credit notes amount drops by it."""
        with self._lock:
            note = self.credit_notes[note_id]
            if note["status"] != "void":
                note["status"] = "void"
                note["voided_at"] = int(time.time())
                invoice = self._invoice(note["invoice"])
                invoice["post_payment_credit_notes_amount"] -= note["post_payment_amount"]
                self._touched(note["invoice"])
            return _copy(note)

    def last_credit_note(self, invoice_id: str) -> Json:
        with self._lock:
            notes = [note for note in self.credit_notes.values() if note["invoice"] == invoice_id]
            return _copy(max(notes, key=lambda note: self._order[note["id"]]))

    def dispute(self, invoice_id: str) -> Json:
        """The customer's bank disputes the invoice's payment (status needs_response)."""
        with self._lock:
            invoice = self._invoice(invoice_id)
            payment_intent = self.payment_intent_of(invoice_id)
            if payment_intent is None:
                raise ValueError(f"invoice {invoice_id} has no payment to dispute")
            dispute: Json = {
                "id": self._new_id("dp"),
                "object": "dispute",
                "amount": invoice["amount_paid"],
                "charge": self._new_id("ch"),
                "created": int(time.time()),
                "currency": invoice["currency"],
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": payment_intent,
                "reason": "fraudulent",
                "status": "needs_response",
            }
            self._order[dispute["id"]] = next(self._sequence)
            self.disputes[dispute["id"]] = dispute
            return _copy(dispute)

    def close_dispute(self, dispute_id: str, status: str) -> Json:
        """The dispute is decided: `won`, `lost` or `warning_closed`."""
        if status not in ("won", "lost", "warning_closed"):
            raise ValueError(f"a dispute closes won, lost or warning_closed, not {status}")
        with self._lock:
            dispute = self.disputes[dispute_id]
            dispute["status"] = status
            return _copy(dispute)

    def charge_of(self, payment_intent: str, *, list_refunds: bool = True) -> Json:
        """The charge of `payment_intent` as `charge.refunded` carries it; its refunds
        are listed only with `list_refunds` (Stripe leaves them out since 2022-11-15)."""
        with self._lock:
            refunds = [
                _copy(refund)
                for refund in self.refunds.values()
                if refund["payment_intent"] == payment_intent
            ]
            refunds.sort(key=lambda refund: -self._order[refund["id"]])
            paid = next(
                row
                for row in self.invoice_payments.values()
                if row["payment"]["payment_intent"] == payment_intent
            )
            charge: Json = {
                "id": self._new_id("ch"),
                "object": "charge",
                "amount": paid["amount_paid"],
                "amount_refunded": sum(
                    refund["amount"] for refund in refunds if refund["status"] == "succeeded"
                ),
                "currency": paid["currency"],
                "livemode": False,
                "payment_intent": payment_intent,
                "refunded": False,
                "status": "succeeded",
            }
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            if list_refunds:
                charge["refunds"] = {
                    "object": "list",
                    "data": refunds,
                    "has_more": False,
                    "url": f"/v1/charges/{charge['id']}/refunds",
                }
            return charge

    def object_event(self, data_object: Json, event_type: str) -> Json:
        """A Stripe event of `event_type` carrying `data_object` as it is now."""
        return {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": _copy(data_object)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }

    def refund_payment(
        self, invoice_id: str, amount: int | None = None, status: str = "succeeded"
    ) -> Json:
        """A refund made on the invoice's payment alone (Dashboard "Refund" on the
        payment, POST /v1/refunds): the invoice stays `paid` and shows nothing of it."""
        with self._lock:
            invoice = self._invoice(invoice_id)
            payment_intent = self.payment_intent_of(invoice_id)
            if payment_intent is None:
                raise ValueError(f"invoice {invoice_id} has no payment to refund")
            refunded = invoice["amount_paid"] if amount is None else amount
            return self.refund_payment_intent(
                payment_intent, refunded, invoice["currency"], status=status
            )

    def refund_payment_intent(
        self, payment_intent: str, amount: int, currency: str = "usd", status: str = "succeeded"
    ) -> Json:
        """A refund object of `payment_intent` (which need not pay any invoice)."""
        with self._lock:
            refund: Json = {
                "id": self._new_id("re"),
                "object": "refund",
                "amount": amount,
                "balance_transaction": None,
                "charge": self._new_id("ch"),
                "created": int(time.time()),
                "currency": currency.lower(),
                "metadata": {},
                "payment_intent": payment_intent,
                "reason": None,
                "status": status,
            }
            self._order[refund["id"]] = next(self._sequence)
            self.refunds[refund["id"]] = refund
            return _copy(refund)

    def fail_refund(self, refund_id: str, reason: str = "expired_or_canceled_card") -> Json:
        """A refund that had succeeded fails (the card's account closed): the money
        comes back to the merchant's balance."""
        with self._lock:
            refund = self.refunds[refund_id]
            refund["status"] = "failed"
            refund["failure_reason"] = reason
            return _copy(refund)

    def event(self, invoice_id: str, event_type: str = "invoice.paid") -> Json:
        """A Stripe event object whose data.object is the invoice as it is now."""
        with self._lock:
            invoice = _copy(self._invoice(invoice_id))
        return {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": invoice},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }

    def invoices_with(self, **metadata: str) -> list[Json]:
        """Invoices whose metadata holds all of `metadata` (e.g. gateway_purchase_id=...)."""
        with self._lock:
            return [
                _copy(invoice)
                for invoice in self.invoices.values()
                if all(invoice["metadata"].get(key) == value for key, value in metadata.items())
            ]

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # --- request handling --------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One request in, (status, headers, JSON body) out."""
        method = method.upper()
        lowered = {key.lower(): value for key, value in headers.items()}
        pairs = parse_qsl(body.decode() if method == "POST" else query, keep_blank_values=True)
        params = decode_form(pairs)
        with self._lock:
            self.requests.append(RecordedRequest(method, path, params, tuple(pairs), dict(lowered)))
            fault = self._take_fault(method, path)
            gates = [gate for gate in self._gates if gate.matches(method, path)]
        if self.latency:
            time.sleep(self.latency)
        for gate in gates:
            gate.wait(timeout=30)
        if fault is not None and not fault.after:
            return self._fault_answer(fault)
        status, answer, replayed = self._answer(method, path, params, pairs, lowered)
        if fault is not None:
            return self._fault_answer(fault)
        response_headers = {
            "Content-Type": "application/json",
            "Request-Id": f"req_{secrets.token_hex(7)}",
            "Stripe-Version": lowered.get("stripe-version", API_VERSION),
        }
        if replayed:
            response_headers["Idempotent-Replayed"] = "true"
        return status, response_headers, answer

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method and path.startswith(fault.path_prefix):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_answer(self, fault: _Fault) -> tuple[int, dict[str, str], bytes]:
        if fault.status is None:
            raise DropConnection
        body: Json = {"error": {"type": fault.type_, "message": fault.message}}
        if fault.code is not None:
            body["error"]["code"] = fault.code
        headers = {"Content-Type": "application/json", "Request-Id": "req_fault"}
        if fault.status >= 500:
            # Stripe says a retry is safe; the client library decides whether to make one.
            headers["Stripe-Should-Retry"] = "true"
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return fault.status, headers, json.dumps(body).encode()

    def _answer(
        self,
        method: str,
        path: str,
        params: Json,
        pairs: list[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> tuple[int, bytes, bool]:
        with self._lock:
            try:
                self._authenticate(headers)
                key = headers.get("idempotency-key") if method == "POST" else None
                if key is not None:
                    replay = self._idempotent_replay(key, method, path, pairs)
                    if replay is not None:
                        return replay[0], replay[1], True
                status, payload = 200, self._route(method, path, params)
            except StubError as exc:
                status, payload, key = exc.status, exc.body, headers.get("idempotency-key")
            body = json.dumps(payload).encode()
            if key is not None and method == "POST" and status < 500 and status not in (401, 429):
                self._idempotency[key] = (method, path, tuple(sorted(pairs)), status, body)
            return status, body, False

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        authorization = headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ").strip()
        valid = (
            token == self.api_key if self.api_key else token.startswith(("sk_test_", "rk_test_"))
        )
        if not authorization.startswith("Bearer ") or not valid:
            raise StubError(401, "Invalid API Key provided", type_="invalid_request_error")

    def _idempotent_replay(
        self, key: str, method: str, path: str, pairs: list[tuple[str, str]]
    ) -> tuple[int, bytes] | None:
        saved = self._idempotency.get(key)
        if saved is None:
            return None
        if saved[:3] != (method, path, tuple(sorted(pairs))):
            raise StubError(
                400,
                "Keys for idempotent requests can only be used with the same parameters "
                "they were first used with.",
                type_="idempotency_error",
            )
        return saved[3], saved[4]

    def _route(self, method: str, path: str, params: Json) -> Json:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise StubError(404, f"Unrecognized request URL ({method}: {path})")
        route = parts[1:]
        collection = {
            ("POST", "customers"): self._create_customer,
            ("POST", "invoices"): self._create_invoice,
            ("POST", "invoiceitems"): self._create_item,
            ("GET", "invoices"): self._list_invoices,
            ("GET", "invoices/search"): self._search_invoices,
            ("GET", "refunds"): self._list_refunds,
            ("GET", "invoice_payments"): self._list_invoice_payments,
            ("GET", "credit_notes"): self._list_credit_notes,
            ("GET", "disputes"): self._list_disputes,
        }.get((method, "/".join(route)))
        if collection is not None:
            return collection(params)
        if method == "GET" and len(route) == 2 and route[0] == "invoices":
            _refuse_unknown(params, {"expand"})
            return _copy(self._invoice(route[1]))
        if method == "GET" and len(route) == 2 and route[0] == "disputes":
            _refuse_unknown(params, {"expand"})
            if route[1] not in self.disputes:
                raise StubError(
                    404, f"No such dispute: '{route[1]}'", code="resource_missing", param="id"
                )
            return _copy(self.disputes[route[1]])
        if method == "POST" and len(route) == 3 and route[0] == "invoices":
            if route[2] == "finalize":
                return self._finalize(route[1], params)
            if route[2] == "void":
                return self._void(route[1], params)
        raise StubError(404, f"Unrecognized request URL ({method}: {path})")

    # --- objects -----------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_stub{next(self._sequence):06d}{secrets.token_hex(4)}"

    def _invoice(self, invoice_id: str) -> Json:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise StubError(
                404, f"No such invoice: '{invoice_id}'", code="resource_missing", param="id"
            )
        return invoice

    def _customer(self, customer_id: Any) -> Json:
        customer = self.customers.get(str(customer_id))
        if customer is None:
            raise StubError(
                400,
                f"No such customer: '{customer_id}'",
                code="resource_missing",
                param="customer",
            )
        return customer

    def _touched(self, invoice_id: str) -> None:
        self._searchable_at[invoice_id] = time.monotonic() + self.search_delay

    def _create_customer(self, params: Json) -> Json:
        _refuse_unknown(params, _CUSTOMER_CREATE_PARAMS)
        customer: Json = {
            "id": self._new_id("cus"),
            "object": "customer",
            "balance": 0,
            "created": int(time.time()),
            "currency": None,
            "description": params.get("description"),
            "discount": None,
            "email": params.get("email"),
            "livemode": False,
            "metadata": _metadata(params),
            "name": params.get("name"),
        }
        self.customers[customer["id"]] = customer
        return _copy(customer)

    def _create_invoice(self, params: Json) -> Json:
        _refuse_unknown(params, _INVOICE_CREATE_PARAMS)
        if "customer" not in params:
            raise StubError(400, "Missing required param: customer.", param="customer")
        customer = self._customer(params["customer"])
        currency = str(params.get("currency", "usd"))
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise StubError(400, f"Invalid currency: {currency}", param="currency")
        collection = params.get("collection_method", "charge_automatically")
        if collection not in ("charge_automatically", "send_invoice"):
            raise StubError(400, "Invalid collection_method", param="collection_method")
        days = params.get("days_until_due")
        if collection == "send_invoice" and days is None and "due_date" not in params:
            raise StubError(
                400,
                "Invoices with `send_invoice` need `days_until_due` or `due_date`.",
                param="days_until_due",
            )
        if collection != "send_invoice" and days is not None:
            raise StubError(
                400, "`days_until_due` is only valid with `send_invoice`.", param="days_until_due"
            )
        discounts = params.get("discounts", [])
        if discounts not in ("", []):
            raise StubError(400, "The stub applies no discounts", param="discounts")
        behaviour = params.get("pending_invoice_items_behavior", "exclude")
        if behaviour not in ("exclude", "include"):
            raise StubError(400, "Invalid pending_invoice_items_behavior")
        rates = params.get("default_tax_rates", [])
        rates = [] if rates == "" else rates
        for rate in rates:
            if rate not in self.tax_rates:
                raise StubError(
                    400,
                    f"No such tax rate: '{rate}'",
                    code="resource_missing",
                    param="default_tax_rates",
                )
        automatic = _flag(params.get("automatic_tax", {}).get("enabled", False), "automatic_tax")
        now = int(time.time())
        invoice: Json = {
            "id": self._new_id("in"),
            "object": "invoice",
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": _flag(params.get("auto_advance", False), "auto_advance"),
            "automatic_tax": {
                "enabled": automatic,
                "liability": {"type": "self"} if automatic else None,
                "status": "complete" if automatic else None,
            },
            "collection_method": collection,
            "created": now,
            "currency": currency,
            "customer": customer["id"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "days_until_due": _integer(days, "days_until_due") if days is not None else None,
            "default_tax_rates": [
                {
                    "id": rate,
                    "object": "tax_rate",
                    "inclusive": False,
                    "percentage": float(self.tax_rates[rate]),
                }
                for rate in rates
            ],
            "description": params.get("description"),
            "discounts": [],
            "due_date": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "lines": {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": "",
            },
            "livemode": False,
            "metadata": _metadata(params),
            "number": None,
            "paid": False,
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "tax": None,
            "total": 0,
            "total_discount_amounts": [],
            "total_excluding_tax": 0,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
        }
        invoice["lines"]["url"] = f"/v1/invoices/{invoice['id']}/lines"
        if collection == "send_invoice" and days is not None:
            invoice["due_date"] = now + 86400 * _integer(days, "days_until_due")
        self.invoices[invoice["id"]] = invoice
        self._order[invoice["id"]] = next(self._sequence)
        self._touched(invoice["id"])
        return _copy(invoice)

    def _create_item(self, params: Json) -> Json:
        _refuse_unknown(params, _ITEM_CREATE_PARAMS)
        customer = self._customer(params.get("customer"))
        if "amount" not in params:
            raise StubError(400, "Missing required param: amount.", param="amount")
        amount = _integer(params["amount"], "amount")
        currency = str(params.get("currency", ""))
        invoice: Json | None = None
        if "invoice" in params:
            invoice = self._invoice(str(params["invoice"]))
            if invoice["status"] != "draft":
                raise StubError(
                    400,
                    f"Invoice {invoice['id']} is not a draft",
                    code="invoice_not_editable",
                    param="invoice",
                )
            if invoice["customer"] != customer["id"]:
                raise StubError(400, "The invoice belongs to another customer", param="invoice")
            if currency and currency != invoice["currency"]:
                raise StubError(
                    400, "The item's currency differs from the invoice's", param="currency"
                )
            currency = invoice["currency"]
        if params.get("discounts", []) not in ("", []):
            raise StubError(400, "The stub applies no discounts", param="discounts")
        tax_behavior = params.get("tax_behavior", "unspecified")
        automatic = invoice is not None and invoice["automatic_tax"]["enabled"]
        if automatic and tax_behavior == "unspecified":
            raise StubError(
                400,
                "Invoice items on automatic tax invoices need a tax_behavior",
                param="tax_behavior",
            )
        item = {
            "id": self._new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer["id"],
            "date": int(time.time()),
            "description": params.get("description"),
            "discountable": _flag(params.get("discountable", True), "discountable"),
            "discounts": [],
            "invoice": invoice["id"] if invoice else None,
            "livemode": False,
            "metadata": _metadata(params),
            "tax_behavior": tax_behavior,
        }
        self.items[item["id"]] = item
        if invoice is not None:
            invoice["lines"]["data"].append(
                {
                    "id": f"il_{item['id']}",
                    "object": "line_item",
                    "amount": amount,
                    "currency": currency,
                    "description": item["description"],
                    "discountable": item["discountable"],
                    "discounts": [],
                    "invoice": invoice["id"],
                    "metadata": item["metadata"],
                    "parent": {
                        "type": "invoice_item_details",
                        "invoice_item_details": {"invoice_item": item["id"]},
                    },
                }
            )
            self._recompute(invoice)
        return _copy(item)

    def _recompute(self, invoice: Json) -> None:
        subtotal = sum(line["amount"] for line in invoice["lines"]["data"])
        taxes = [(rate["id"], self.tax_rates[rate["id"]]) for rate in invoice["default_tax_rates"]]
        if invoice["automatic_tax"]["enabled"]:
            taxes.append((None, self.automatic_tax_percent))
        total_taxes = []
        for rate_id, percent in taxes:
            amount = int(
                (Decimal(subtotal) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
            )
            total_taxes.append(
                {
                    "amount": amount,
                    "tax_behavior": "exclusive",
                    "taxability_reason": "standard_rated",
                    "taxable_amount": subtotal,
                    "type": "tax_rate_details",
                    "tax_rate_details": {"tax_rate": rate_id or "txr_automatic"},
                }
            )
        tax = sum(entry["amount"] for entry in total_taxes)
        invoice["lines"]["total_count"] = len(invoice["lines"]["data"])
        invoice.update(
            subtotal=subtotal,
            subtotal_excluding_tax=subtotal,
            total_excluding_tax=subtotal,
            total_taxes=total_taxes,
            total=subtotal + tax,
            amount_due=subtotal + tax,
            amount_remaining=subtotal + tax,
        )

    def _finalize(self, invoice_id: str, params: Json) -> Json:
        _refuse_unknown(params, {"auto_advance", "expand"})
        invoice = self._invoice(invoice_id)
        if invoice["status"] != "draft":
            raise StubError(
                400,
                f"This invoice is already finalized (status {invoice['status']})",
                code="invoice_not_editable",
            )
        now = int(time.time())
        invoice["status"] = "open"
        invoice["number"] = f"STUB-{self._order[invoice_id]:06d}"
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.test/i/{invoice_id}"
        invoice["invoice_pdf"] = f"https://invoice.stripe.test/i/{invoice_id}/pdf"
        invoice["status_transitions"]["finalized_at"] = now
        if "auto_advance" in params:
            invoice["auto_advance"] = _flag(params["auto_advance"], "auto_advance")
        if invoice["amount_due"] == 0:
            invoice["status"] = "paid"
            invoice["paid"] = True
            invoice["status_transitions"]["paid_at"] = now
        self._touched(invoice_id)
        return _copy(invoice)

    def _void(self, invoice_id: str, params: Json) -> Json:
        _refuse_unknown(params, {"expand"})
        invoice = self._invoice(invoice_id)
        if invoice["status"] not in ("open", "uncollectible"):
            raise StubError(
                400,
                f"You can only void open or uncollectible invoices (this one is "
                f"{invoice['status']})",
                code="invoice_not_editable",
            )
        invoice["status"] = "void"
        invoice["amount_remaining"] = 0
        invoice["status_transitions"]["voided_at"] = int(time.time())
        self._touched(invoice_id)
        return _copy(invoice)

    # --- list and search ---------------------------------------------------------------

    def _newest_first(self) -> list[Json]:
        return sorted(
            self.invoices.values(),
            key=lambda invoice: (invoice["created"], self._order[invoice["id"]]),
            reverse=True,
        )

    def _list_invoices(self, params: Json) -> Json:
        _refuse_unknown(params, _LIST_PARAMS)
        limit = _limit(params)
        rows = self._newest_first()
        status = params.get("status")
        if status is not None:
            if status not in _STATUSES:
                raise StubError(400, f"Invalid status: {status}", param="status")
            rows = [row for row in rows if row["status"] == status]
        if "customer" in params:
            rows = [row for row in rows if row["customer"] == params["customer"]]
        created = params.get("created")
        if isinstance(created, str):
            rows = [row for row in rows if row["created"] == _integer(created, "created")]
        elif isinstance(created, dict):
            rows = [row for row in rows if _in_range(row["created"], created)]
        if "starting_after" in params:
            ids = [row["id"] for row in rows]
            cursor = str(params["starting_after"])
            self._invoice(cursor)
            rows = rows[ids.index(cursor) + 1 :] if cursor in ids else []
        elif "ending_before" in params:
            ids = [row["id"] for row in rows]
            cursor = str(params["ending_before"])
            self._invoice(cursor)
            rows = rows[: ids.index(cursor)] if cursor in ids else []
            rows = rows[-limit:]
        page = rows[:limit]
        return {
            "object": "list",
            "data": [_copy(row) for row in page],
            "has_more": len(rows) > limit,
            "url": "/v1/invoices",
        }

    def _list_refunds(self, params: Json) -> Json:
        return self._list_of_payments(params, self.refunds, "/v1/refunds")

    def _list_disputes(self, params: Json) -> Json:
        return self._list_of_payments(params, self.disputes, "/v1/disputes")

    def _list_of_payments(self, params: Json, known: dict[str, Json], url: str) -> Json:
        """A list of objects about payments (refunds, disputes), by payment or charge."""
        _refuse_unknown(params, _PAYMENT_OBJECT_LIST_PARAMS)
        rows = list(known.values())
        for key in ("payment_intent", "charge"):
            if key in params:
                rows = [row for row in rows if row[key] == params[key]]
        return self._page(rows, params, url, known)

    def _list_credit_notes(self, params: Json) -> Json:
        _refuse_unknown(params, _CREDIT_NOTE_LIST_PARAMS)
        rows = list(self.credit_notes.values())
        for key in ("invoice", "customer"):
            if key in params:
                rows = [row for row in rows if row[key] == params[key]]
        return self._page(rows, params, "/v1/credit_notes", self.credit_notes)

    def _list_invoice_payments(self, params: Json) -> Json:
        _refuse_unknown(params, _INVOICE_PAYMENT_LIST_PARAMS)
        rows = list(self.invoice_payments.values())
        if "invoice" in params:
            rows = [row for row in rows if row["invoice"] == params["invoice"]]
        if "status" in params:
            rows = [row for row in rows if row["status"] == params["status"]]
        payment = params.get("payment")
        if payment is not None:
            if not isinstance(payment, dict) or "type" not in payment:
                raise StubError(400, "Missing required param: payment[type].", param="payment")
            _refuse_unknown(payment, {"type", "payment_intent", "payment_record"})
            rows = [
                row
                for row in rows
                if row["payment"]["type"] == payment["type"]
                and all(row["payment"].get(key) == value for key, value in payment.items())
            ]
        return self._page(rows, params, "/v1/invoice_payments", self.invoice_payments)

    def _page(self, rows: list[Json], params: Json, url: str, known: Mapping[str, Json]) -> Json:
        """One page of a list of `rows`, newest first: created, limit and cursors."""
        limit = _limit(params)
        rows = sorted(rows, key=lambda row: (row["created"], self._order[row["id"]]), reverse=True)
        created = params.get("created")
        if isinstance(created, str):
            rows = [row for row in rows if row["created"] == _integer(created, "created")]
        elif isinstance(created, dict):
            rows = [row for row in rows if _in_range(row["created"], created)]
        ids = [row["id"] for row in rows]
        for cursor_param in ("starting_after", "ending_before"):
            if cursor_param in params:
                cursor = str(params[cursor_param])
                if cursor not in known:
                    raise StubError(404, f"No such object: '{cursor}'", code="resource_missing")
                if cursor_param == "starting_after":
                    rows = rows[ids.index(cursor) + 1 :] if cursor in ids else []
                else:
                    rows = (rows[: ids.index(cursor)] if cursor in ids else [])[-limit:]
                break
        page = rows[:limit]
        return {
            "object": "list",
            "data": [_copy(row) for row in page],
            "has_more": len(rows) > limit,
            "url": url,
        }

    def _search_invoices(self, params: Json) -> Json:
        _refuse_unknown(params, {"query", "limit", "page", "expand"})
        if "query" not in params:
            raise StubError(400, "Missing required param: query.", param="query")
        joiner, clauses = _parse_query(str(params["query"]))
        limit = _limit(params)
        now = time.monotonic()
        visible = [
            row for row in self._newest_first() if self._searchable_at.get(row["id"], 0) <= now
        ]
        combine = all if joiner == "AND" else any
        rows = [row for row in visible if combine(clause(row) for clause in clauses)]
        start = 0
        if "page" in params:
            try:
                start = int(str(params["page"]).removeprefix("stubpage_"))
            except ValueError as exc:
                raise StubError(400, "Invalid page token", param="page") from exc
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return {
            "object": "search_result",
            "data": [_copy(row) for row in page],
            "has_more": more,
            "next_page": f"stubpage_{start + limit}" if more else None,
            "total_count": len(rows),
            "url": "/v1/invoices/search",
        }


def _limit(params: Mapping[str, Any]) -> int:
    limit = _integer(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise StubError(400, "limit must be between 1 and 100", param="limit")
    return limit


def _in_range(value: int, bounds: Mapping[str, Any]) -> bool:
    checks = {
        "gt": lambda bound: value > bound,
        "gte": lambda bound: value >= bound,
        "lt": lambda bound: value < bound,
        "lte": lambda bound: value <= bound,
    }
    for name, bound in bounds.items():
        if name not in checks:
            raise StubError(400, f"Invalid created filter: {name}", param="created")
        if not checks[name](_integer(bound, "created")):
            return False
    return True


def _copy(value: Json) -> Json:
    copied: Json = json.loads(json.dumps(value))
    return copied


def _handler_for(stub: StripeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add about 40 ms to every answer.
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, answer = stub.handle(
                    self.command, split.path, split.query, dict(self.headers.items()), body
                )
            except DropConnection:
                self.close_connection = True
                self.connection.close()
                return
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up waiting (its timeout): nothing left to answer.
                self.close_connection = True

        do_GET = _serve
        do_POST = _serve
        do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read stub.requests instead

    return Handler


def main(argv: list[str] | None = None) -> None:
    """`python -m gateway.providers.stripe.sandbox --port 12111`: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description="A Stripe-compatible stub on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument(
        "--tax-rate",
        action="append",
        default=[],
        metavar="ID=PERCENT",
        help="a tax rate the stub knows, e.g. txr_vat=20 (repeatable)",
    )
    parser.add_argument("--automatic-tax-percent", type=Decimal, default=Decimal("10"))
    args = parser.parse_args(argv)
    rates = dict(item.split("=", 1) for item in args.tax_rate)
    stub = StripeStub(
        host=args.host,
        port=args.port,
        latency=args.latency,
        tax_rates={rate: Decimal(percent) for rate, percent in rates.items()},
        automatic_tax_percent=args.automatic_tax_percent,
    )
    url = stub.start()
    print(f"Stripe stub on {url} (STRIPE_API_BASE={url}); Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stub.stop()


if __name__ == "__main__":
    main()
