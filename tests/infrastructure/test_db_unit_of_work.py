"""`unit_of_work` and `in_batches`: how work outside a request runs its transactions."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from gateway.db import Database, build_engine, count_in_batches, in_batches, unit_of_work


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[Engine]:
    """A database of its own (file SQLite, pooled), whose commits are real."""
    engine = build_engine(f"sqlite:///{tmp_path / 'uow.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (n INTEGER NOT NULL)"))
    yield engine
    engine.dispose()


@pytest.fixture
def db(own_engine: Engine) -> Database:
    return Database(own_engine)


def _stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT n FROM items ORDER BY n")).scalars())


def _add(session: Session, n: int) -> None:
    session.execute(text("INSERT INTO items (n) VALUES (:n)"), {"n": n})


def _checked_out(engine: Engine) -> int:
    return engine.pool.checkedout()  # type: ignore[attr-defined,no-any-return]


def test_a_unit_of_work_commits_and_gives_its_connection_back(
    db: Database, own_engine: Engine
) -> None:
    with unit_of_work(db) as session:
        _add(session, 1)
        assert _checked_out(own_engine) == 1

    assert _stored(own_engine) == [1]
    assert _checked_out(own_engine) == 0  # the session was closed


def test_an_error_rolls_the_unit_of_work_back_and_still_closes_it(
    db: Database, own_engine: Engine
) -> None:
    with pytest.raises(RuntimeError, match="midway"), unit_of_work(db) as session:
        _add(session, 1)
        raise RuntimeError("midway")

    assert _stored(own_engine) == []
    assert _checked_out(own_engine) == 0


def test_a_session_given_is_committed_and_left_open_for_its_owner(
    db: Database, own_engine: Engine
) -> None:
    with db.session() as owned:
        with unit_of_work(owned) as session:
            assert session is owned
            _add(session, 1)
        assert _stored(own_engine) == [1]
        with pytest.raises(ValueError, match="refused"), unit_of_work(owned):
            _add(owned, 2)
            raise ValueError("refused")
        assert _stored(own_engine) == [1]
        # Still the owner's to use.
        assert owned.execute(text("SELECT count(*) FROM items")).scalar_one() == 1


def test_batches_repeat_until_one_handles_fewer_than_the_size(
    db: Database, own_engine: Engine
) -> None:
    pending = list(range(7))
    seen_committed: list[list[int]] = []

    def batch(session: Session) -> int:
        taken = [pending.pop(0) for _ in range(min(3, len(pending)))]
        for n in taken:
            _add(session, n)
        return len(taken)

    for _count in in_batches(db, batch, 3, handled=int):
        seen_committed.append(_stored(own_engine))  # each batch is committed when yielded

    assert seen_committed == [[0, 1, 2], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6]]
    assert _checked_out(own_engine) == 0


def test_an_exact_multiple_takes_one_more_empty_batch_to_end(db: Database) -> None:
    pending = list(range(6))

    def batch(session: Session) -> int:
        taken = [pending.pop(0) for _ in range(min(3, len(pending)))]
        return len(taken)

    assert list(in_batches(db, batch, 3, handled=int)) == [3, 3, 0]
    assert count_in_batches(db, batch, 3) == 0  # nothing left


def test_a_failing_batch_keeps_the_batches_before_it(db: Database, own_engine: Engine) -> None:
    calls = 0

    def batch(session: Session) -> int:
        nonlocal calls
        calls += 1
        _add(session, calls)
        if calls == 3:
            raise RuntimeError("third batch fails")
        return 1

    with pytest.raises(RuntimeError, match="third"):
        count_in_batches(db, batch, 1)

    assert _stored(own_engine) == [1, 2]
    assert _checked_out(own_engine) == 0


def test_a_caller_that_stops_early_runs_no_further_batch(db: Database) -> None:
    calls = 0

    def batch(session: Session) -> int:
        nonlocal calls
        calls += 1
        return 10

    assert sum(islice(in_batches(db, batch, 10, handled=int), 2)) == 20
    assert calls == 2
