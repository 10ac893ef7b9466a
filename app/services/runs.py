"""Runs: an operator's retry and cancel, and a queue's concurrency limit.

One transaction each, through the store (the run's row and its event together, ADR 0004).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row
from pgsched.app.domain.errors import NotFound

Meta = Mapping[str, object]


async def retry(
    conn: Conn, run_id: int, *, actor: str, now: datetime | None, meta: Meta
) -> Row | None:
    """A dead or cancelled run back to waiting, workers woken; None when the run is in neither
    state (the caller reads it to say which). Only an operator does this (ADR 0004)."""
    async with conn.transaction():
        row = await store.retry_run(conn, run_id, actor=actor, now=now, meta=meta)
        if row is not None:
            await store.wake_workers(conn)
    return row


async def cancel(
    conn: Conn, run_id: int, *, actor: str, now: datetime | None, meta: Meta
) -> tuple[Row, Row | None]:
    """Cancel a waiting run, or ask a running one to stop: (the run before, the change), the
    change None when the run is neither waiting nor running. NotFound if there is no such run.
    The state it was in goes into the event's meta (`old`)."""
    async with conn.transaction():
        before = await store.reads.run_detail(conn, run_id)
        if before is None:
            raise NotFound(f"run {run_id} does not exist")
        row = await store.cancel_run(
            conn, run_id, actor=actor, now=now, meta={**meta, "old": {"state": before["state"]}}
        )
    return before, row


async def set_queue_limit(
    conn: Conn, name: str, max_running: int | None, *, actor: str, now: datetime | None
) -> Row:
    """Limit how many runs of a queue run at once across all workers (None: unlimited)."""
    async with conn.transaction():
        return await store.set_queue_limit(conn, name, max_running, actor=actor, now=now)
