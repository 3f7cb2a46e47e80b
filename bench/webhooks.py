"""Stripe webhook deliveries under load: verified, recorded, settled once.

    python -m bench.webhooks [--purchases 1000] [--concurrency 8]

Runs the real service under gunicorn on a fresh PostgreSQL database
(GATEWAY_BENCH_DATABASE_URL, default .../gateway_bench), writes purchases awaiting
payment straight into it, and sends signed deliveries from a separate process,
closed loop:

- ignored:     events of a type the service does not use (verify + record only)
- paid:        one invoice.paid per purchase, each purchase on its own wallet
- redelivered: the same deliveries again (every one a duplicate: 200, no change)
- one wallet:  invoice.paid for purchases that all belong to one wallet (serialised
               on its row lock)
- baseline:    bench/baseline_app.py on the same kind of deliveries: verify the
               signature and insert the event id, nothing else

Then checks that every purchase was credited exactly once. Signatures are made just
before each scenario, so keep a scenario under the 300 s tolerance.

One run on the 2-core development machine, shared (load average 4.3 during the run;
compare rows of one run, not runs): 2 sync workers, 1000 deliveries per scenario,
concurrency 8; all 2000 purchases ended credited exactly once.

| scenario | req/s | p50 ms | p99 ms |
|---|---|---|---|
| ignored | 75 | 99 | 240 |
| paid | 53 | 137 | 297 |
| redelivered | 90 | 89 | 142 |
| one wallet | 30 | 261 | 507 |
| baseline: verify + insert id | 329 | 24 | 70 |

A first delivery is one transaction of three statements (insert the event row if
absent, lock it, mark it) plus, when it settles, the wallet and purchase locks and
the ledger update; a duplicate is an insert that does nothing and a read. The gap to
the baseline is that work done through the ORM, which the baseline skips. Deliveries
for one wallet queue on its row lock, one settlement at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from bench.common import bench_database_url, fresh_database, gunicorn, markdown_table, run_load
from gateway import ledger, money
from gateway.db import utcnow
from gateway.models import Customer, Purchase, PurchaseStatus, Wallet, WalletStatus
from gateway.providers.base import META_PURCHASE_ID

SECRET = "whsec_bench"
CREDITS = Decimal("10")
RATE = Decimal("2.50")


def make_purchases(session: Session, wallets: int, per_wallet: int) -> list[tuple[str, str]]:
    """(purchase id, invoice id) of `wallets` x `per_wallet` open purchases."""
    now = utcnow()
    amount = money.purchase_amount_minor(CREDITS, RATE, "USD")
    made = []
    for _ in range(wallets):
        customer = Customer(external_id=f"bench-{uuid.uuid4().hex}", currency="USD")
        session.add(customer)
        session.flush()
        wallet = Wallet(
            customer_id=customer.id, status=WalletStatus.ACTIVE, currency="USD",
            rate_amount=RATE, credits_balance=Decimal(0), consumed_credits=Decimal(0),
            consumed_amount_cents=0, created_at=now,
        )  # fmt: skip
        session.add(wallet)
        session.flush()
        for _ in range(per_wallet):
            entry = ledger.open_purchase_entry(session, wallet, CREDITS, now)
            invoice_id = f"in_bench_{uuid.uuid4().hex}"
            purchase = Purchase(
                wallet_id=wallet.id, customer_id=customer.id, transaction_id=entry.id,
                status=PurchaseStatus.OPEN, currency="USD", credit_amount=CREDITS,
                amount_cents=amount, provider_invoice_id=invoice_id, invoice_status="open",
                subtotal_cents=amount, tax_cents=0, total_cents=amount,
                provider_void_pending=False, created_at=now,
            )  # fmt: skip
            session.add(purchase)
            session.flush()
            made.append((purchase.id, invoice_id))
    session.commit()
    return made


def delivery(event: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(event, separators=(",", ":"))
    signed_at = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{signed_at}.{body}".encode(), hashlib.sha256)
    return {
        "method": "POST",
        "path": "/webhooks/stripe",
        "headers": {
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={signed_at},v1={digest.hexdigest()}",
        },
        "body": body,
    }


def paid_event(purchase_id: str, invoice_id: str, event_id: str) -> dict[str, Any]:
    amount = money.purchase_amount_minor(CREDITS, RATE, "USD")
    invoice = {
        "id": invoice_id, "object": "invoice", "status": "paid", "currency": "usd",
        "subtotal": amount, "total": amount, "amount_due": amount, "amount_paid": amount,
        "amount_remaining": 0, "total_taxes": [], "discounts": [],
        "total_discount_amounts": [], "livemode": False, "created": int(time.time()),
        "metadata": {META_PURCHASE_ID: purchase_id},
    }  # fmt: skip
    return {"id": event_id, "object": "event", "type": "invoice.paid", "livemode": False,
            "created": int(time.time()), "data": {"object": invoice}}  # fmt: skip


def ignored_event(n: int) -> dict[str, Any]:
    return {"id": f"evt_bench_{uuid.uuid4().hex}", "object": "event",
            "type": "customer.updated", "livemode": False, "created": int(time.time()),
            "data": {"object": {"id": f"cus_{n}", "object": "customer"}}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--purchases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    database_url = bench_database_url()
    fresh_database(database_url)
    engine = create_engine(database_url)
    with Session(engine) as session:
        spread = make_purchases(session, args.purchases, 1)
        single = make_purchases(session, 1, args.purchases)
    env = {
        "DATABASE_URL": database_url,
        "GATEWAY_API_KEYS": "bench-key",
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_WEBHOOK_SECRETS": SECRET,
    }
    rows = []
    with gunicorn("wsgi:app", env) as url:
        paid = [paid_event(p, i, f"evt_bench_{uuid.uuid4().hex}") for p, i in spread]
        scenarios = [
            ("ignored", lambda: [delivery(ignored_event(n)) for n in range(args.purchases)]),
            ("paid", lambda: [delivery(event) for event in paid]),
            ("redelivered", lambda: [delivery(event) for event in paid]),
            ("one wallet", lambda: [
                delivery(paid_event(p, i, f"evt_bench_{uuid.uuid4().hex}")) for p, i in single
            ]),
        ]  # fmt: skip
        for name, build in scenarios:
            result = run_load(build(), url, mode="closed", concurrency=args.concurrency)
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
    # The least a correct endpoint does (bench/baseline_app.py: verify, insert the id),
    # under the same gunicorn settings, fed the same kind of deliveries.
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_baseline_events (id text PRIMARY KEY)")
    with gunicorn("bench.baseline_app:app", env) as url:
        deliveries = [
            delivery(paid_event(p, i, f"evt_bench_{uuid.uuid4().hex}")) for p, i in spread
        ]
        result = run_load(deliveries, url, mode="closed", concurrency=args.concurrency)
        rows.append(
            [
                "baseline: verify + insert id",
                result["count"],
                result["errors"],
                json.dumps(result["statuses"], sort_keys=True),
                f"{result['throughput_rps']:.0f}",
                result["p50_ms"],
                result["p99_ms"],
            ]
        )
    print(
        markdown_table(
            ["scenario", "requests", "errors", "statuses", "req/s", "p50 ms", "p99 ms"], rows
        )
    )
    with Session(engine) as session:
        credited = session.execute(select(func.sum(Wallet.credits_balance))).scalar_one()
        settled = session.execute(
            select(func.count()).where(Purchase.status == PurchaseStatus.SETTLED)
        ).scalar_one()
    expected = CREDITS * 2 * args.purchases
    print(f"\nsettled purchases: {settled} of {2 * args.purchases}; credits {credited} "
          f"(expected {expected}): {'OK' if credited == expected else 'MISMATCH'}")  # fmt: skip
    engine.dispose()


if __name__ == "__main__":
    main()
