"""Schedules: their rows, the events of their changes, and the trigger idempotency keys.

Each function runs one named statement (app/db/queries/schedules.sql) that writes the projection
row and appends its event together, so a state change and its event commit or roll back as one.
Callers own the transaction. Nothing here decides policy (defaults, validation, next due times):
that is app.domain.schedule's, applied by app.services.schedules.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row, execute, jsonb, one, row, rows
from pgsched.app.db.store.executor import trace_id as _trace_id


async def create_schedule(
    conn: Conn,
    fields: Mapping[str, object],
    *,
    actor: str,
    now: datetime | None,
    meta: Mapping[str, object] | None = None,
    trace_id: str | None = None,
) -> Row:
    """Insert a schedule (every column given in `fields`) and append schedule.created."""
    return await one(
        conn,
        "create_schedule",
        {
            "fields": jsonb(fields),
            "actor": actor,
            "now": now,
            "meta": jsonb(meta or {}),
            "trace_id": _trace_id(trace_id),
        },
    )


async def update_schedule(
    conn: Conn,
    schedule_id: int,
    changes: Mapping[str, object],
    *,
    event_type: str,
    actor: str,
    now: datetime | None,
    expected_version: int | None = None,
    meta: Mapping[str, object] | None = None,
    trace_id: str | None = None,
) -> Row | None:
    """Apply `changes` and append `event_type` with them (old values in meta.old).

    Returns None when the schedule does not exist, is deleted, or its version is not
    `expected_version` (optimistic concurrency): the caller tells which by reading it.
    """
    return await row(
        conn,
        "update_schedule",
        {
            "id": schedule_id,
            "changes": jsonb(changes),
            "type": event_type,
            "actor": actor,
            "now": now,
            "expected_version": expected_version,
            "meta": jsonb(meta or {}),
            "trace_id": _trace_id(trace_id),
        },
    )


async def live_schedule_id(conn: Conn, name: str) -> int | None:
    """The id of the live schedule called `name`, if any."""
    found = await row(conn, "live_schedule_id", {"name": name})
    return None if found is None else int(found["id"])


async def managed_schedules(conn: Conn, manager: str) -> list[Row]:
    """The live schedules `manager` (a `pgsched apply` file's) declares, by name."""
    return await rows(conn, "managed_schedules", {"manager": manager})


async def get_schedule(conn: Conn, schedule_id: int, *, lock: bool = False) -> Row | None:
    return await row(conn, "lock_schedule" if lock else "get_schedule", {"id": schedule_id})


async def record_schedule_event(
    conn: Conn,
    schedule_id: int,
    event_type: str,
    *,
    actor: str,
    now: datetime | None,
    meta: Mapping[str, object],
    trace_id: str | None = None,
) -> None:
    """Append an event about a schedule that changes none of its columns (operator evidence)."""
    await rows(
        conn,
        "record_schedule_event",
        {
            "id": schedule_id,
            "type": event_type,
            "actor": actor,
            "now": now,
            "meta": jsonb(meta),
            "trace_id": _trace_id(trace_id),
        },
    )


async def claim_trigger_key(
    conn: Conn, schedule_id: int, key: str, *, now: datetime | None
) -> bool:
    """Take an Idempotency-Key; False when an earlier request already holds it."""
    taken = await rows(
        conn, "claim_trigger_key", {"schedule_id": schedule_id, "key": key, "now": now}
    )
    return bool(taken)


async def set_trigger_key_run(conn: Conn, schedule_id: int, key: str, run: Row) -> None:
    await execute(
        conn,
        "set_trigger_key_run",
        {"schedule_id": schedule_id, "key": key, "run_id": run["id"], "run_due_at": run["due_at"]},
    )


async def trigger_key_run(conn: Conn, schedule_id: int, key: str) -> Row | None:
    return await row(conn, "trigger_key_run", {"schedule_id": schedule_id, "key": key})
