"""Events about pgsched itself (stream 'system'): maintenance, archive failures and the like.

Events about a schedule or a run are appended by the statement that changes it (the store's
schedules and runs modules); these are the ones no projection row goes with.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pgsched.app.db.store.executor import Conn, jsonb, one


async def record_system_event(
    conn: Conn,
    event_type: str,
    meta: Mapping[str, object],
    *,
    actor: str,
    now: datetime | None,
) -> int:
    """Append an event about pgsched itself (stream 'system'); returns its id."""
    event = await one(
        conn,
        "record_system_event",
        {"type": event_type, "meta": jsonb(meta), "actor": actor, "now": now},
    )
    event_id: int = event["id"]
    return event_id
