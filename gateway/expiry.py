"""The expiry sweep: wallets past `expiration_at` are terminated and their credits voided."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from gateway.db import Database, unit_of_work
from gateway.wallets import expire_due_wallets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpiryResult:
    expired: int
    batches: int


def expire_wallets(db: Database, *, now: datetime, batch_size: int) -> ExpiryResult:
    """Sweep in batches of `batch_size`, one short transaction each, until none is due.

    Safe to run on several hosts at once: each batch locks its rows with SKIP LOCKED,
    so hosts share the work instead of waiting on each other, and a wallet is ended
    once (only active wallets are selected, under the row lock).
    """
    expired = batches = 0
    while True:
        session = db.session()
        try:
            with unit_of_work(session):
                ids = expire_due_wallets(session, now, batch_size)
        finally:
            session.close()
        if not ids:
            break
        expired += len(ids)
        batches += 1
        log.info("expired %d wallet(s) (batch %d)", len(ids), batches)
        if len(ids) < batch_size:
            break
    return ExpiryResult(expired=expired, batches=batches)
