"""ledger entries record who made them (created_by)

Revision ID: 1401
Revises: 0001
Create Date: 2026-12-04 16:20:00

Entries written before this revision are marked `unknown`: who made them was not
recorded. Every entry written after it names its author (gateway.actors).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '1401'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('wallet_transactions') as batch_op:
        batch_op.add_column(
            sa.Column('created_by', sa.String(length=100), nullable=False, server_default='unknown')
        )
    with op.batch_alter_table('wallet_transactions') as batch_op:
        batch_op.alter_column('created_by', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('wallet_transactions') as batch_op:
        batch_op.drop_column('created_by')
