"""The Stripe sandbox of `make run`: the Stripe-compatible server plus hosted invoice
pages whose "Pay" and "Fail payment" buttons send signed webhooks to the service.

Without a Stripe account a newcomer still sees the whole main job: buy credits (the
service makes an invoice here), open the invoice's link, pay it, and watch the credits
land through the same signed `invoice.paid` webhook Stripe would send. "Fail payment"
sends `invoice.payment_failed`, then marks the invoice uncollectible
(`invoice.marked_uncollectible`), so the purchase fails as it would at Stripe.

Only for development on loopback: nothing here checks who presses a button. `make run`
starts it only when no STRIPE_SECRET_KEY is set (scripts/dev.py), and the service
refuses STRIPE_SANDBOX together with a live key.

    python -m gateway.providers.stripe.sandbox_pages --port 12111 \
        --webhook-url http://127.0.0.1:5000/webhooks/stripe --webhook-secret whsec_...
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway import money
from gateway.providers.stripe.sandbox import Json, StripeStub

log = logging.getLogger(__name__)

PAGE_PREFIX = "/sandbox/invoices/"
_ACTION = re.compile(r"^/sandbox/invoices/(in_[A-Za-z0-9]+)(?:/(pay|fail))?$")


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header for `payload`, built as Stripe builds it."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{signed_at}.".encode() + payload, hashlib.sha256)
    return f"t={signed_at},v1={digest.hexdigest()}"


class StripeSandbox(StripeStub):
    """A `StripeStub` whose invoices link to local pages that pay or fail them."""

    def __init__(
        self, *, webhook_url: str, webhook_secret: str, return_url: str = "", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.return_url = return_url  # a link back to the console, on every invoice page
        self.deliveries: list[tuple[str, int]] = []  # (event type, the service's status)

    def invoice_page_url(self, invoice_id: str) -> str:
        return f"{self.url}{PAGE_PREFIX}{invoice_id}"

    def _finalize(self, invoice_id: str, params: Json) -> Json:
        finalized = super()._finalize(invoice_id, params)
        if self._server is not None:
            url = self.invoice_page_url(invoice_id)
            self.invoices[invoice_id]["hosted_invoice_url"] = url
            finalized["hosted_invoice_url"] = url
        return finalized

    def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        match = _ACTION.match(path)
        if match is None:
            return super().handle(method, path, query, headers, body)
        invoice_id, action = match.groups()
        if invoice_id not in self.invoices:
            return _page(404, "Invoice not found", "<p>This sandbox does not know it.</p>")
        if method == "GET" and action is None:
            return self._invoice_page(invoice_id, query)
        if method == "POST" and action is not None:
            outcome = self.pay(invoice_id) if action == "pay" else self.fail_payment(invoice_id)
            location = f"{PAGE_PREFIX}{invoice_id}?done={outcome}"
            return 303, {"Location": location, "Content-Length": "0"}, b""
        return _page(405, "Not allowed", "<p>Use the buttons on the invoice page.</p>")

    # --- what the buttons do ----------------------------------------------------------

    def pay(self, invoice_id: str) -> str:
        """The customer pays: the invoice is paid and `invoice.paid` is delivered."""
        try:
            self.mark_paid(invoice_id)
        except ValueError:
            return "not-open"
        return self._outcome([self.deliver(invoice_id, "invoice.paid")], "paid")

    def fail_payment(self, invoice_id: str) -> str:
        """The payment fails and the invoice is given up (marked uncollectible)."""
        if self.invoices[invoice_id]["status"] != "open":
            return "not-open"
        first = self.deliver(invoice_id, "invoice.payment_failed")
        self.mark_uncollectible(invoice_id)
        second = self.deliver(invoice_id, "invoice.marked_uncollectible")
        return self._outcome([first, second], "failed")

    def deliver(self, invoice_id: str, event_type: str) -> int:
        """POST a signed event carrying the invoice to the service; its HTTP status (0:
        unreachable)."""
        payload = json.dumps(self.event(invoice_id, event_type), separators=(",", ":")).encode()
        request = urllib.request.Request(  # noqa: S310  (the configured loopback URL)
            self.webhook_url,
            data=payload,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": signature_header(payload, self.webhook_secret),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            log.warning("the service did not answer the sandbox's %s webhook", event_type)
            status = 0
        self.deliveries.append((event_type, status))
        return status

    @staticmethod
    def _outcome(statuses: list[int], done: str) -> str:
        return done if all(200 <= status < 300 for status in statuses) else "undelivered"

    # --- the page ---------------------------------------------------------------------

    def _invoice_page(self, invoice_id: str, query: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            invoice = json.loads(json.dumps(self.invoices[invoice_id]))
        done = dict(part.split("=", 1) for part in query.split("&") if "=" in part).get("done")
        notices = {
            "paid": "Paid. The service was sent a signed invoice.paid webhook.",
            "failed": "Payment failed. The service was sent invoice.payment_failed, then "
            "invoice.marked_uncollectible.",
            "not-open": "This invoice is no longer open.",
            "undelivered": "The webhook could not be delivered: is the service running?",
        }
        currency = str(invoice["currency"]).upper()
        total = money.format_minor(int(invoice.get("total") or 0), currency)
        notice = notices.get(done or "")
        is_open = invoice["status"] == "open"
        buttons = (
            f'<form method="post" action="{PAGE_PREFIX}{invoice_id}/pay"><button class="pay" '
            'type="submit">Pay</button></form>'
            f'<form method="post" action="{PAGE_PREFIX}{invoice_id}/fail"><button class="fail" '
            'type="submit">Fail payment</button></form>'
            if is_open
            else ""
        )
        lines = "".join(
            f"<li>{html.escape(str(line.get('description') or ''))}</li>"
            for line in invoice.get("lines", {}).get("data", [])
        )
        body = (
            '<p class="badge">Stripe sandbox: no money moves</p>'
            f"<h1>Invoice {html.escape(str(invoice.get('number') or invoice_id))}</h1>"
            + (f'<p class="notice" role="status">{html.escape(notice)}</p>' if notice else "")
            + f"<dl><dt>Amount due</dt><dd>{html.escape(total)}</dd>"
            f"<dt>Status</dt><dd>{html.escape(str(invoice['status']))}</dd></dl>"
            + (f"<ul>{lines}</ul>" if lines else "")
            + f'<div class="buttons">{buttons}</div>'
            + (
                f'<p><a href="{html.escape(self.return_url)}">Back to the console</a></p>'
                if self.return_url
                else ""
            )
        )
        return _page(200, f"Invoice {invoice_id}", body)


_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;padding:1rem;background:#f5f6f8;"
    "color:#1d2433}main{max-width:32rem;margin:1rem auto;background:#fff;padding:1.25rem;"
    "border:1px solid #d9dde5;border-radius:.5rem}.badge{background:#fff3cd;color:#5c4400;"
    "padding:.25rem .5rem;border-radius:.25rem;display:inline-block}dt{color:#5b6475}"
    "dd{margin:0 0 .5rem;font-weight:600}.buttons{display:flex;gap:1rem;flex-wrap:wrap}"
    "button{font:inherit;padding:.6rem 1.2rem;border-radius:.375rem;border:0;cursor:pointer}"
    ".pay{background:#1e7d3a;color:#fff}.fail{background:#b3261e;color:#fff}"
    ".notice{background:#e7f4ea;padding:.5rem;border-radius:.25rem}"
)


def _page(status: int, title: str, body: str) -> tuple[int, dict[str, str], bytes]:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · Stripe sandbox</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    ).encode()
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
    }
    return status, headers, document


def main(argv: list[str] | None = None) -> None:
    """Serve the sandbox until interrupted (scripts/dev.py starts it for `make run`)."""
    import argparse

    parser = argparse.ArgumentParser(description="The Stripe sandbox of `make run`.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--api-key", required=True, help="the sk_test_ key the service sends")
    parser.add_argument("--webhook-url", required=True)
    parser.add_argument("--webhook-secret", required=True)
    parser.add_argument("--return-url", default="", help="linked from every invoice page")
    args = parser.parse_args(argv)
    if urlsplit(args.webhook_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the sandbox only sends webhooks to a loopback address")
    sandbox = StripeSandbox(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        return_url=args.return_url,
    )
    url = sandbox.start()
    print(f"Stripe sandbox on {url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()


if __name__ == "__main__":
    main()
