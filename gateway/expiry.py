"""The expiry sweep: wallets past `expiration_at` are terminated and their credits voided."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from gateway import settlement
from gateway.db import Database, in_batches
from gateway.providers.base import PaymentProvider
from gateway.wallets import expire_due_wallets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpiryResult:
    expired: int
    batches: int


def expire_wallets(
    db: Database, *, now: datetime, batch_size: int, provider: PaymentProvider | None
) -> ExpiryResult:
    """Sweep in batches of `batch_size`, one short transaction each, until none is due.
    Once a batch has committed, the invoices of the unpaid purchases it failed are
    voided at `provider` (None: left flagged for reconciliation).

    Safe to run on several hosts at once: each batch locks its rows with SKIP LOCKED,
    so hosts share the work instead of waiting on each other, and a wallet is ended
    once (only active wallets are selected, under the row lock).
    """
    expired = batches = 0
    for batch in in_batches(
        db,
        lambda session: expire_due_wallets(session, now, batch_size),
        batch_size,
        handled=lambda batch: len(batch.wallet_ids),
    ):
        settlement.void_invoices_of_ended_wallets(db.session, provider, batch.purchases_to_void)
        if batch.wallet_ids:
            expired += len(batch.wallet_ids)
            batches += 1
            log.info("expired %d wallet(s) (batch %d)", len(batch.wallet_ids), batches)
    return ExpiryResult(expired=expired, batches=batches)
