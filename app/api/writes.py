"""The API's state changes, each in one transaction, each appending its event with the caller's
audit context (actor = token name; meta = source IP, user agent, token prefix; old values).

Schedule creation and partial updates (with the `If-Match` version check, and the timing
recomputed from the database's now) go through `app.db.store`. Pause, resume, delete, trigger
and backfill are not here: the routes call `app.schedules`, which takes `meta` itself.
`wake_workers` sends the NOTIFY that tells idle workers runs are waiting.
`retry_run` is the one transition only the API makes (ADR 0004: dead --> waiting by an
operator): a named statement in `app/db/queries/api_writes.sql`, in the store's pattern.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pgsched.app import schedules
from pgsched.app.api import definition
from pgsched.app.api.problems import ApiError
from pgsched.app.api.schemas import ScheduleCreate, ScheduleUpdate
from pgsched.app.db import store
from pgsched.app.db.sql import query
from pgsched.app.db.store import Conn, Row, jsonb

Meta = Mapping[str, object]


async def wake_workers(conn: Conn) -> None:
    """NOTIFY idle workers that runs are waiting (a hint only; they poll anyway)."""
    await conn.execute(query("notify_runs"))


async def create_schedule(
    conn: Conn, data: ScheduleCreate, *, actor: str, now: datetime | None, meta: Meta
) -> Row:
    fields = definition.create_fields(data)
    async with conn.transaction():
        # One transaction, so created_at (the interval anchor) is the instant we planned with.
        at = await store.db_now(conn, now)
        spec = definition.check(fields, created_at=at)
        fields["next_due_at"] = definition.next_due(fields, spec, now=at)
        return await store.create_schedule(conn, fields, actor=actor, now=now, meta=meta)


async def _live(conn: Conn, schedule_id: int) -> Row:
    row = await store.get_schedule(conn, schedule_id, lock=True)
    if row is None:
        raise schedules.NotFound(f"schedule {schedule_id} does not exist")
    return row


def _stale(version: int) -> ApiError:
    return ApiError(
        412,
        f"the schedule changed since that version; it is now at version {version}",
        kind="precondition-failed",
        field="If-Match",
        source="header",
    )


async def update_schedule(
    conn: Conn,
    schedule_id: int,
    patch: ScheduleUpdate,
    *,
    if_match: set[int] | None,
    actor: str,
    now: datetime | None,
    meta: Meta,
) -> Row:
    """Apply a partial update; `if_match` (versions, None = unconditional) guards it.

    A change of timing recomputes `next_due_at` from the database's now: occurrences under the
    old timing are not owed. Changing `enabled` pauses or resumes, as those operations do.
    """
    async with conn.transaction():
        row = await _live(conn, schedule_id)
        if if_match is not None and row["version"] not in if_match:
            raise _stale(row["version"])
        fields = definition.patched_fields(row, patch)
        spec = definition.check(fields, created_at=row["created_at"])
        changed = definition.changes(row, fields)
        if not changed:
            return row  # nothing to record; the version stays
        schedules.check_builtin_change(row, changed)  # 409: see app.schedules.BUILTIN_NAME
        at = await store.db_now(conn, now)
        if definition.TIMING_COLUMNS & changed.keys():
            changed["next_due_at"] = definition.next_due(fields, spec, now=at)
        if "enabled" in changed:
            changed["paused_at"] = None if changed["enabled"] else at
        updated = await store.update_schedule(
            conn,
            schedule_id,
            changed,
            event_type="schedule.updated",
            actor=actor,
            now=now,
            expected_version=row["version"],
            meta=meta,
        )
    if updated is None:  # the row is locked above: only a bug gets here
        raise RuntimeError(f"update of schedule {schedule_id} matched no row")
    return updated


async def retry_run(
    conn: Conn, run_id: int, *, actor: str, now: datetime | None, meta: Meta
) -> Row | None:
    """A dead or cancelled run back to waiting; None when the run is in neither state."""
    cur = await conn.execute(
        query("retry_run"), {"id": run_id, "actor": actor, "now": now, "meta": jsonb(meta)}
    )
    row = await cur.fetchone()
    if row is not None:
        await wake_workers(conn)
    return row
