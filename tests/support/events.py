"""Reading the outgoing events a test caused, as stored in the outbox."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Event


def wallet_events(session: Session, wallet_id: str) -> list[dict[str, Any]]:
    """The wallet's events as stored (the delivered JSON), in the order written."""
    session.expire_all()
    bodies = session.execute(
        select(Event.body).where(Event.wallet_id == wallet_id).order_by(Event.position)
    ).scalars()
    return [json.loads(body) for body in bodies]


def types_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["type"] for row in rows]
