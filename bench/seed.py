"""Bulk rows for the benchmarks, written with COPY, and the ledger checks run after them.

The rows are the ones the use cases write (same columns, statuses and exact amounts:
an entry's `amount` is credits x rate, a purchase bills `money.purchase_amount_minor`),
only made a hundred thousand at a time instead of one request each:

- `insert_wallets`: a customer and an active wallet each, optionally with a settled
  `granted` entry raising the balance, and an `expiration_at`;
- `insert_open_purchases`: for each wallet, a pending `purchased` entry and an `open`
  purchase whose finalized invoice id and totals are stored (what a purchase looks like
  once the create call has finished and before the invoice is paid).

`ledger_report` then checks, with set-based queries, what must hold whatever happened:
every wallet's balance equals the sum of its settled entries, and every purchase's
entry is in the state its purchase says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from gateway import money
from gateway.db import utcnow

CURRENCY = "USD"
RATE = Decimal("2.50")
PURCHASE_CREDITS = Decimal("10")
# The seeded entries stand for what API callers made before the run.
SEED_AUTHOR = "api:bench"


def connect(database_url: str) -> psycopg.Connection[Any]:
    """A plain psycopg connection (autocommit) to the SQLAlchemy URL `database_url`."""
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg.connect(dsn, autocommit=True)


@dataclass(frozen=True)
class SeedWallet:
    customer_id: str
    external_id: str
    wallet_id: str


@dataclass(frozen=True)
class SeedInvoice:
    """What a finalized invoice stores on its purchase."""

    id: str
    subtotal_cents: int
    tax_cents: int
    total_cents: int


@dataclass(frozen=True)
class SeedPurchase:
    purchase_id: str
    wallet_id: str
    customer_id: str
    transaction_id: str
    invoice: SeedInvoice


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def insert_wallets(
    conn: psycopg.Connection[Any],
    count: int,
    *,
    tag: str,
    granted: Decimal = Decimal(0),
    expiration_at: datetime | None = None,
    created_at: datetime | None = None,
    provider_customers: bool = False,
) -> list[SeedWallet]:
    """`count` customers with one active wallet each (balance = `granted`, entered in
    the ledger). `provider_customers`: each customer already has a Stripe customer id
    (`cus_<our id>`), as after its first purchase."""
    now = created_at or utcnow()
    made = [
        SeedWallet(f"cus_{tag}_{n:07d}", f"bench-{tag}-{n}", f"wal_{tag}_{n:07d}")
        for n in range(count)
    ]
    with conn.transaction():
        _copy(
            conn,
            "customers",
            ("id", "external_id", "currency", "name", "email", "provider_customer_id",
             "created_at", "updated_at"),
            (
                (w.customer_id, w.external_id, CURRENCY, f"Customer {w.external_id}",
                 f"{w.external_id}@example.com",
                 f"cus_stripe_{w.customer_id}" if provider_customers else None, now, now)
                for w in made
            ),
        )  # fmt: skip
        _copy(
            conn,
            "wallets",
            ("id", "customer_id", "status", "currency", "rate_amount", "credits_balance",
             "consumed_credits", "consumed_amount_cents", "expiration_at", "created_at",
             "updated_at"),
            (
                (w.wallet_id, w.customer_id, "active", CURRENCY, RATE, granted, Decimal(0), 0,
                 expiration_at, now, now)
                for w in made
            ),
        )  # fmt: skip
        if granted > 0:
            amount = money.credits_value(granted, RATE)
            _copy(
                conn,
                "wallet_transactions",
                ("id", "wallet_id", "transaction_type", "transaction_status", "status",
                 "credit_amount", "amount", "settled_at", "created_at", "created_by"),
                (
                    (f"wtx_{tag}_g{n:07d}", w.wallet_id, "inbound", "granted", "settled",
                     granted, amount, now, now, SEED_AUTHOR)
                    for n, w in enumerate(made)
                ),
            )  # fmt: skip
    return made


def purchase_amount_cents(credits: Decimal = PURCHASE_CREDITS) -> int:
    return money.purchase_amount_minor(credits, RATE, CURRENCY)


def insert_open_purchases(
    conn: psycopg.Connection[Any],
    wallets: Sequence[SeedWallet],
    invoices: Sequence[SeedInvoice],
    *,
    tag: str,
    purchase_ids: Sequence[str] | None = None,
    credits: Decimal = PURCHASE_CREDITS,
    created_at: datetime | None = None,
) -> list[SeedPurchase]:
    """One open purchase of `credits` per wallet, its invoice finalized (`invoices[i]`
    for `wallets[i]`), its ledger entry pending."""
    now = created_at or utcnow()
    ids = purchase_ids or [f"pur_{tag}_{n:07d}" for n in range(len(wallets))]
    made = [
        SeedPurchase(ids[n], w.wallet_id, w.customer_id, f"wtx_{tag}_p{n:07d}", invoices[n])
        for n, w in enumerate(wallets)
    ]
    amount = money.credits_value(credits, RATE)
    cents = purchase_amount_cents(credits)
    with conn.transaction():
        _copy(
            conn,
            "wallet_transactions",
            ("id", "wallet_id", "transaction_type", "transaction_status", "status",
             "credit_amount", "amount", "created_at", "created_by"),
            (
                (p.transaction_id, p.wallet_id, "inbound", "purchased", "pending", credits,
                 amount, now, SEED_AUTHOR)
                for p in made
            ),
        )  # fmt: skip
        _copy(
            conn,
            "purchases",
            ("id", "wallet_id", "customer_id", "transaction_id", "status", "currency",
             "credit_amount", "amount_cents", "provider", "provider_invoice_id",
             "invoice_status", "subtotal_cents", "tax_cents", "total_cents",
             "provider_void_pending", "created_at", "updated_at"),
            (
                (p.purchase_id, p.wallet_id, p.customer_id, p.transaction_id, "open", CURRENCY,
                 credits, cents, "stripe", p.invoice.id, "open", p.invoice.subtotal_cents,
                 p.invoice.tax_cents, p.invoice.total_cents, False, now, now)
                for p in made
            ),
        )  # fmt: skip
    return made


def analyze(conn: psycopg.Connection[Any]) -> None:
    """Fresh planner statistics after a bulk load (as autovacuum would do, later)."""
    conn.execute("ANALYZE")


# --- checks -----------------------------------------------------------------------------

# A purchase's status and the status its ledger entry must have.
ENTRY_STATUS_OF = {
    "creating": "pending",
    "open": "pending",
    "settled": "settled",
    "failed": "failed",
    "refund_required": "failed",
    "review_required": "pending",
}


@dataclass
class LedgerReport:
    wallets: int
    balance_mismatches: int  # balance != sum of settled entries
    negative_balances: int
    purchases_by_status: dict[str, int]
    entry_mismatches: int  # entry status not the one its purchase's status implies
    settled_credits: Decimal  # sum of settled purchased entries

    @property
    def ok(self) -> bool:
        return (
            self.balance_mismatches == 0
            and self.entry_mismatches == 0
            and not (self.negative_balances)
        )

    def summary(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.purchases_by_status.items()))
        return (
            f"{self.wallets} wallets, {self.balance_mismatches} balance mismatches, "
            f"{self.entry_mismatches} purchase/entry mismatches; purchases: {statuses or 'none'}"
        )


def ledger_report(conn: psycopg.Connection[Any], purchase_like: str = "%") -> LedgerReport:
    """The invariants over every wallet; purchase figures for ids LIKE `purchase_like`."""
    wallets, mismatches, negative = conn.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE w.credits_balance <> coalesce(s.total, 0)),
               count(*) FILTER (WHERE w.credits_balance < 0)
        FROM wallets w
        LEFT JOIN (
            SELECT wallet_id,
                   sum(CASE WHEN transaction_type = 'inbound' THEN credit_amount
                            ELSE -credit_amount END) AS total
            FROM wallet_transactions WHERE status = 'settled' GROUP BY wallet_id
        ) s ON s.wallet_id = w.id
        """
    ).fetchone() or (0, 0, 0)
    by_status: dict[str, int] = {}
    entry_mismatches = 0
    for status, entry_status, count in conn.execute(
        """
        SELECT p.status, e.status, count(*)
        FROM purchases p JOIN wallet_transactions e ON e.id = p.transaction_id
        WHERE p.id LIKE %s GROUP BY 1, 2
        """,
        (purchase_like,),
    ):
        by_status[status] = by_status.get(status, 0) + count
        if ENTRY_STATUS_OF.get(status) != entry_status:
            entry_mismatches += count
    row = conn.execute(
        """
        SELECT coalesce(sum(e.credit_amount), 0)
        FROM purchases p JOIN wallet_transactions e ON e.id = p.transaction_id
        WHERE p.id LIKE %s AND e.status = 'settled'
        """,
        (purchase_like,),
    ).fetchone()
    return LedgerReport(
        wallets=wallets,
        balance_mismatches=mismatches,
        negative_balances=negative,
        purchases_by_status=by_status,
        entry_mismatches=entry_mismatches,
        settled_credits=Decimal(row[0]) if row else Decimal(0),
    )


def wallet_balances(conn: psycopg.Connection[Any], wallet_ids: Sequence[str]) -> dict[str, Decimal]:
    return dict(
        conn.execute(
            "SELECT id, credits_balance FROM wallets WHERE id = ANY(%s)", (list(wallet_ids),)
        ).fetchall()
    )
