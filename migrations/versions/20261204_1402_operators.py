"""operators: the people who sign in to the console

Revision ID: 1402
Revises: 1700
Create Date: 2026-12-04 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.db

revision = '1402'
down_revision = '1700'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('operators',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('disabled_at', gateway.db.UTCDateTime(), nullable=True),
    sa.Column('last_sign_in_at', gateway.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', gateway.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_operators')),
    sa.UniqueConstraint('name', name=op.f('uq_operators_name'))
    )


def downgrade() -> None:
    op.drop_table('operators')
