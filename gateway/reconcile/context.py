"""The state one reconciliation run shares between its steps: what it was asked, what
it has seen so far, and its report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from gateway import actors
from gateway.db import Database
from gateway.models import PaymentReturn, Purchase, PurchaseStatus, ReturnKind
from gateway.providers.base import PaymentProvider
from gateway.reconcile.report import Finding, FindingAction, ProgressSink, ReconcileReport

log = logging.getLogger(__name__)

# Without --since, Stripe's invoices and refunds are listed back this far, so settled
# purchases and unknown payments of the last weeks are checked. Never further: an
# unsettled purchase older than this (an unpaid `send_invoice`) is read from the
# database in pages by id and its invoice retrieved on its own (step 4), instead of
# listing the whole account back to it on every run.
DEFAULT_LOOKBACK = timedelta(days=30)
# An invoice is made after its purchase row; this covers clocks that disagree.
CLOCK_SLACK = timedelta(hours=1)
# A purchase younger than this may still be in the hands of the request creating it
# (a request gives up on Stripe after PURCHASE_DEADLINE_SECONDS, well below this): it is
# neither abandoned nor voided (adopting a paid invoice is always safe).
IN_FLIGHT = timedelta(minutes=5)
# Purchases per database batch (read in short transactions, then handled).
DB_BATCH = 500
# Listed invoices matched with the database together: one query each (a Stripe page).
MATCH_BATCH = 100

UNSETTLED = (PurchaseStatus.CREATING, PurchaseStatus.OPEN)
SOURCE = "reconcile"


@dataclass(frozen=True)
class PurchaseRow:
    """What matching needs of a purchase, read without locks (a repair re-reads it under
    its locks and decides for itself)."""

    id: str
    wallet_id: str
    status: str
    invoice_id: str | None
    created_at: datetime
    currency: str
    credit_amount: Decimal
    claimable_until: datetime | None  # the caller's Idempotency-Key may resume it till then
    # "<principal>:<key>:purchase:<n>" of the request that made it (None without a key)
    request_key: str | None
    automatic: bool  # an automatic top-up: no caller, the worker completes it
    # Credit notes counted for it so far (issued, post-payment), minor units.
    credited_cents: int


_credited = (
    select(func.coalesce(func.sum(PaymentReturn.amount_cents), 0))
    .where(
        PaymentReturn.purchase_id == Purchase.id,
        PaymentReturn.kind == ReturnKind.CREDIT_NOTE,
        PaymentReturn.status == "issued",
    )
    .correlate(Purchase)
    .scalar_subquery()
)
ROW_COLUMNS = (
    Purchase.id,
    Purchase.wallet_id,
    Purchase.status,
    Purchase.provider_invoice_id,
    Purchase.created_at,
    Purchase.currency,
    Purchase.credit_amount,
    Purchase.claimable_until,
    Purchase.request_key,
    Purchase.collection_method.is_not(None),
    _credited,
)


def purchase_row(values: Sequence[Any]) -> PurchaseRow:
    (purchase_id, wallet_id, status, invoice_id, created_at, currency, credits,
     claimable_until, request_key, automatic, credited) = values  # fmt: skip
    return PurchaseRow(
        id=purchase_id,
        wallet_id=wallet_id,
        status=status,
        invoice_id=invoice_id,
        created_at=created_at,
        currency=currency,
        credit_amount=credits,
        claimable_until=claimable_until,
        request_key=request_key,
        automatic=bool(automatic),
        credited_cents=int(credited or 0),
    )


class RecordedReturn(NamedTuple):
    """A refund, credit note or dispute as recorded here (`payment_returns`)."""

    status: str
    credit_note_id: str | None  # a refund's: the credit note that counts it


@dataclass
class Run:
    """One run's inputs, what its steps learnt, and its report."""

    db: Database
    provider: PaymentProvider
    since: datetime | None
    grace: timedelta
    clock: Callable[[], datetime]
    progress: ProgressSink
    report: ReconcileReport
    started_at: datetime
    # Principals of the API keys still configured (`api.auth.principal_of`): a purchase
    # made with a key since removed cannot be claimed by its caller any more. None: not
    # checked (the caller does not know the keys).
    api_principals: frozenset[str] | None = None
    # Unsettled purchases an invoice of the listing named: step 4 skips them.
    seen: set[str] = field(default_factory=set)
    # Purchases already in a finding: the attention report does not repeat them.
    reported: set[str] = field(default_factory=set)
    # Status and credit notes' amount of each listed invoice (step 2 compares refunds
    # with the latter).
    listed: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Refunds found for purchases waiting for one: step 6 says so.
    refunds_of_waiting: dict[str, str] = field(default_factory=dict)

    @property
    def cutoff(self) -> datetime:
        """Purchases created after this are left to their request (not voided nor
        abandoned, not looked for in step 4)."""
        return self.started_at - IN_FLIGHT

    def claimable(self, purchase: PurchaseRow) -> bool:
        """Whether someone is still to take `purchase` up: the caller of the request
        that opened it (a retry with the same Idempotency-Key, by the same API key, or
        the same console form, before the key expires), or, for an automatic top-up (no
        caller was told anything), the worker (`topups.complete_automatic_purchases`)."""
        if purchase.automatic:
            return True
        until = purchase.claimable_until
        if until is None or until <= self.started_at:
            return False
        if self.api_principals is None:
            return True
        principal = actors.api_principal_of_request(purchase.request_key or "")
        return principal is None or principal in self.api_principals

    def add(self, finding: Finding) -> None:
        self.report.findings.append(finding)
        if finding.purchase_id is not None:
            self.reported.add(finding.purchase_id)
        if finding.action != FindingAction.WOULD_REPAIR:
            log.info(
                "%s %s %s: %s",
                finding.kind,
                finding.action,
                finding.purchase_id or finding.wallet_id or finding.invoice_id,
                finding.detail,
            )

    def session(self) -> Session:
        return self.db.session()

    def check_database(self) -> None:
        """Fail now (SQLAlchemy's error) if the database or its purchases table cannot be
        read, before Stripe is asked anything."""
        with self.session() as session:
            session.execute(select(Purchase.id).limit(1)).first()

    def window_start(self) -> datetime:
        """`--since`, else `DEFAULT_LOOKBACK` back: bounded whatever is still open."""
        if self.since is not None:
            return self.since
        return self.started_at - DEFAULT_LOOKBACK

    def in_window(self, created_at: datetime) -> bool:
        return self.since is None or created_at >= self.since

    def batches(self, condition: ColumnElement[bool]) -> Iterator[list[PurchaseRow]]:
        """Purchases matching `condition`, by id, `DB_BATCH` per short read transaction:
        memory stays flat and no transaction stays open across the Stripe calls."""
        after = ""
        while True:
            with self.session() as session:
                batch = [
                    purchase_row(values)
                    for values in session.execute(
                        select(*ROW_COLUMNS)
                        .where(condition, Purchase.id > after)
                        .order_by(Purchase.id)
                        .limit(DB_BATCH)
                    )
                ]
            if not batch:
                return
            yield batch
            after = batch[-1].id

    def purchases_of_invoices(self, invoice_ids: Sequence[str]) -> Iterator[list[PurchaseRow]]:
        """The purchases these invoices pay, `MATCH_BATCH` invoices a query."""
        for start in range(0, len(invoice_ids), MATCH_BATCH):
            chunk = invoice_ids[start : start + MATCH_BATCH]
            yield self.rows_where(Purchase.provider_invoice_id.in_(chunk))

    def recorded_returns(
        self, purchase_ids: Sequence[str], kind: ReturnKind
    ) -> dict[str, RecordedReturn]:
        """The refunds, credit notes or disputes (`kind`) recorded for these purchases,
        by their provider id."""
        if not purchase_ids:
            return {}
        with self.session() as session:
            return {
                object_id: RecordedReturn(status, credit_note_id)
                for object_id, status, credit_note_id in session.execute(
                    select(
                        PaymentReturn.provider_object_id,
                        PaymentReturn.status,
                        PaymentReturn.credit_note_id,
                    ).where(
                        PaymentReturn.purchase_id.in_(purchase_ids),
                        PaymentReturn.kind == kind,
                    )
                )
            }

    def rows_where(self, condition: ColumnElement[bool]) -> list[PurchaseRow]:
        with self.session() as session:
            return [
                purchase_row(values)
                for values in session.execute(
                    select(*ROW_COLUMNS).where(condition).order_by(Purchase.id)
                )
            ]
