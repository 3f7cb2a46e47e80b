"""Credit applications under load, and what an Idempotency-Key costs.

    python -m bench.credit_applications [--requests 2000] [--concurrency 8]
    python -m bench.credit_applications --url http://127.0.0.1:8000   # a running server

Runs the real service under gunicorn on a fresh PostgreSQL database
(GATEWAY_BENCH_DATABASE_URL, default .../gateway_bench), or uses the server at
--url (its API keys must include "bench-key"), and sends, from a separate process,
closed-loop load of:

- spread:      applications to many customers' wallets (little lock contention)
- spread+key:  the same with a fresh Idempotency-Key on each request
- replay:      the same keyed requests again (every answer is a stored replay)
- one wallet:  every application against one customer's wallet (all serialised on
               its row lock)

Prints a table of throughput and latency percentiles. Numbers depend on the
machine; compare rows of one run, not runs of different machines. One run on the
2-core development machine (shared, load ~3; 2 sync workers, 1500 requests each,
concurrency 8):

| scenario | req/s | p50 ms | p99 ms |
|---|---|---|---|
| spread | 52 | 133 | 284 |
| spread+key | 46 | 160 | 401 |
| replay | 267 | 30 | 73 |
| one wallet | 86 | 89 | 230 |

Sequentially, one applied credit application took about 20 ms and about 24 ms with
an Idempotency-Key (the claim row and the stored answer).
"""

from __future__ import annotations

import argparse
import json
import urllib.request
import uuid
from typing import Any

from bench.common import bench_database_url, fresh_database, gunicorn, markdown_table, run_load

API_KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def call(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + "/api/v1" + path, data=json.dumps(body).encode(), headers=HEADERS, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def customer_with_wallet(url: str, name: str, credits: str) -> str:
    call(url, "/customers", {"customer": {"external_id": name, "currency": "USD"}})
    call(
        url,
        "/subscriptions",
        {"subscription": {"external_id": f"{name}-sub", "external_customer_id": name,
                          "plan_code": "bench"}},
    )  # fmt: skip
    call(
        url,
        "/wallets",
        {"wallet": {"external_customer_id": name, "rate_amount": "0.333",
                    "granted_credits": credits}},
    )  # fmt: skip
    return name


def application(customer: str, invoice: str, key: str | None) -> dict[str, Any]:
    headers = dict(HEADERS)
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {
        "credit_application": {
            "invoice_external_id": invoice,
            "external_customer_id": customer,
            "invoice_type": "usage",
            "currency": "USD",
            "subtotal_amount_cents": 7,
            "tax_rate": "20",
        }
    }
    return {"method": "POST", "path": "/api/v1/credit_applications", "headers": headers,
            "body": json.dumps(body)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--url", help="a running server instead of a fresh one")
    args = parser.parse_args()

    if args.url:
        rows = measure(args.url.rstrip("/"), args)
    else:
        database_url = bench_database_url()
        fresh_database(database_url)
        env = {"DATABASE_URL": database_url, "GATEWAY_API_KEYS": API_KEY}
        with gunicorn("wsgi:app", env) as url:
            rows = measure(url, args)
    print(
        markdown_table(
            ["scenario", "requests", "errors", "statuses", "req/s", "p50 ms", "p99 ms"], rows
        )
    )


def measure(url: str, args: argparse.Namespace) -> list[list[Any]]:
    run = uuid.uuid4().hex[:8]
    customers = [
        customer_with_wallet(url, f"bench-{run}-{n}", "1000000") for n in range(args.customers)
    ]
    single = customer_with_wallet(url, f"bench-{run}-single", "1000000")
    n = args.requests
    keyed = [
        application(customers[i % len(customers)], f"{run}-keyed-{i}", f"{run}-key-{i}")
        for i in range(n)
    ]
    scenarios = [
        ("spread", [application(customers[i % len(customers)], f"{run}-s-{i}", None)
                    for i in range(n)]),
        ("spread+key", keyed),
        ("replay", keyed),
        ("one wallet", [application(single, f"{run}-one-{i}", None) for i in range(n)]),
    ]  # fmt: skip
    rows = []
    for name, requests in scenarios:
        result = run_load(requests, url, mode="closed", concurrency=args.concurrency)
        rows.append(
            [
                name,
                result["count"],
                result["errors"],
                json.dumps(result["statuses"], sort_keys=True),
                f"{result['throughput_rps']:.0f}",
                result["p50_ms"],
                result["p99_ms"],
            ]
        )
    return rows


if __name__ == "__main__":
    main()
