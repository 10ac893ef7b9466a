"""The operator console's own reads (app/db/queries/console.sql, ADR 0030). Nothing here writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row
from pgsched.app.db.store.executor import one as _one
from pgsched.app.db.store.executor import row as _row
from pgsched.app.db.store.executor import rows as _rows


async def live_token(conn: Conn, token_id: int, *, now: datetime | None) -> Row | None:
    """The live token with this id (its hash included), and the database's clock as epoch."""
    return await _row(conn, "console_live_token", {"id": token_id, "now": now})


async def feed_head(conn: Conn) -> tuple[int, int]:
    """The (tx_id, id) position where the settled event feed ends now."""
    head = await _one(conn, "console_feed_head")
    return int(head["tx_id"]), int(head["id"])


async def last_runs(conn: Conn, schedule_ids: Sequence[int]) -> dict[int, Row]:
    """The newest run of each schedule, by schedule id (schedules without runs are absent)."""
    found = await _rows(conn, "console_last_runs", {"ids": list(schedule_ids)})
    return {r["schedule_id"]: r for r in found}


async def schedule_events(
    conn: Conn, schedule_id: int, types: Sequence[str], *, limit: int, before: int | None = None
) -> list[Row]:
    """A schedule's newest events of these types, older than event `before` if given."""
    return await _rows(
        conn,
        "console_schedule_events",
        {"id": schedule_id, "types": list(types), "limit": limit, "before": before or 2**63 - 1},
    )


async def lock_run(conn: Conn, run_id: int) -> Row | None:
    """The run's id and state, its row locked for the caller's transaction (None: no run)."""
    return await _row(conn, "console_lock_run", {"id": run_id})


async def worker_names(conn: Conn, worker_ids: Sequence[int]) -> dict[int, Row]:
    """Name and host of these workers, by id (unknown ids are absent)."""
    found = await _rows(conn, "console_worker_names", {"ids": list(set(worker_ids))})
    return {r["id"]: r for r in found}


async def queues(conn: Conn) -> list[Row]:
    """Queues with a concurrency limit."""
    return await _rows(conn, "console_queues")
