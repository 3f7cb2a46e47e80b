"""Every column type can be part of SQLAlchemy's compiled-statement cache key: a type
that cannot makes every statement naming its columns compile again on each execution."""

from __future__ import annotations

import warnings

import pytest
from sqlalchemy import Engine, Table, select

from gateway import models


@pytest.mark.parametrize("table", models.Base.metadata.sorted_tables, ids=lambda table: table.name)
def test_a_select_of_every_column_is_cacheable(table: Table) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SQLAlchemy warns when a type has no cache key
        # Labelled, as the events' reads select them: a label's key includes its type.
        key = select(
            *(column.label(f"x_{column.name}") for column in table.c)
        )._generate_cache_key()
    assert key is not None


def test_psycopg_keeps_the_settlement_statements_conversion(postgres_engine: Engine) -> None:
    """The one-statement settlement is longer than psycopg caches by default: an engine
    for PostgreSQL raises that limit, so its placeholders are not parsed per execution."""
    from psycopg import _queries
    from sqlalchemy.dialects import postgresql

    from gateway import transitions

    # What a paid invoice writes to its purchase (settlement.invoice_columns).
    keys = ("amount_paid_cents", "hosted_invoice_url", "invoice_status", "payment_id",
            "subtotal_cents", "tax_cents", "total_cents")  # fmt: skip
    settle = transitions._settle_statement(keys)
    text = str(settle.compile(dialect=postgresql.psycopg.dialect()))  # type: ignore[attr-defined]
    assert len(text) > 4096  # the default limit: this is what needs the setting
    assert len(text) <= _queries.MAX_CACHED_STATEMENT_LENGTH
