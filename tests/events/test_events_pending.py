"""An event about an entry carries its own wallet's pending credits, not every wallet's."""

from __future__ import annotations

import json
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import events
from gateway.db import utcnow
from gateway.events import EventType, NewEvent
from gateway.models import Event
from tests.support.webhooks import make_purchase


def test_an_entrys_event_counts_only_its_own_wallets_pending_credits(
    db_session: Session,
) -> None:
    mine = make_purchase(db_session, credits=Decimal("7.5"))
    make_purchase(db_session, credits=Decimal("2.25"))  # another wallet's
    [event_id] = events.emit(
        db_session,
        [NewEvent(EventType.WALLET_TRANSACTION_CREATED, mine.wallet_id, mine.transaction_id)],
        utcnow(),
    )
    body = db_session.execute(select(Event.body).where(Event.id == event_id)).scalar_one()
    assert json.loads(body)["data"]["wallet"]["pending_credits"] == "7.50000"
