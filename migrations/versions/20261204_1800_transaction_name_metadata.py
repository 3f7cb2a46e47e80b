"""wallet_transactions.name and .metadata: Lago's transaction fields, stored and answered

Revision ID: 1800
Revises: 1301
Create Date: 2026-12-04 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "1800"
down_revision = "1301"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("wallet_transactions") as batch:
        batch.add_column(sa.Column("name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("wallet_transactions") as batch:
        batch.drop_column("metadata")
        batch.drop_column("name")
