"""What a reconciliation run found and did: data with a version number (the CLI only
renders it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from gateway import money


class FindingKind(enum.StrEnum):
    """What was found (the `kind` of a finding in the JSON output)."""

    STUCK_PURCHASE = "stuck_purchase"  # `creating`: adopted, voided or abandoned
    INVOICE_PAID_NOT_SETTLED = "invoice_paid_not_settled"  # webhook lost: settled here
    INVOICE_FAILED_STILL_OPEN = "invoice_failed_still_open"  # void/uncollectible: failed here
    UNKNOWN_PAID_INVOICE = "unknown_paid_invoice"
    SETTLED_INVOICE_NOT_PAID = "settled_invoice_not_paid"
    # Money back the webhooks missed, applied here: credit notes, refunds of the payment.
    SETTLED_INVOICE_REFUNDED = "settled_invoice_refunded"
    SETTLED_PAYMENT_REFUNDED = "settled_payment_refunded"
    # A dispute opened or closed on a paid purchase's payment, applied here.
    SETTLED_PAYMENT_DISPUTED = "settled_payment_disputed"
    # Credits already spent when their money went back (`shortfall_credits`).
    REFUNDED_AFTER_CONSUMPTION = "refunded_after_consumption"
    INVOICE_MISSING = "invoice_missing"
    INVOICE_VOID_PENDING = "invoice_void_pending"
    REFUND_REQUIRED = "refund_required"
    REVIEW_REQUIRED = "review_required"
    LEDGER_MISMATCH = "ledger_mismatch"


class FindingAction(enum.StrEnum):
    """What the run did about it."""

    REPAIRED = "repaired"
    WOULD_REPAIR = "would_repair"  # --dry-run: what a real run would do
    REPORTED = "reported"  # for a person; nothing was changed
    FAILED = "failed"  # a repair was tried and did not happen; the next run tries again


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    action: FindingAction
    detail: str
    outcome: str | None = None  # e.g. settled, failed, adopted, abandoned, voided
    purchase_id: str | None = None
    wallet_id: str | None = None
    invoice_id: str | None = None
    invoice_status: str | None = None
    stored_balance: Decimal | None = None
    ledger_balance: Decimal | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "action": self.action.value,
            "outcome": self.outcome,
            "purchase_id": self.purchase_id,
            "wallet_id": self.wallet_id,
            "invoice_id": self.invoice_id,
            "invoice_status": self.invoice_status,
            "stored_balance": _decimal_text(self.stored_balance),
            "ledger_balance": _decimal_text(self.ledger_balance),
            "detail": self.detail,
        }


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else money.format_credits(value)


@dataclass
class ReconcileReport:
    """Everything one run found and did. `exit_code`: 0 consistent, 1 found, 2 aborted."""

    started_at: datetime
    window_start: datetime
    since_requested: bool
    dry_run: bool
    grace: timedelta
    finished_at: datetime | None = None
    invoices_scanned: int = 0
    refunds_scanned: int = 0
    disputes_scanned: int = 0
    purchases_checked: int = 0
    wallets_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def consistent(self) -> bool:
        return self.error is None and not self.findings

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 1 if self.findings else 0

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return "findings" if self.findings else "consistent"

    def count(self, action: FindingAction) -> int:
        return sum(finding.action == action for finding in self.findings)

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind.value] = counts.get(finding.kind.value, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """The `--format json` document (README, "Operations"). Stable: fields are only
        ever added; `format_version` changes if one is removed or changes meaning."""
        return {
            "format_version": 1,
            "status": self.status,
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "window": {
                "since": _iso(self.window_start),
                "requested": self.since_requested,
            },
            "grace_minutes": int(self.grace.total_seconds() // 60),
            "scanned": {
                "stripe_invoices": self.invoices_scanned,
                "stripe_refunds": self.refunds_scanned,
                "stripe_disputes": self.disputes_scanned,
                "purchases": self.purchases_checked,
                "wallets": self.wallets_checked,
            },
            "summary": {
                **{action.value: self.count(action) for action in FindingAction},
                "by_kind": self.by_kind(),
            },
            "findings": [finding.to_dict() for finding in self.findings],
            "error": self.error,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class ReconcileAborted(Exception):
    """The run could not go on (Stripe unreachable or refusing our key, database down);
    `report` holds what was done before, with `error` set."""

    def __init__(self, report: ReconcileReport) -> None:
        super().__init__(report.error)
        self.report = report


class ProgressSink(Protocol):
    """Where a run reports progress (the CLI draws a bar on a terminal)."""

    def stage(self, description: str, total: int | None = None) -> None: ...

    def advance(self, count: int = 1) -> None: ...


class Silent:
    def stage(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass
