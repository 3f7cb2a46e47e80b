"""The Stripe implementation of `PaymentProvider`, on one `stripe.StripeClient`.

Every write carries an idempotency key derived from our own ids, so repeating a call
after a timeout or a crash returns the object the first call made instead of making
another. Parameters are built as stripe-python's TypedDicts (`InvoiceCreateParams`…),
so mypy refuses a misspelled Stripe parameter before Stripe does.

The calls a purchase makes (customer, draft, line, finalize) go through stripe-python's
`raw_request`: the same requestor (key, API version, retries, idempotency key, error
classes), but the answer is read as JSON instead of being built into a `StripeObject`
tree first, which was about a third of such a call's CPU and only ever turned back
into a dict for `invoice_snapshot`.

Errors leave this module as the boundary's errors: network failures, timeouts, 5xx,
409 and 429 are `ProviderUnavailable` (retry later); a refused key (401/403) is too,
since it is our configuration and not the purchase that is wrong; other 4xx answers
are `ProviderRejected` (retrying the same request will not help).
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import requests
import stripe
from stripe.params import (
    CreditNoteListParams,
    CustomerCreateParams,
    DisputeListParams,
    InvoiceCreateParams,
    InvoiceFinalizeInvoiceParams,
    InvoiceItemCreateParams,
    InvoiceListParams,
    InvoicePaymentListParams,
    InvoiceSearchParams,
    RefundListParams,
)

from gateway import metrics
from gateway.providers import deadline
from gateway.providers.base import (
    META_CUSTOMER_ID,
    META_PURCHASE_ID,
    META_TRANSACTION_ID,
    META_WALLET_ID,
    CreditNote,
    CustomerRequest,
    Dispute,
    InvoiceSnapshot,
    PaymentDispute,
    PaymentRefund,
    ProviderRejected,
    ProviderUnavailable,
    PurchaseInvoiceRequest,
    Refund,
)
from gateway.providers.stripe import limits
from gateway.providers.stripe.events import read_credit_note, read_dispute, read_refund
from gateway.providers.stripe.objects import int_field as _int
from gateway.providers.stripe.objects import invoice_snapshot, object_id
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Our external id in the Stripe customer's metadata, next to our own id.
META_EXTERNAL_ID = "gateway_external_id"
# Stripe's page size limit for list and search.
PAGE_SIZE = 100
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
# Reads answered 429 are tried again this many times, each after Stripe's Retry-After
# or an exponential backoff with jitter, never waiting more than RATE_LIMIT_MAX_DELAY.
RATE_LIMIT_RETRIES = 5
RATE_LIMIT_MAX_DELAY = 30.0
# Payment intents whose invoice is remembered (`invoice_paid_by`).
PAYMENT_CACHE_SIZE = 10_000

T = TypeVar("T")


DEFAULT_API_BASE = "https://api.stripe.com"


def build_client(settings: Settings) -> stripe.StripeClient:
    """The one `StripeClient` of an app: key, API base, retries and timeout from settings.

    `STRIPE_API_BASE` points every base address (api, connect, files, meter events) at
    one server, e.g. a Stripe-compatible test server on 127.0.0.1.
    """
    _quiet_request_log()
    base = settings.stripe_api_base
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses=(
            {"api": base, "connect": base, "files": base, "meter_events": base} if base else None
        ),
        max_network_retries=settings.stripe_max_network_retries,
        http_client=_BoundedRequestsClient(
            timeout=settings.stripe_timeout_seconds,
            session=_http_session(),
            proxy=_environment_proxy(base or DEFAULT_API_BASE),
        ),
    )


def _quiet_request_log() -> None:
    """stripe-python logs two INFO lines per call ("Request to Stripe api", "Stripe API
    response") to the `stripe` logger: six per purchase, a tenth of a millisecond each,
    where the app logs INFO. Its warnings and errors still show. Left alone if the
    `stripe` logger was given a level; STRIPE_LOG=info prints them again (stripe-python).
    """
    stripe_logger = logging.getLogger("stripe")
    if stripe_logger.level == logging.NOTSET:
        stripe_logger.setLevel(logging.WARNING)


def _http_session() -> requests.Session:
    """The client's requests session, which does not consult the environment per call.

    With `trust_env` requests reads the proxy variables (a scan of `os.environ`) and
    looks for a ~/.netrc on every call: a third of a millisecond per Stripe call. The
    proxy is read once instead (`_environment_proxy`); the CA bundle is
    stripe-python's own either way, and a .netrc entry could only have replaced the
    API key's Authorization header. The session is shared by the app's threads, as
    stripe-python shares a session it is given; it keeps no cookies.
    """
    session = _BoundedSession()
    session.trust_env = False
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


class DeadlineSpent(requests.exceptions.Timeout):
    """The request's provider budget (`deadline.within`) was spent before this call."""


class _BoundedSession(requests.Session):
    """A session whose calls never outlast the current `deadline.within` budget: the
    (connect, read) timeout is clamped to what is left, and no call starts once it is
    spent. Outside a budget, the client's own timeout applies unchanged."""

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        left = deadline.remaining()
        if left is not None:
            if left <= 0:
                raise DeadlineSpent("the purchase's time limit for Stripe has run out")
            configured = kwargs.get("timeout")
            if isinstance(configured, int | float):
                kwargs["timeout"] = min(float(configured), left)
            else:
                kwargs["timeout"] = left
        return super().request(method, url, *args, **kwargs)


class _BoundedRequestsClient(stripe.RequestsClient):
    """stripe-python's client, whose pause before a retry never outlasts the current
    `deadline.within` budget (the retry then finds it spent and fails at once)."""

    def _sleep_time_seconds(self, num_retries: int) -> float:
        pause = float(super()._sleep_time_seconds(num_retries))
        left = deadline.remaining()
        return pause if left is None else min(pause, left)


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, ALL_PROXY…; none if
    NO_PROXY exempts it), read once, when the client is built."""
    return requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))


@contextmanager
def _boundary(action: str) -> Iterator[None]:
    """One call to Stripe: counted in `gateway_provider_calls_total` by its outcome (ok,
    unavailable, rejected, error), stripe-python's errors turned into the boundary's."""
    outcome = "error"
    try:
        with _translated_errors(action):
            yield
        outcome = "ok"
    except ProviderUnavailable:
        outcome = "unavailable"
        raise
    except ProviderRejected:
        outcome = "rejected"
        raise
    finally:
        metrics.PROVIDER_CALLS.labels(action, outcome).inc()


@contextmanager
def _translated_errors(action: str) -> Iterator[None]:
    """Turn stripe-python's errors into the boundary's, with a message fit for a caller."""
    try:
        yield
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        if deadline.spent():
            raise ProviderUnavailable(
                f"Stripe did not answer in time to {action} (the request's time limit, "
                "PURCHASE_DEADLINE_SECONDS, ran out)"
            ) from exc
        raise ProviderUnavailable(
            f"Stripe could not be reached to {action}: {_describe(exc)}"
        ) from exc
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        # Stripe masks the key in its message; we do not repeat the message anyway.
        log.error("Stripe refused the configured key (%s) to %s", exc.http_status, action)
        raise ProviderUnavailable(
            f"Stripe refused the configured key (HTTP {exc.http_status}) to {action}: "
            "check STRIPE_SECRET_KEY"
        ) from exc
    except (stripe.InvalidRequestError, stripe.IdempotencyError, stripe.CardError) as exc:
        raise ProviderRejected(
            f"Stripe refused to {action}: {exc.user_message or 'request refused'}",
            code=exc.code or _error_type(exc),
            status=exc.http_status,
        ) from exc
    except stripe.StripeError as exc:  # 5xx, 409 and unreadable answers
        raise ProviderUnavailable(f"Stripe failed to {action}: {_describe(exc)}") from exc


def _rate_limited(call: Callable[[], T]) -> T:
    """`call()`, tried again with backoff while Stripe answers 429.

    stripe-python's own retries (`max_network_retries`) cover connection errors, 409
    and 5xx, but not 429 unless Stripe adds `Stripe-Should-Retry: true`, which it
    does not for rate limits. Only reads go through here: a long reconciliation run
    pages through many invoices and must not fail on one throttled page.
    """
    for attempt in range(RATE_LIMIT_RETRIES):
        try:
            return call()
        except stripe.RateLimitError as exc:
            delay = _retry_delay(exc, attempt)
            left = deadline.remaining()
            if left is not None and delay >= left:
                raise  # the request's budget would run out waiting: unavailable now
            log.warning("Stripe rate limit (429): trying again in %.2f s", delay)
            time.sleep(delay)
    return call()


# The parameters of the list calls read page after page.
_ListParams = TypeVar(
    "_ListParams", InvoiceListParams, RefundListParams, DisputeListParams, CreditNoteListParams
)


def _listed(
    action: str, list_page: Callable[[_ListParams], Any], params: _ListParams
) -> Iterator[dict[str, Any]]:
    """Every object a Stripe list call answers, as a dict, page after page
    (`starting_after`): each page asked on its own, under the boundary (`action` names
    it in errors) and tried again while throttled."""
    while True:
        with _boundary(action):
            page = _rate_limited(lambda: list_page(params))
        for listed in page.data:
            yield listed.to_dict()
        if not page.has_more or not page.data:
            return
        params["starting_after"] = page.data[-1].id


def _retry_delay(exc: stripe.StripeError, attempt: int) -> float:
    """Seconds to wait: Retry-After if Stripe sent one, else 0.5 s doubling, jittered."""
    retry_after = next(
        (value for key, value in (exc.headers or {}).items() if key.lower() == "retry-after"),
        None,
    )
    try:
        delay = float(retry_after) if retry_after is not None else None
    except ValueError:
        delay = None
    if delay is None:
        delay = min(0.5 * 2**attempt, 8.0) * random.uniform(0.5, 1.0)
    return max(0.0, min(delay, RATE_LIMIT_MAX_DELAY))


def _describe(exc: stripe.StripeError) -> str:
    status = f"HTTP {exc.http_status}" if exc.http_status else "no response"
    return f"{status} ({type(exc).__name__})"


def _error_type(exc: stripe.StripeError) -> str | None:
    error = exc.error
    return getattr(error, "type", None) if error is not None else None


class StripeProvider:
    """`PaymentProvider` on Stripe invoices, configured from `Settings`."""

    name = "stripe"

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        tax_mode: str,
        tax_rate_ids: tuple[str, ...] = (),
        collection_method: str = "charge_automatically",
        days_until_due: int = 30,
    ) -> None:
        self._client = client
        self._tax_mode = tax_mode
        self._tax_rate_ids = tax_rate_ids
        self._collection_method = collection_method
        self._days_until_due = days_until_due
        self._invoice_of: dict[str, str | None] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeProvider:
        return cls(
            build_client(settings),
            tax_mode=settings.stripe_tax_mode,
            tax_rate_ids=settings.stripe_tax_rate_ids,
            collection_method=settings.stripe_collection_method,
            days_until_due=settings.stripe_days_until_due,
        )

    # --- amounts --------------------------------------------------------------------

    def minimum_charge_cents(self, currency: str) -> int:
        return limits.minimum_charge_minor(currency)

    def maximum_charge_cents(self, currency: str) -> int:
        return limits.maximum_charge_minor(currency)

    def charge_step_cents(self, currency: str) -> int:
        return limits.charge_step_minor(currency)

    # --- customers ------------------------------------------------------------------

    def ensure_customer(self, customer: CustomerRequest) -> str:
        """Create the Stripe customer of `customer`; a repeat returns the same one."""
        params: CustomerCreateParams = {
            "metadata": {
                META_CUSTOMER_ID: customer.customer_id,
                META_EXTERNAL_ID: customer.external_id,
            }
        }
        if customer.name:
            params["name"] = customer.name
        if customer.email:
            params["email"] = customer.email
        created = self._post(
            "create the customer", "/v1/customers", params, customer_idempotency_key(customer)
        )
        customer_id = created.get("id")
        if not isinstance(customer_id, str) or not customer_id:
            raise ProviderUnavailable("Stripe answered the customer's creation without an id")
        return customer_id

    # --- purchase invoices ----------------------------------------------------------

    def create_purchase_invoice(self, request: PurchaseInvoiceRequest) -> InvoiceSnapshot:
        return self.finish_purchase_invoice(request, self.create_purchase_draft(request))

    def create_purchase_draft(self, request: PurchaseInvoiceRequest) -> InvoiceSnapshot:
        """The draft: our currency, our ids, no discounts, no pending items, taxes per config.

        `auto_advance` stays off until we finalize, so a draft abandoned by a crash is
        never finalized and collected by Stripe on its own.
        """
        params: InvoiceCreateParams = {
            "customer": request.provider_customer_id,
            "currency": request.currency.lower(),
            "description": request.description,
            "metadata": _metadata(request),
            # An empty string, not an empty list: no customer-level coupon is inherited.
            "discounts": "",
            # Only the line we attach below, never the customer's other pending items.
            "pending_invoice_items_behavior": "exclude",
            "auto_advance": False,
        }
        collection_method = request.collection_method or self._collection_method
        if collection_method == "send_invoice":
            params["collection_method"] = "send_invoice"
            params["days_until_due"] = self._days_until_due
        else:
            params["collection_method"] = "charge_automatically"
        if self._tax_mode == "automatic":
            params["automatic_tax"] = {"enabled": True}
        elif self._tax_mode == "rates":
            params["default_tax_rates"] = list(self._tax_rate_ids)
        invoice = self._post(
            "create the invoice", "/v1/invoices", params, f"{request.purchase_id}:invoice"
        )
        return invoice_snapshot(invoice)

    def finish_purchase_invoice(
        self, request: PurchaseInvoiceRequest, invoice: InvoiceSnapshot
    ) -> InvoiceSnapshot:
        if invoice.status != "draft":
            return invoice
        if invoice.subtotal_cents == 0:
            self._add_line(request, invoice.id)
        elif invoice.subtotal_cents != request.amount_cents:
            raise ProviderRejected(
                f"draft invoice {invoice.id} bills {invoice.subtotal_cents} instead of "
                f"{request.amount_cents}: it was changed outside this service",
                code="unexpected_invoice_lines",
            )
        params: InvoiceFinalizeInvoiceParams = {"auto_advance": True}
        finalized = self._post(
            "finalize the invoice",
            f"/v1/invoices/{_path_id(invoice.id)}/finalize",
            params,
            f"{request.purchase_id}:finalize",
        )
        return invoice_snapshot(finalized)

    def _add_line(self, request: PurchaseInvoiceRequest, invoice_id: str) -> None:
        """The one line: paid credits x rate, not discountable, attached to this invoice."""
        params: InvoiceItemCreateParams = {
            "customer": request.provider_customer_id,
            "invoice": invoice_id,
            "currency": request.currency.lower(),
            "amount": request.amount_cents,
            "description": request.description,
            "discountable": False,
            "discounts": "",
            "metadata": _metadata(request),
        }
        if self._tax_mode == "automatic":
            # Prices exclude tax: Stripe Tax adds it on top of the credits' price.
            params["tax_behavior"] = "exclusive"
        self._post(
            "add the invoice line", "/v1/invoiceitems", params, f"{request.purchase_id}:item"
        )

    def _post(
        self, action: str, path: str, params: Mapping[str, Any], idempotency_key: str
    ) -> Mapping[str, Any]:
        """POST `params` to `path` with `idempotency_key`; Stripe's answer as its JSON object."""
        with _boundary(action):
            response: stripe.StripeResponse = self._client.raw_request(
                "post", path, idempotency_key=idempotency_key, **params
            )
        answer = response.data
        if not isinstance(answer, Mapping):
            raise ProviderUnavailable(f"Stripe failed to {action}: its answer is not an object")
        return answer

    # --- reading and voiding --------------------------------------------------------

    def retrieve_invoice(self, invoice_id: str) -> InvoiceSnapshot:
        with _boundary("read the invoice"):
            invoice = self._client.v1.invoices.retrieve(invoice_id)
        return invoice_snapshot(invoice.to_dict())

    def void_invoice(self, invoice_id: str) -> InvoiceSnapshot:
        """Void an open invoice. One already void, paid or otherwise closed is returned as
        it stands, so a repeat (or a race with the customer paying) is not an error."""
        try:
            return self._void(invoice_id, f"{invoice_id}:void")
        except ProviderRejected:
            current = self.retrieve_invoice(invoice_id)
            if current.status not in ("open", "uncollectible"):
                return current
        # Voidable now, yet refused: Stripe replayed a refusal it kept under our key from
        # a try while the invoice was still a draft. Seen open, a second key is safe.
        return self._void(invoice_id, f"{invoice_id}:void-{current.status}")

    def _void(self, invoice_id: str, idempotency_key: str) -> InvoiceSnapshot:
        with _boundary("void the invoice"):
            voided = self._client.v1.invoices.void_invoice(
                invoice_id, options={"idempotency_key": idempotency_key}
            )
        return invoice_snapshot(voided.to_dict())

    def find_purchase_invoice(self, purchase_id: str) -> InvoiceSnapshot | None:
        """The invoice whose metadata names `purchase_id`, by Stripe search.

        Search lags writes by up to a minute (more during incidents): a miss right after
        a create call is not proof that no invoice exists.
        """
        params: InvoiceSearchParams = {
            "query": f"metadata['{META_PURCHASE_ID}']:'{_quote(purchase_id)}'",
            "limit": 10,
        }
        with _boundary("search invoices"):
            first = _rate_limited(lambda: self._client.v1.invoices.search(params))
            found = [invoice_snapshot(invoice.to_dict()) for invoice in first.auto_paging_iter()]
        # Only ever one, thanks to idempotency keys; prefer one that got past draft.
        found.sort(key=lambda snap: (snap.status == "draft", snap.created_at or _EPOCH))
        return found[0] if found else None

    def iter_purchase_invoices(
        self, *, created_since: datetime | None = None, status: str | None = None
    ) -> Iterator[InvoiceSnapshot]:
        """Our purchase invoices, newest first, read by the list API in pages of 100.

        The list API (unlike search) sees every write at once. Invoices without our
        purchase metadata (the billing core's own) are skipped. Pages are requested one
        by one (`starting_after`), so a throttled page is retried on its own.
        """
        params: InvoiceListParams = {"limit": PAGE_SIZE}
        if created_since is not None:
            params["created"] = {"gte": int(created_since.timestamp())}
        if status is not None:
            if status not in INVOICE_STATUSES:
                raise ValueError(f"status must be one of {', '.join(INVOICE_STATUSES)}")
            params["status"] = status
        for invoice in _listed("list invoices", self._client.v1.invoices.list, params):
            snapshot = invoice_snapshot(invoice)
            if snapshot.purchase_id is not None:
                yield snapshot

    def iter_invoice_refunds(
        self, *, created_since: datetime | None = None
    ) -> Iterator[PaymentRefund]:
        """Refunds created since `created_since`, newest first, 100 a page, each mapped
        to the invoice its payment intent paid (Invoice Payments: one lookup per
        refunded payment intent, kept for the rest of the listing).

        Every status is listed (a refund counted when it succeeded may have failed
        since); refunds with no payment intent, or whose payment paid no invoice, are
        skipped.
        """
        params: RefundListParams = {"limit": PAGE_SIZE}
        if created_since is not None:
            params["created"] = {"gte": int(created_since.timestamp())}
        for data in _listed("list refunds", self._client.v1.refunds.list, params):
            payment_intent = object_id(data.get("payment_intent"))
            if payment_intent is None:
                continue
            invoice_id = self.invoice_paid_by(payment_intent)
            if invoice_id is None:
                continue
            created = data.get("created")
            yield PaymentRefund(
                refund_id=str(data.get("id") or ""),
                invoice_id=invoice_id,
                amount_cents=_int(data, "amount"),
                currency=str(data.get("currency") or "").upper(),
                status=str(data.get("status")),
                payment_id=payment_intent,
                created_at=(
                    datetime.fromtimestamp(created, UTC)
                    if isinstance(created, int) and not isinstance(created, bool)
                    else None
                ),
            )

    def iter_invoice_disputes(
        self, *, created_since: datetime | None = None
    ) -> Iterator[PaymentDispute]:
        """Disputes created since `created_since`, newest first, 100 a page, each with
        the invoice its payment intent paid (one Invoice Payments lookup per disputed
        payment intent, remembered). Disputes whose payment paid no invoice are skipped."""
        params: DisputeListParams = {"limit": PAGE_SIZE}
        if created_since is not None:
            params["created"] = {"gte": int(created_since.timestamp())}
        for data in _listed("list disputes", self._client.v1.disputes.list, params):
            dispute = read_dispute(data)
            if dispute.payment_id is None:
                continue
            invoice_id = self.invoice_paid_by(dispute.payment_id)
            if invoice_id is not None:
                yield PaymentDispute(dispute, invoice_id)

    def retrieve_dispute(self, dispute_id: str) -> Dispute:
        with _boundary("retrieve a dispute"):
            found = _rate_limited(lambda: self._client.v1.disputes.retrieve(dispute_id))
        return read_dispute(found.to_dict())

    def invoice_paid_by(self, payment_intent: str) -> str | None:
        """The invoice `payment_intent` paid, if any (the first one Stripe lists).

        One Invoice Payments lookup per payment intent for the life of the provider: a
        paid payment's invoice never changes, so the answer is kept (up to
        `PAYMENT_CACHE_SIZE` payments, the oldest forgotten first).
        """
        if payment_intent in self._invoice_of:
            return self._invoice_of[payment_intent]
        found = self._look_up_invoice_payment(payment_intent)
        with self._cache_lock:
            self._invoice_of[payment_intent] = found
            while len(self._invoice_of) > PAYMENT_CACHE_SIZE:
                self._invoice_of.pop(next(iter(self._invoice_of)))
        return found

    def list_payment_refunds(self, payment_intent: str) -> list[Refund]:
        """Every refund of `payment_intent`, newest first."""
        params: RefundListParams = {"limit": PAGE_SIZE, "payment_intent": payment_intent}
        listed = _listed("list the payment's refunds", self._client.v1.refunds.list, params)
        return [read_refund(refund) for refund in listed]

    def list_credit_notes(self, invoice_id: str) -> list[CreditNote]:
        """Every credit note of `invoice_id`, newest first."""
        params: CreditNoteListParams = {"limit": PAGE_SIZE, "invoice": invoice_id}
        listed = _listed(
            "list the invoice's credit notes", self._client.v1.credit_notes.list, params
        )
        return [read_credit_note(note) for note in listed]

    def _look_up_invoice_payment(self, payment_intent: str) -> str | None:
        params: InvoicePaymentListParams = {
            "payment": {"type": "payment_intent", "payment_intent": payment_intent},
            "limit": 10,
        }
        with _boundary("look up an invoice payment"):
            page = _rate_limited(lambda: self._client.v1.invoice_payments.list(params))
        for invoice_payment in page.data:
            invoice_id = object_id(invoice_payment.to_dict().get("invoice"))
            if invoice_id is not None:
                return invoice_id
        return None


_EPOCH = datetime.fromtimestamp(0, UTC)


def customer_idempotency_key(customer: CustomerRequest) -> str:
    """`<our customer id>:customer:<digest of name and email>`.

    A repeat with the same details gets the customer the first call made. Details
    changed since (say, an email Stripe refused, now corrected) make a new key, since
    Stripe keeps a refusal under its key for a day and refuses other parameters.
    """
    details = f"{customer.name or ''}\x1f{customer.email or ''}".encode()
    return f"{customer.customer_id}:customer:{hashlib.sha256(details).hexdigest()[:16]}"


def _metadata(request: PurchaseInvoiceRequest) -> dict[str, str]:
    return {
        META_PURCHASE_ID: request.purchase_id,
        META_WALLET_ID: request.wallet_id,
        META_TRANSACTION_ID: request.transaction_id,
    }


def _path_id(object_id: str) -> str:
    """An object id as one path segment (as stripe-python's own services quote it)."""
    return quote(object_id, safe="")


def _quote(value: str) -> str:
    """A value inside a single-quoted search string (Stripe escapes with a backslash)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
