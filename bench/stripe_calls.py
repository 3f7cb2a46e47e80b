"""The Stripe calls of one purchase, made directly with stripe-python: the purchases'
baseline, run as its own process.

    python -m bench.stripe_calls --base http://127.0.0.1:12111 --count 300

Per iteration, one after the other, the three calls a purchase makes once its Stripe
customer exists: create the draft invoice, add its line, finalize it, with the same
parameters, idempotency keys and client (one `StripeClient` on `RequestsClient`, kept
connections) as the service. Prints one JSON object: count, latency percentiles of
the three calls together, and the mode of the calls (so the service's figure minus
this one is what the service adds per purchase: HTTP, validation, the database).
Also `--list` reads every invoice with the list API in pages of 100 (reconcile's
reading of Stripe, alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

import stripe

from bench.loadgen import percentile


def client(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_bench",
        base_addresses={"api": base, "connect": base, "files": base, "meter_events": base},
        max_network_retries=2,
        http_client=stripe.RequestsClient(timeout=20),
    )


def purchase_calls(stripe_client: stripe.StripeClient, customer: str, n: int, run: str) -> None:
    key = f"bench-{run}-{n}"
    metadata = {"gateway_purchase_id": key, "gateway_wallet_id": "wal_bench",
                "gateway_transaction_id": f"wtx_{key}"}  # fmt: skip
    invoice = stripe_client.v1.invoices.create(
        {
            "customer": customer,
            "currency": "usd",
            "description": "10 prepaid credits at 2.50 USD each",
            "metadata": metadata,
            "discounts": "",
            "pending_invoice_items_behavior": "exclude",
            "auto_advance": False,
            "collection_method": "charge_automatically",
        },
        {"idempotency_key": f"{key}:invoice"},
    )
    stripe_client.v1.invoice_items.create(
        {
            "customer": customer,
            "invoice": invoice.id,
            "currency": "usd",
            "amount": 2500,
            "description": "10 prepaid credits at 2.50 USD each",
            "discountable": False,
            "discounts": "",
            "metadata": metadata,
        },
        {"idempotency_key": f"{key}:item"},
    )
    stripe_client.v1.invoices.finalize_invoice(
        invoice.id, {"auto_advance": True}, {"idempotency_key": f"{key}:finalize"}
    )


def summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(len(ordered) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p90_ms": round(percentile(ordered, 0.90) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the Stripe-compatible server's URL")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--list", action="store_true", help="page through every invoice")
    args = parser.parse_args(argv)
    stripe_client = client(args.base)
    if args.list:
        started = time.perf_counter()
        seen, pages = 0, 0
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = stripe_client.v1.invoices.list(params)  # type: ignore[arg-type]
            pages += 1
            seen += len(page.data)
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1].id
        elapsed = time.perf_counter() - started
        json.dump({"invoices": seen, "pages": pages, "elapsed_s": round(elapsed, 3)}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    customer = stripe_client.v1.customers.create({"name": "Bench baseline"}).id
    run = uuid.uuid4().hex[:8]
    for n in range(args.warmup):
        purchase_calls(stripe_client, customer, -1 - n, run)
    latencies = []
    started = time.perf_counter()
    for n in range(args.count):
        began = time.perf_counter()
        purchase_calls(stripe_client, customer, n, run)
        latencies.append(time.perf_counter() - began)
    json.dump(summary(latencies, time.perf_counter() - started), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
