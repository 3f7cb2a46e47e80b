"""Every column type can be part of SQLAlchemy's compiled-statement cache key: a type
that cannot makes every statement naming its columns compile again on each execution."""

from __future__ import annotations

import warnings

import pytest
from sqlalchemy import Table, select

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
