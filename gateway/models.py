"""The tables. Balances change only through `gateway.ledger`."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.db import Base, ExactNumeric, UTCDateTime, WideExactNumeric, new_id, utcnow
from gateway.intervals import Interval

# Credits and rates: 5 decimal places. Transaction amounts: their exact product.
# ExactNumeric keeps them exact on SQLite too (see gateway.db).
Credits = ExactNumeric(30, 5)
Rate = ExactNumeric(30, 5)
ExactAmount = WideExactNumeric(40, 10)


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    TERMINATED = "terminated"


class WalletStatus(enum.StrEnum):
    ACTIVE = "active"
    TERMINATED = "terminated"


class TransactionType(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class TransactionStatus(enum.StrEnum):
    """What the movement is (`transaction_status` in the API)."""

    PURCHASED = "purchased"
    GRANTED = "granted"
    VOIDED = "voided"
    INVOICED = "invoiced"
    REFUNDED = "refunded"  # outbound: credits following a refund or credit note out
    DISPUTED = "disputed"  # outbound: credits held while the payment is disputed
    REINSTATED = "reinstated"  # inbound: credits back (a dispute won, a refund undone)


class EntryStatus(enum.StrEnum):
    """Where the movement is (`status` in the API)."""

    PENDING = "pending"
    SETTLED = "settled"
    FAILED = "failed"


class PurchaseStatus(enum.StrEnum):
    """Life of a paid-credits purchase.

    creating: row committed, invoice not (yet) stored; open: invoice finalized at the
    provider; settled: paid and credited; failed: voided, uncollectible, rejected or
    abandoned; refund_required: paid, but the wallet was terminated, so not credited;
    review_required: paid in a way we cannot accept (currency, amount, discount);
    refunded: everything paid went back (refunds, credit notes), its credits with it.
    """

    CREATING = "creating"
    OPEN = "open"
    SETTLED = "settled"
    FAILED = "failed"
    REFUND_REQUIRED = "refund_required"
    REVIEW_REQUIRED = "review_required"
    REFUNDED = "refunded"


class ReturnKind(enum.StrEnum):
    """What gave a payment's money back (`payment_returns.kind`)."""

    REFUND = "refund"
    CREDIT_NOTE = "credit_note"
    DISPUTE = "dispute"


class DisputeStatus(enum.StrEnum):
    """`dispute_status` of a purchase."""

    OPEN = "open"
    WON = "won"
    LOST = "lost"


class EntrySource(enum.StrEnum):
    """What made a ledger entry (`source` in the API): a caller, or an automatic rule."""

    MANUAL = "manual"
    THRESHOLD = "threshold"
    INTERVAL = "interval"


class RuleTrigger(enum.StrEnum):
    THRESHOLD = "threshold"
    INTERVAL = "interval"


class RuleMethod(enum.StrEnum):
    FIXED = "fixed"  # buys paid_credits, grants granted_credits
    TARGET = "target"  # buys what brings balance + pending credits up to target_credits


class RuleStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class WebhookEventStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


def _enum_values(enum_cls: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum_cls)


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cus"))
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    name: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    subscriptions: Mapped[list[Subscription]] = relationship(back_populates="customer")


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(f"status IN ({_enum_values(SubscriptionStatus)})", name="status"),
        Index("ix_subscriptions_customer_status", "customer_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("sub"))
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    plan_code: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=SubscriptionStatus.ACTIVE)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="subscriptions")


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (
        CheckConstraint(f"status IN ({_enum_values(WalletStatus)})", name="status"),
        CheckConstraint("credits_balance >= 0", name="balance_not_negative"),
        CheckConstraint("rate_amount > 0", name="rate_positive"),
        CheckConstraint("consumed_credits >= 0", name="consumed_not_negative"),
        # One active wallet per customer, enforced where racing requests meet.
        Index(
            "uq_wallets_one_active_per_customer",
            "customer_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        # The expiry sweep's order (expiration_at, id): a batch reads its rows off the
        # index instead of sorting every due wallet (many share one expiration time).
        Index(
            "ix_wallets_active_expiration",
            "expiration_at",
            "id",
            postgresql_where=text("status = 'active' AND expiration_at IS NOT NULL"),
            sqlite_where=text("status = 'active' AND expiration_at IS NOT NULL"),
        ),
        Index("ix_wallets_customer_created", "customer_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wal"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(String(16), default=WalletStatus.ACTIVE)
    name: Mapped[str | None] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    rate_amount: Mapped[Decimal] = mapped_column(Rate)
    credits_balance: Mapped[Decimal] = mapped_column(Credits, default=Decimal("0"))
    consumed_credits: Mapped[Decimal] = mapped_column(Credits, default=Decimal("0"))
    consumed_amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    expiration_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Crossing it (downwards, then back up) is what `wallet.balance_low` /
    # `wallet.balance_recovered` report; null: no such events.
    low_balance_threshold_credits: Mapped[Decimal | None] = mapped_column(Credits)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The `sequence` of the wallet's latest outgoing event (gateway.events, under the lock).
    event_sequence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    customer: Mapped[Customer] = relationship()
    recurring_transaction_rules: Mapped[list[RecurringTransactionRule]] = relationship(
        order_by="RecurringTransactionRule.trigger", viewonly=True
    )

    def is_expired(self, now: datetime) -> bool:
        return self.expiration_at is not None and self.expiration_at <= now

    def is_usable(self, now: datetime) -> bool:
        """Active and not past its expiration, whether or not the sweep has run."""
        return wallet_usable(self.status, self.expiration_at, now)


def wallet_usable(status: str, expiration_at: datetime | None, now: datetime) -> bool:
    """A wallet takes credits only while active and not past its expiration, whether
    or not the expiry sweep has reached it (for rows read without the ORM too)."""
    return status == WalletStatus.ACTIVE and (expiration_at is None or expiration_at > now)


class WalletTransaction(Base):
    """One ledger entry: a movement of credits into or out of a wallet."""

    __tablename__ = "wallet_transactions"
    __table_args__ = (
        CheckConstraint(f"transaction_type IN ({_enum_values(TransactionType)})", name="type"),
        CheckConstraint(f"transaction_status IN ({_enum_values(TransactionStatus)})", name="kind"),
        CheckConstraint(f"status IN ({_enum_values(EntryStatus)})", name="status"),
        CheckConstraint("credit_amount >= 0", name="credit_amount_not_negative"),
        CheckConstraint(f"source IN ({_enum_values(EntrySource)})", name="source"),
        Index("ix_wallet_transactions_wallet_created", "wallet_id", "created_at", "id"),
        # A wallet's pending credits (and whether a rule has an unpaid top-up) are read
        # under its lock on every credit application that reaches a threshold.
        Index(
            "ix_wallet_transactions_pending",
            "wallet_id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # One top-up per period of an interval rule: the constraint decides between
        # workers, whatever they read (one purchased and one granted entry at most).
        Index(
            "uq_wallet_transactions_rule_period",
            "rule_id",
            "rule_period_at",
            "transaction_status",
            unique=True,
            postgresql_where=text("rule_period_at IS NOT NULL"),
            sqlite_where=text("rule_period_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wtx"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"))
    transaction_type: Mapped[str] = mapped_column(String(16))
    transaction_status: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    credit_amount: Mapped[Decimal] = mapped_column(Credits)
    amount: Mapped[Decimal] = mapped_column(ExactAmount)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who made it (`gateway.actors`): operator:NAME, api:LABEL or system.
    created_by: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(
        String(16), default=EntrySource.MANUAL, server_default=EntrySource.MANUAL.value
    )
    # The rule that made it (no foreign key: a rule removed by a PUT keeps its history)
    # and, for an interval rule, the period it bought.
    rule_id: Mapped[str | None] = mapped_column(String(40))
    rule_period_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The caller's name and metadata for it (Lago's `name` and `metadata`: a list of
    # {"key", "value"} pairs). `metadata` is the column; the attribute name is taken
    # by SQLAlchemy.
    name: Mapped[str | None] = mapped_column(String(255))
    entry_metadata: Mapped[list[dict[str, str]] | None] = mapped_column("metadata", JSON)

    wallet: Mapped[Wallet] = relationship()
    purchase: Mapped[Purchase | None] = relationship(back_populates="transaction", uselist=False)


class Purchase(Base):
    """Paid credits on their way through a provider invoice."""

    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint(f"status IN ({_enum_values(PurchaseStatus)})", name="status"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        Index("ix_purchases_status_created", "status", "created_at"),
        Index("ix_purchases_wallet", "wallet_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pur"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    transaction_id: Mapped[str] = mapped_column(ForeignKey("wallet_transactions.id"), unique=True)
    status: Mapped[str] = mapped_column(String(24), default=PurchaseStatus.CREATING)
    currency: Mapped[str] = mapped_column(String(3))
    credit_amount: Mapped[Decimal] = mapped_column(Credits)
    amount_cents: Mapped[int] = mapped_column(BigInteger)  # expected subtotal, minor units
    provider: Mapped[str] = mapped_column(String(16), default="stripe")
    provider_invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    invoice_status: Mapped[str | None] = mapped_column(String(32))
    subtotal_cents: Mapped[int | None] = mapped_column(BigInteger)
    tax_cents: Mapped[int | None] = mapped_column(BigInteger)
    total_cents: Mapped[int | None] = mapped_column(BigInteger)
    amount_paid_cents: Mapped[int | None] = mapped_column(BigInteger)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    attention_reason: Mapped[str | None] = mapped_column(Text)  # why review/refund is needed
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)
    last_payment_error: Mapped[str | None] = mapped_column(Text)
    provider_void_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # The invoice's collection method when it is not the configured one: automatic
    # top-ups are always `charge_automatically` (nobody is there to pay an emailed one).
    collection_method: Mapped[str | None] = mapped_column(String(32))
    # The payment (Stripe payment intent) that paid the invoice: refunds and disputes
    # name it. Stored at settlement when the invoice says, else on the first lookup.
    payment_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # Money given back (refunds and post-payment credit notes, each counted once) and
    # the credits that followed it out: `reclaimed_credits` is what should be out of the
    # wallet, `shortfall_credits` the part of it that was already spent.
    returned_cents: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    dispute_status: Mapped[str | None] = mapped_column(String(8))
    reclaimed_credits: Mapped[Decimal] = mapped_column(
        Credits, default=Decimal("0"), server_default="0"
    )
    shortfall_credits: Mapped[Decimal] = mapped_column(
        Credits, default=Decimal("0"), server_default="0"
    )
    # The API request that created it (API-key hash, Idempotency-Key, position), so a
    # retry of that request resumes this purchase instead of starting another.
    request_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    # Until when that request's caller can take it up again with its Idempotency-Key
    # (the key's expiry); None without a key. Only such a retry resumes a purchase left
    # `creating`: reconciliation never bills one its caller can no longer claim.
    claimable_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    transaction: Mapped[WalletTransaction] = relationship(back_populates="purchase")
    wallet: Mapped[Wallet] = relationship()
    customer: Mapped[Customer] = relationship()


_DUE_INTERVAL_RULES = "status = 'active' AND \"trigger\" = 'interval'"


class RecurringTransactionRule(Base):
    """A wallet's automatic top-up: when its balance runs low, or on a schedule."""

    __tablename__ = "recurring_transaction_rules"
    __table_args__ = (
        # "trigger" and "interval" are SQL keywords: quoted wherever SQL is written by hand.
        CheckConstraint(f'"trigger" IN ({_enum_values(RuleTrigger)})', name="trigger"),
        CheckConstraint(f"method IN ({_enum_values(RuleMethod)})", name="method"),
        CheckConstraint(
            f""""interval" IS NULL OR "interval" IN ({_enum_values(Interval)})""", name="interval"
        ),
        CheckConstraint(f"status IN ({_enum_values(RuleStatus)})", name="status"),
        CheckConstraint(
            """"trigger" <> 'threshold' OR threshold_credits IS NOT NULL""", name="threshold_set"
        ),
        CheckConstraint(
            """"trigger" <> 'interval' OR ("interval" IS NOT NULL """
            "AND started_at IS NOT NULL AND next_run_at IS NOT NULL)",
            name="interval_set",
        ),
        CheckConstraint("method <> 'target' OR target_credits IS NOT NULL", name="target_set"),
        # At most one rule per trigger on a wallet.
        UniqueConstraint("wallet_id", "trigger", name="uq_recurring_transaction_rules_trigger"),
        # The worker's scan for interval rules that are due.
        Index(
            "ix_recurring_transaction_rules_due",
            "next_run_at",
            postgresql_where=text(_DUE_INTERVAL_RULES),
            sqlite_where=text(_DUE_INTERVAL_RULES),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rtr"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"))
    trigger: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=RuleStatus.ACTIVE)
    paused_reason: Mapped[str | None] = mapped_column(Text)
    threshold_credits: Mapped[Decimal | None] = mapped_column(Credits)
    interval: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Interval rules: the next date not yet bought (the worker's due scan).
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_credits: Mapped[Decimal | None] = mapped_column(Credits)
    granted_credits: Mapped[Decimal | None] = mapped_column(Credits)
    target_credits: Mapped[Decimal | None] = mapped_column(Credits)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PaymentReturn(Base):
    """One provider object that gives a purchase's money back, recorded once by its id:
    a refund, a credit note or a dispute. The purchase's returned amount is computed
    from these rows, so each object counts once whatever the order or repeats."""

    __tablename__ = "payment_returns"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_enum_values(ReturnKind)})", name="kind"),
        CheckConstraint("amount_cents >= 0", name="amount_not_negative"),
        Index("ix_payment_returns_purchase", "purchase_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ret"))
    provider_object_id: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    purchase_id: Mapped[str] = mapped_column(ForeignKey("purchases.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    # A refund's status (succeeded, pending…; `unseen` for one a credit note named
    # before its own event arrived), a credit note's (issued, void), a dispute's outcome.
    status: Mapped[str] = mapped_column(String(32))
    # For a refund made through a credit note: the note, which counts it instead.
    credit_note_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CreditApplication(Base):
    """The answer given for one invoice of the billing core: at most one per invoice."""

    __tablename__ = "credit_applications"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cap"))
    invoice_external_id: Mapped[str] = mapped_column(String(255), unique=True)
    external_customer_id: Mapped[str] = mapped_column(String(255))
    wallet_id: Mapped[str | None] = mapped_column(ForeignKey("wallets.id"))
    transaction_id: Mapped[str | None] = mapped_column(ForeignKey("wallet_transactions.id"))
    invoice_type: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    credit_amount: Mapped[Decimal] = mapped_column(Credits, default=Decimal("0"))
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    subtotal_amount_cents: Mapped[int] = mapped_column(BigInteger)
    subtotal_after_credits_amount_cents: Mapped[int] = mapped_column(BigInteger)
    tax_rate: Mapped[Decimal | None] = mapped_column(ExactNumeric(9, 5))
    taxes_amount_cents: Mapped[int] = mapped_column(BigInteger)
    total_amount_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """A POST remembered by its Idempotency-Key, scoped to the API key that sent it."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("principal", "key", name="uq_idempotency_keys_principal_key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    principal: Mapped[str] = mapped_column(String(64))  # hash of the bearer key
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """Every verified provider event, once, kept whatever its processing did."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint(f"status IN ({_enum_values(WebhookEventStatus)})", name="status"),
        Index("ix_webhook_events_status_received", "status", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the provider's event id
    provider: Mapped[str] = mapped_column(String(16), default="stripe")
    type: Mapped[str] = mapped_column(String(128))
    livemode: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), default=WebhookEventStatus.RECEIVED)
    error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    purchase_id: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Operator(Base):
    """A person who signs in to the console (`gateway operators create NAME`)."""

    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("opr"))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # werkzeug's format
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def is_active(self) -> bool:
        return self.disabled_at is None


# --- outgoing events (gateway.events, gateway.delivery) -------------------------------


class WebhookEndpointStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Event(Base):
    """One outgoing event, written in the transaction of the change it reports.

    `body` is the event JSON exactly as delivered and listed. The feed orders events by
    (`txid`, `position`): on PostgreSQL `txid` is the writing transaction's id, and the
    feed only shows transactions older than every one still running, so a consumer
    reading `after=` its last id never skips an event committed late.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_feed", "txid", "position"),
        Index("ix_events_created_at", "created_at"),
        Index(
            "ix_events_undispatched",
            "position",
            postgresql_where=text("NOT dispatched"),
            sqlite_where=text("NOT dispatched"),
        ),
    )

    position: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    wallet_id: Mapped[str | None] = mapped_column(String(40))
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    txid: Mapped[int] = mapped_column(BigInteger, default=0)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    """A receiver of outgoing events (the billing core), with its signing secret."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint(f"status IN ({_enum_values(WebhookEndpointStatus)})", name="status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("we"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(255))
    event_types: Mapped[list[str] | None] = mapped_column(JSON)  # None: every type
    secret: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=WebhookEndpointStatus.ENABLED)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EventDelivery(Base):
    """One event on its way to one endpoint: the endpoint's queue is its pending rows."""

    __tablename__ = "event_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({_enum_values(DeliveryStatus)})", name="status"),
        UniqueConstraint("event_id", "endpoint_id", name="uq_event_deliveries_event_endpoint"),
        Index(
            "ix_event_deliveries_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_event_deliveries_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dlv"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryAttempt(Base):
    """One POST of an event to an endpoint and what came of it."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_delivery", "delivery_id", "attempted_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(ForeignKey("event_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
