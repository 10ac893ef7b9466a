"""Schedules: their defaults, their view for the occurrence function, and operations on them.

The table's column defaults mirror these for operators inserting by hand; the API and CLI go
through `complete()`, so a schedule's stored row always carries every column explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row
from pgsched.app.domain.occurrences import ScheduleSpec, jitter_offset, next_after, occurrences
from pgsched.app.domain.occurrences import preview as domain_preview

DEFAULTS: Mapping[str, Any] = {
    "payload": {},
    "cron": None,
    "interval_seconds": None,
    "run_at": None,
    "timezone": "UTC",
    "starts_at": None,
    "ends_at": None,
    "jitter_seconds": 0,
    "queue": "default",
    "priority": 0,
    "max_attempts": 3,
    "retry_delay_seconds": 10.0,
    "retry_factor": 2.0,
    "retry_max_delay_seconds": 3600.0,
    "timeout_seconds": 3600.0,
    "overlap_policy": "allow",
    "missed_policy": "latest",
    "missed_cap": 100,
    "grace_seconds": 60,
    "max_concurrency": None,
    "enabled": True,
    "next_due_at": None,
}


def complete(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` over the defaults; unknown keys are a programming error, not user input."""
    unknown = set(fields) - set(DEFAULTS) - {"name", "job_type", "kind"}
    if unknown:
        raise KeyError(f"unknown schedule fields: {sorted(unknown)}")
    return {**DEFAULTS, **fields}


def first_due(fields: Mapping[str, Any], now: datetime) -> datetime | None:
    """The first occurrence at or after `now` of a complete schedule definition."""
    row = {**fields, "created_at": now}
    return next_after(spec_of(row), now - timedelta(microseconds=1))


def spec_of(row: Mapping[str, Any]) -> ScheduleSpec:
    """The occurrence function's view of a schedule row."""
    return ScheduleSpec(
        kind=row["kind"],
        cron=row["cron"],
        timezone=row["timezone"],
        interval_seconds=row["interval_seconds"],
        # An interval counts from its start bound, or from when it was created.
        anchor=(row["starts_at"] or row["created_at"]) if row["kind"] == "interval" else None,
        run_at=row["run_at"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
    )


# -- operations on a schedule ---------------------------------------------------------------
# Each returns what changed and raises ScheduleError subclasses for expected failures, which the
# API maps to 404/409/422 and the CLI to a one-line reason.

MAX_BACKFILL = 1000
# Audit context of the request (source IP, user agent), kept in the event's meta.
Meta = Mapping[str, object] | None
MAX_PREVIEW = 100


class ScheduleError(Exception):
    """An expected failure of a schedule operation."""


class NotFound(ScheduleError):
    """No live schedule has this id."""


class Protected(ScheduleError):
    """The change would stop pgsched's own built-in schedule; `field` names the culprit (None:
    the whole schedule, as in a delete)."""

    def __init__(self, row: Mapping[str, Any], message: str, field: str | None = None) -> None:
        super().__init__(f"schedule {row['id']} is the built-in {row['name']!r}: {message}")
        self.field = field


# pgsched's own schedule: partition upkeep (app.maintenance, ADR 0021). Nothing else keeps
# partitions ahead, and its loss shows only when inserts start to fail, so over the API it may
# only be paused and resumed (explicit, recorded as schedule.paused), moved to another minute of
# its hour, or given another priority or retry policy. Everything else could stop it quietly or
# change what it is: another queue no worker serves, a starts_at in 2099, an ends_at in the
# past, a cron that never fires ('0 0 29 2 1'), another kind, timezone, jitter or timeout, a
# delete, a rename, another job. install_builtin_maintenance_v1 (migration 0016) puts those back
# when the ticker starts, whoever changed them.
BUILTIN_NAME = "pgsched.maintenance"
_BUILTIN_ADJUSTABLE = frozenset(
    {
        "cron",
        "enabled",
        "priority",
        "max_attempts",
        "retry_delay_seconds",
        "retry_factor",
        "retry_max_delay_seconds",
        "grace_seconds",
    }
)
# The order the culprit is looked for, so a change of kind is named as that (not as the
# interval or cron it brings along).
_BUILTIN_ORDER = ("name", "job_type", "payload", "kind")
# Its cron: some minute of every hour, nothing else.
_HOURLY = re.compile(r"(?:[0-9]|[1-5][0-9]) \* \* \* \*")


def is_builtin(row: Mapping[str, Any]) -> bool:
    return bool(row["name"] == BUILTIN_NAME and row["deleted_at"] is None)


def check_builtin_change(row: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
    """Raise Protected if `changes` would delete the built-in schedule or change anything of
    it but its minute, pause, priority and retries."""
    if not is_builtin(row):
        return
    if changes.get("deleted_at") is not None:
        raise Protected(row, "it keeps partitions ahead and cannot be deleted (pause it instead)")

    def order(field: str) -> tuple[int, str]:
        known = field in _BUILTIN_ORDER
        return (_BUILTIN_ORDER.index(field) if known else len(_BUILTIN_ORDER), field)

    for field in sorted(changes, key=order):
        if field == "deleted_at" or changes[field] == row.get(field):
            continue
        if field == "cron" and not _HOURLY.fullmatch(str(changes[field])):
            raise Protected(
                row, "its cron may only move the minute of its hour ('M * * * *')", field
            )
        if field not in _BUILTIN_ADJUSTABLE:
            raise Protected(row, f"its {field} cannot change", field)


class InvalidRequest(ScheduleError):
    """The request is well-formed but not acceptable; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


async def _live(conn: Conn, schedule_id: int) -> Row:
    row = await store.get_schedule(conn, schedule_id, lock=True)
    if row is None:
        raise NotFound(f"schedule {schedule_id} does not exist")
    return row


async def pause(
    conn: Conn, schedule_id: int, *, actor: str, now: datetime | None, meta: Meta = None
) -> Row:
    """Stop materialising; occurrences while paused follow the missed policy on resume."""
    return await _set_enabled(conn, schedule_id, enabled=False, actor=actor, now=now, meta=meta)


async def resume(
    conn: Conn, schedule_id: int, *, actor: str, now: datetime | None, meta: Meta = None
) -> Row:
    """Materialise again. `next_due_at` stayed where the pause left it, so the ticker applies
    the schedule's missed policy to everything that fell due while it was paused."""
    return await _set_enabled(conn, schedule_id, enabled=True, actor=actor, now=now, meta=meta)


async def _set_enabled(
    conn: Conn, schedule_id: int, *, enabled: bool, actor: str, now: datetime | None, meta: Meta
) -> Row:
    """Pause or resume; a no-op (no event) when the schedule is already in that state."""
    async with conn.transaction():
        row = await _live(conn, schedule_id)
        if row["enabled"] == enabled:
            return row
        paused_at = None if enabled else await store.db_now(conn, now)
        changed = await store.update_schedule(
            conn,
            schedule_id,
            {"enabled": enabled, "paused_at": paused_at},
            event_type="schedule.resumed" if enabled else "schedule.paused",
            actor=actor,
            now=now,
            meta=meta,
        )
    return changed or row


async def delete(
    conn: Conn, schedule_id: int, *, actor: str, now: datetime | None, meta: Meta = None
) -> Row:
    """Soft delete: the row and its history stay; the name becomes free."""
    async with conn.transaction():
        row = await _live(conn, schedule_id)
        at = await store.db_now(conn, now)
        check_builtin_change(row, {"deleted_at": at})
        changed = await store.update_schedule(
            conn,
            schedule_id,
            {"deleted_at": at, "enabled": False},
            event_type="schedule.deleted",
            actor=actor,
            now=now,
            meta=meta,
        )
    if changed is None:
        raise NotFound(f"schedule {schedule_id} does not exist")
    return changed


async def trigger(
    conn: Conn,
    schedule_id: int,
    *,
    actor: str,
    now: datetime | None,
    idempotency_key: str | None = None,
    trace_context: Mapping[str, str] | None = None,
    meta: Mapping[str, object] | None = None,
) -> tuple[Row, bool]:
    """Run a schedule now, as an ad-hoc run. Returns (run, created).

    With an idempotency key, a repeated request returns the run the first one created
    (created=False). Triggering ignores pause and overlap: it is an operator's explicit act.
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest("Idempotency-Key", "must be 1 to 255 characters")
    async with conn.transaction():
        await _live(conn, schedule_id)
        if idempotency_key is not None and not await store.claim_trigger_key(
            conn, schedule_id, idempotency_key, now=now
        ):
            earlier = await store.trigger_key_run(conn, schedule_id, idempotency_key)
            if earlier is None:  # the key's run was in a retired month
                raise InvalidRequest("Idempotency-Key", "was used for a run no longer kept")
            return earlier, False
        at = await store.db_now(conn, now)
        (run,) = await store.insert_runs(
            conn,
            [(schedule_id, at, at)],
            origin="trigger",
            adhoc=True,
            idempotency_key=idempotency_key,
            trace_context=trace_context,
            actor=actor,
            now=now,
            meta=meta,
        )
        if idempotency_key is not None:
            await store.set_trigger_key_run(conn, schedule_id, idempotency_key, run)
    return run, True


@dataclass(frozen=True, slots=True)
class Backfill:
    requested: int
    created: list[int]


async def backfill(
    conn: Conn,
    schedule_id: int,
    start: datetime,
    end: datetime,
    *,
    actor: str,
    now: datetime | None,
    cap: int = MAX_BACKFILL,
    meta: Mapping[str, object] | None = None,
) -> Backfill:
    """Materialise the occurrences in [start, end); idempotent, capped, recorded as an event.

    Occurrences that already have a run are left alone. Backfill ignores the overlap and
    missed policies (the operator asked for these occurrences) but not the partitions: a
    month that was retired cannot be backfilled (store.PartitionMissing).
    """
    if end <= start:
        raise InvalidRequest("to", "must be later than from")
    async with conn.transaction():
        row = await _live(conn, schedule_id)
        if end > await store.db_now(conn, now):
            raise InvalidRequest("to", "must not be in the future; the ticker handles that")
        tick = timedelta(microseconds=1)
        due = list(islice(occurrences(spec_of(row), start - tick, end - tick), cap + 1))
        if len(due) > cap:
            raise InvalidRequest("to", f"the range holds more than {cap} occurrences")
        key, jitter = str(schedule_id), row["jitter_seconds"]
        created = await store.insert_runs(
            conn,
            [(schedule_id, t, t + jitter_offset(key, t, jitter)) for t in due],
            origin="backfill",
            actor=actor,
            now=now,
            meta=meta,
        )
        await store.record_schedule_event(
            conn,
            schedule_id,
            "schedule.backfilled",
            actor=actor,
            now=now,
            meta={
                **(meta or {}),
                "from": start,
                "to": end,
                "requested": len(due),
                "created": len(created),
            },
        )
    return Backfill(len(due), [r["id"] for r in created])


def preview(row: Mapping[str, Any], after: datetime, count: int) -> list[datetime]:
    """The next `count` due times of a schedule after `after`, from the ticker's own function."""
    if not 1 <= count <= MAX_PREVIEW:
        raise InvalidRequest("count", f"must be between 1 and {MAX_PREVIEW}")
    return domain_preview(spec_of(row), after, count)
