"""payment returns: refunds, credit notes and disputes take purchased credits back

Revision ID: 1630
Revises: 1620
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.db

revision = "1630"
down_revision = "1620"
branch_labels = None
depends_on = None

_KINDS_BEFORE = "'purchased', 'granted', 'voided', 'invoiced'"
_KINDS_AFTER = f"{_KINDS_BEFORE}, 'refunded', 'disputed', 'reinstated'"
_STATUSES_BEFORE = "'creating', 'open', 'settled', 'failed', 'refund_required', 'review_required'"
_STATUSES_AFTER = f"{_STATUSES_BEFORE}, 'refunded'"


def _checks(kinds: str, statuses: str) -> None:
    with op.batch_alter_table("wallet_transactions") as batch:
        batch.drop_constraint(op.f("ck_wallet_transactions_kind"), type_="check")
        batch.create_check_constraint("kind", f"transaction_status IN ({kinds})")
    with op.batch_alter_table("purchases") as batch:
        batch.drop_constraint(op.f("ck_purchases_status"), type_="check")
        batch.create_check_constraint("status", f"status IN ({statuses})")


def upgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.add_column(sa.Column("payment_id", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("returned_cents", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("dispute_status", sa.String(length=8), nullable=True))
        batch.add_column(
            sa.Column(
                "reclaimed_credits",
                gateway.db.ExactNumeric(precision=30, scale=5),
                server_default="0",
                nullable=False,
            )
        )
        batch.add_column(
            sa.Column(
                "shortfall_credits",
                gateway.db.ExactNumeric(precision=30, scale=5),
                server_default="0",
                nullable=False,
            )
        )
        batch.create_index(batch.f("ix_purchases_payment_id"), ["payment_id"], unique=False)
    _checks(_KINDS_AFTER, _STATUSES_AFTER)
    op.create_table(
        "payment_returns",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("provider_object_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("purchase_id", sa.String(length=40), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("credit_note_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", gateway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gateway.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('refund', 'credit_note', 'dispute')", name=op.f("ck_payment_returns_kind")
        ),
        sa.CheckConstraint(
            "amount_cents >= 0", name=op.f("ck_payment_returns_amount_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["purchase_id"],
            ["purchases.id"],
            name=op.f("fk_payment_returns_purchase_id_purchases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_returns")),
        sa.UniqueConstraint(
            "provider_object_id", name=op.f("uq_payment_returns_provider_object_id")
        ),
    )
    op.create_index(
        "ix_payment_returns_purchase", "payment_returns", ["purchase_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_payment_returns_purchase", table_name="payment_returns")
    op.drop_table("payment_returns")
    _checks(_KINDS_BEFORE, _STATUSES_BEFORE)
    with op.batch_alter_table("purchases") as batch:
        batch.drop_index(batch.f("ix_purchases_payment_id"))
        batch.drop_column("shortfall_credits")
        batch.drop_column("reclaimed_credits")
        batch.drop_column("dispute_status")
        batch.drop_column("returned_cents")
        batch.drop_column("payment_id")
