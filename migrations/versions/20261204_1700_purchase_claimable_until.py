"""purchases.claimable_until: until when the caller's Idempotency-Key can resume it

Revision ID: 1700
Revises: 1630
Create Date: 2026-12-04 16:20:00
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

import gateway.db

revision = "1700"
down_revision = "1630"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.add_column(
            sa.Column("claimable_until", gateway.db.UTCDateTime(timezone=True), nullable=True)
        )
    # A purchase still `creating` made under an Idempotency-Key stays claimable by a
    # retry with that key for the keys' default lifetime (IDEMPOTENCY_KEY_TTL_HOURS, 24)
    # from its creation; one made without a key has no caller left to resume it.
    purchases = sa.table(
        "purchases",
        sa.column("id", sa.String()),
        sa.column("status", sa.String()),
        sa.column("request_key", sa.String()),
        sa.column("created_at", gateway.db.UTCDateTime(timezone=True)),
        sa.column("claimable_until", gateway.db.UTCDateTime(timezone=True)),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(purchases.c.id, purchases.c.created_at).where(
            purchases.c.status == "creating", purchases.c.request_key.is_not(None)
        )
    ).all()
    for purchase_id, created_at in rows:
        bind.execute(
            purchases.update()
            .where(purchases.c.id == purchase_id)
            .values(claimable_until=created_at + timedelta(hours=24))
        )


def downgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("claimable_until")
