"""`gateway reconcile` over many pending purchases: Stripe calls, time and memory.

    python -m bench.reconcile [--purchases 10000] [--paid 0.1] [--latency 0.0]

Builds a fresh PostgreSQL database (GATEWAY_BENCH_RECONCILE_URL, default
.../gateway_bench_reconcile) holding PURCHASES open purchases (100 per wallet), each
with its finalized invoice in a Stripe-compatible stub served over HTTP
(tests/stripe_stub.py, LATENCY seconds added to each answer). A share PAID of the
invoices is then paid at "Stripe" with no webhook sent. `gateway reconcile --format
json` runs as a separate process, twice: the first run settles the paid ones, the
second finds everything consistent. Printed: Stripe requests by route, wall time and
the reconcile process's peak memory (max RSS).

Runs on the 2-core development machine (shared with other work, load ~3), one
invoice in ten paid, no added latency; "max RSS" is the largest child process so far:

| purchases | run | exit | Stripe requests | list pages | other | settled | seconds | max RSS MiB |
|---|---|---|---|---|---|---|---|---|
| 1,000 | repairs | 1 | 10 | 10 | 0 | 100 | 8.1 | 95 |
| 1,000 | consistent | 0 | 10 | 10 | 0 | 0 | 7.9 | 95 |
| 10,000 | repairs | 1 | 100 | 100 | 0 | 1000 | 38.3 | 156 |
| 10,000 | consistent | 0 | 100 | 100 | 0 | 0 | 53.3 | 161 |

Stripe is read as one list page per 100 invoices; no invoice is retrieved one by one,
whatever the number of pending purchases. About 4 s of each run is the process
starting (`gateway --help` alone takes that long on this machine). The rest is
mostly stripe-python turning each listed invoice into a `StripeObject` (a few ms
each here; against the real API, ~100 page round trips add tens of seconds) and,
in the first run, one short transaction per settlement.

Memory: pages are matched one at a time and purchases read in batches, so the data a
run holds does not grow with the number of purchases, except the set of unsettled
purchase ids already matched (about 100 bytes each). Traced with tracemalloc inside
the reconcile process, the Python heap peaked at 65.0 MiB with 500 purchases and
65.4 MiB with 4,000 (about 60 MiB of it is imported code). Max RSS still rose with
the number of pages read (95 MiB at 500, 106 at 4,000, 156-161 at 10,000, without
tracing), which the traced heap does not account for: most likely memory the
allocator keeps after the pages' large response bodies are freed, not objects kept
alive. Worth watching on very large windows (--since bounds them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import time
from collections import Counter
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from bench.common import BIN, ROOT, fresh_database, markdown_table
from gateway import money
from gateway.db import new_id, utcnow
from gateway.models import (
    Customer,
    EntryStatus,
    Purchase,
    PurchaseStatus,
    TransactionStatus,
    TransactionType,
    Wallet,
    WalletStatus,
    WalletTransaction,
)
from gateway.providers.base import META_PURCHASE_ID, META_TRANSACTION_ID, META_WALLET_ID
from tests.stripe_stub import StripeStub

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/gateway_bench_reconcile"
SECRET_KEY = "sk_test_bench_reconcile"
PER_WALLET = 100


def _stub_call(stub: StripeStub, path: str, form: list[tuple[str, str]]) -> dict[str, Any]:
    status, _headers, body = stub.handle(
        "POST", path, "", {"Authorization": f"Bearer {SECRET_KEY}"}, urlencode(form).encode()
    )
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def build(url: str, stub: StripeStub, purchases: int, paid_share: float) -> int:
    """The purchases, in the database and at the stub; returns how many were paid."""
    engine = create_engine(url)
    now = utcnow()
    rate = Decimal("1.00")
    paid = 0
    every = round(1 / paid_share) if paid_share > 0 else 0
    with Session(engine) as session:
        for first in range(0, purchases, PER_WALLET):
            customer_id, wallet_id = new_id("cus"), new_id("wal")
            session.execute(
                insert(Customer),
                [{"id": customer_id, "external_id": customer_id, "currency": "USD"}],
            )
            session.execute(
                insert(Wallet),
                [
                    {
                        "id": wallet_id,
                        "customer_id": customer_id,
                        "status": WalletStatus.ACTIVE,
                        "currency": "USD",
                        "rate_amount": rate,
                    }
                ],
            )
            stripe_customer = _stub_call(stub, "/v1/customers", [])["id"]
            entries, rows = [], []
            for index in range(first, min(first + PER_WALLET, purchases)):
                entry_id, purchase_id = new_id("wtx"), new_id("pur")
                credits = Decimal(1 + index % 7)
                cents = money.purchase_amount_minor(credits, rate, "USD")
                invoice_id = _stub_call(
                    stub,
                    "/v1/invoices",
                    [
                        ("customer", stripe_customer),
                        ("currency", "usd"),
                        (f"metadata[{META_PURCHASE_ID}]", purchase_id),
                        (f"metadata[{META_WALLET_ID}]", wallet_id),
                        (f"metadata[{META_TRANSACTION_ID}]", entry_id),
                    ],
                )["id"]
                _stub_call(
                    stub,
                    "/v1/invoiceitems",
                    [
                        ("customer", stripe_customer),
                        ("invoice", invoice_id),
                        ("amount", str(cents)),
                    ],
                )
                _stub_call(stub, f"/v1/invoices/{invoice_id}/finalize", [])
                if every and index % every == 0:
                    stub.mark_paid(invoice_id)
                    paid += 1
                entries.append(
                    {
                        "id": entry_id,
                        "wallet_id": wallet_id,
                        "transaction_type": TransactionType.INBOUND,
                        "transaction_status": TransactionStatus.PURCHASED,
                        "status": EntryStatus.PENDING,
                        "credit_amount": credits,
                        "amount": money.credits_value(credits, rate),
                        "created_at": now,
                    }
                )
                rows.append(
                    {
                        "id": purchase_id,
                        "wallet_id": wallet_id,
                        "customer_id": customer_id,
                        "transaction_id": entry_id,
                        "status": PurchaseStatus.OPEN,
                        "currency": "USD",
                        "credit_amount": credits,
                        "amount_cents": cents,
                        "provider_invoice_id": invoice_id,
                        "invoice_status": "open",
                        "subtotal_cents": cents,
                        "tax_cents": 0,
                        "total_cents": cents,
                        "provider_void_pending": False,
                        "created_at": now,
                    }
                )
            session.execute(insert(WalletTransaction), entries)
            session.execute(insert(Purchase), rows)
        session.commit()
    engine.dispose()
    return paid


def reconcile_once(url: str, stub: StripeStub) -> list[Any]:
    before = len(stub.requests)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_API_BASE": stub.url,
        "STRIPE_WEBHOOK_SECRETS": "",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "gateway"), "reconcile", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode == 2:
        raise SystemExit(f"reconcile could not run: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    routes = Counter(
        "list" if request.path == "/v1/invoices" else "other" for request in stub.requests[before:]
    )
    settled = sum(1 for finding in report["findings"] if finding["outcome"] == "settled")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return [
        done.returncode,
        routes["list"] + routes["other"],
        routes["list"],
        routes["other"],
        settled,
        f"{seconds:.1f}",
        f"{peak_mib:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=10_000)
    parser.add_argument("--paid", type=float, default=0.1, help="share of invoices paid")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per Stripe answer")
    args = parser.parse_args()
    url = os.environ.get("GATEWAY_BENCH_RECONCILE_URL", DEFAULT_URL)
    fresh_database(url)
    with StripeStub(api_key=SECRET_KEY) as stub:
        paid = build(url, stub, args.purchases, args.paid)
        print(f"{args.purchases} open purchases, {paid} of them paid at Stripe without a webhook")
        stub.latency = args.latency
        rows = [["repairs", *reconcile_once(url, stub)], ["consistent", *reconcile_once(url, stub)]]
    print(
        markdown_table(
            [
                "run",
                "exit",
                "Stripe requests",
                "list pages",
                "other",
                "settled",
                "seconds",
                "max RSS MiB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
