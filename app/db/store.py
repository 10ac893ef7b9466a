"""The store: the one module through which every state change of a schedule or run passes.

Each function runs one named statement (app/db/queries) that writes the projection row and appends
its event together, so a state change and its event commit or roll back as one. Callers own the
transaction: several store calls in one `async with conn.transaction()` are atomic.

Time is passed in as `now` (None = the database's now(), ADR 0003). Nothing here decides policy
(defaults, validation, next due times): that belongs to the callers in `app` and `workers`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from pgsched.app.db.sql import query
from pgsched.otel import spans

Conn: TypeAlias = AsyncConnection[DictRow]
Row: TypeAlias = dict[str, Any]

# SQLSTATE 23514 with this text is PostgreSQL's "no partition of relation … found for row".
_NO_PARTITION = "no partition of relation"


class PartitionMissing(RuntimeError):
    """A row's month has no partition: maintenance is behind, or the month was retired."""


class NameTaken(RuntimeError):
    """A live schedule already has this name."""


@dataclass(frozen=True, slots=True)
class Lease:
    """What a worker holds for one attempt; every completion must present it (fencing)."""

    run_id: int
    due_at: datetime
    attempt: int
    lease_token: UUID

    @classmethod
    def of(cls, row: Row) -> Lease:
        return cls(row["id"], row["due_at"], row["attempt"], row["lease_token"])


def _trace_id(given: str | None) -> str | None:
    """An event's trace id: the one given, else the current span's (an API request's, say), so
    an operator can go from any event to the trace of what caused it."""
    return given or (spans.trace_context() or {}).get("trace_id")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime in a JSON value")
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def jsonb(value: object) -> Jsonb:
    """Adapt a Python value for a `::jsonb` parameter (datetimes as RFC 3339)."""
    return Jsonb(value, dumps=lambda v: json.dumps(v, default=_json_default))


async def _rows(conn: Conn, name: str, params: Mapping[str, object]) -> list[Row]:
    try:
        cur = await conn.execute(query(name), params)
    except psycopg.errors.CheckViolation as exc:
        if _NO_PARTITION in str(exc):
            raise PartitionMissing(str(exc).splitlines()[0]) from exc
        raise
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "schedule_name_live":
            raise NameTaken("a schedule with this name exists") from exc
        raise
    return await cur.fetchall()


async def _row(conn: Conn, name: str, params: Mapping[str, object]) -> Row | None:
    rows = await _rows(conn, name, params)
    return rows[0] if rows else None


# -- schedules -------------------------------------------------------------------------------


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
    row = await _row(
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
    if row is None:  # an INSERT … RETURNING always returns the row
        raise RuntimeError("create_schedule returned no row")
    return row


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
    return await _row(
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


async def get_schedule(conn: Conn, schedule_id: int, *, lock: bool = False) -> Row | None:
    return await _row(conn, "lock_schedule" if lock else "get_schedule", {"id": schedule_id})


async def list_schedules(conn: Conn, *, after_id: int = 0, limit: int = 100) -> list[Row]:
    return await _rows(conn, "list_schedules", {"after_id": after_id, "limit": limit})


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
    await _rows(
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
    rows = await _rows(
        conn, "claim_trigger_key", {"schedule_id": schedule_id, "key": key, "now": now}
    )
    return bool(rows)


async def set_trigger_key_run(conn: Conn, schedule_id: int, key: str, run: Row) -> None:
    await conn.execute(
        query("set_trigger_key_run"),
        {"schedule_id": schedule_id, "key": key, "run_id": run["id"], "run_due_at": run["due_at"]},
    )


async def trigger_key_run(conn: Conn, schedule_id: int, key: str) -> Row | None:
    return await _row(conn, "trigger_key_run", {"schedule_id": schedule_id, "key": key})


async def db_now(conn: Conn, now: datetime | None) -> datetime:
    """The instant the database decides with in this transaction (or `now` when given)."""
    row = await _row(conn, "db_now", {"now": now})
    if row is None:
        raise RuntimeError("db_now returned no row")
    result: datetime = row["now"]
    return result


async def record_system_event(
    conn: Conn,
    event_type: str,
    meta: Mapping[str, object],
    *,
    actor: str,
    now: datetime | None,
) -> int:
    """Append an event about pgsched itself (stream 'system'); returns its id."""
    row = await _row(
        conn,
        "record_system_event",
        {"type": event_type, "meta": jsonb(meta), "actor": actor, "now": now},
    )
    if row is None:  # an INSERT … RETURNING always returns the row
        raise RuntimeError("record_system_event returned no row")
    event_id: int = row["id"]
    return event_id


# -- runs ------------------------------------------------------------------------------------


async def insert_runs(
    conn: Conn,
    occurrences: Sequence[tuple[int, datetime, datetime]],
    *,
    origin: str,
    actor: str,
    now: datetime | None,
    adhoc: bool = False,
    idempotency_key: str | None = None,
    trace_context: Mapping[str, str] | None = None,
    meta: Mapping[str, object] | None = None,
) -> list[Row]:
    """Materialise (schedule_id, due_at, available_at) occurrences; existing ones are skipped.

    Returns only the runs this call created, so a second ticker's duplicate work returns [].
    """
    if not occurrences:
        return []
    trace_context = trace_context or spans.trace_context()  # the creator's span (ADR 0016)
    schedule_ids, due_ats, available_ats = zip(*occurrences, strict=True)
    return await _rows(
        conn,
        "insert_runs",
        {
            "schedule_ids": list(schedule_ids),
            "due_ats": list(due_ats),
            "available_ats": list(available_ats),
            "origin": origin,
            "adhoc": adhoc,
            "idempotency_key": idempotency_key,
            "trace_context": jsonb(trace_context) if trace_context else None,
            "actor": actor,
            "now": now,
            "meta": jsonb(meta or {}),
        },
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim took, and whether any limited schedule or queue was in play."""

    rows: list[Row]
    limited: bool


async def claim(
    conn: Conn,
    *,
    worker_id: int,
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    actor: str,
    now: datetime | None,
    limits: bool = True,
) -> Claim:
    """Claim up to `limit` due runs; each comes back running with a fresh lease and its job.

    With `limits`, two statements in one transaction (see lock_limits for why; the connection
    must use READ COMMITTED, PostgreSQL's default), and `limited` says whether lock_limits
    found limited schedules with claimable runs or limited queues. Without, one statement that
    claims only runs no limit applies to: limited runs are left for a later claim, never taken
    past their limit, so a caller may skip the lock while it has reason to think nothing is
    limited (ADR 0019).
    """
    params = {
        "worker_id": worker_id,
        "queues": list(queues),
        "limit": limit,
        "lease_seconds": lease_seconds,
        "actor": actor,
        "now": now,
    }
    if not limits:
        return Claim(await _rows(conn, "claim_open_runs", params), limited=False)
    async with conn.transaction():
        locked = await _row(conn, "lock_limits", params) or {}
        schedule_ids, queue_names = locked["schedule_ids"], locked["queue_names"]
        rows = await _rows(
            conn,
            "claim_runs",
            {**params, "schedule_ids": schedule_ids, "queue_names": queue_names},
        )
    return Claim(rows, limited=bool(schedule_ids or queue_names))


async def claim_runs(
    conn: Conn,
    *,
    worker_id: int,
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    actor: str,
    now: datetime | None,
) -> list[Row]:
    """Claim up to `limit` due runs, limited ones included (see `claim`)."""
    taken = await claim(
        conn,
        worker_id=worker_id,
        queues=queues,
        limit=limit,
        lease_seconds=lease_seconds,
        actor=actor,
        now=now,
    )
    return taken.rows


async def renew_leases(
    conn: Conn, tokens: Sequence[UUID], *, lease_seconds: float, now: datetime | None
) -> list[Row]:
    """Extend the given leases; returns (id, lease_token, cancel_requested) of those still held."""
    if not tokens:
        return []
    return await _rows(
        conn,
        "renew_leases",
        {"lease_tokens": list(tokens), "lease_seconds": lease_seconds, "now": now},
    )


async def _fenced(
    conn: Conn,
    name: str,
    lease: Lease,
    params: Mapping[str, object],
    *,
    actor: str,
    now: datetime | None,
) -> Row | None:
    """Run a fenced transition; when the lease is no longer held, record that and return None."""
    row = await _row(
        conn,
        name,
        {
            "id": lease.run_id,
            "due_at": lease.due_at,
            "attempt": lease.attempt,
            "lease_token": lease.lease_token,
            "actor": actor,
            "now": now,
            **params,
        },
    )
    if row is None:
        await record_fenced(conn, lease, name, actor=actor, now=now)
    return row


async def record_fenced(
    conn: Conn, lease: Lease, transition: str, *, actor: str, now: datetime | None
) -> None:
    """Evidence that an attempt no longer holding its lease tried `transition` (or, with
    "lease_lost", was abandoned by its worker): changes nothing, counts nothing."""
    await _rows(
        conn,
        "record_fenced",
        {
            "id": lease.run_id,
            "actor": actor,
            "now": now,
            "meta": jsonb(
                {
                    "transition": transition,
                    "attempt": lease.attempt,
                    "lease_token": lease.lease_token,
                }
            ),
        },
    )


@dataclass(frozen=True, slots=True)
class Report:
    """One attempt's result as a worker reports it. `status` is succeeded, cancelled or failed;
    a failure with `final` set (or no attempts left) is dead, otherwise retried after the
    backoff, spread by `jitter` in [0, 1)."""

    lease: Lease
    status: str
    outcome: Mapping[str, object]
    jitter: float = 0.0
    final: bool = False


async def complete_attempts(
    conn: Conn, reports: Sequence[Report], *, actor: str, now: datetime | None
) -> list[Row | None]:
    """Record a batch of results in one statement; per report, in order, where it left the run
    (id, state, attempt, available_at, finished_at), or None when the attempt no longer held
    its lease (kept as a run.completion_fenced event). A report that was recorded already (a
    retry after a lost COMMIT) returns the same again."""
    if not reports:
        return []
    rows = await _rows(
        conn,
        "complete_attempts",
        {
            "reports": jsonb(
                [
                    {
                        "id": r.lease.run_id,
                        "due_at": r.lease.due_at,
                        "attempt": r.lease.attempt,
                        "lease_token": r.lease.lease_token,
                        "status": r.status,
                        "outcome": r.outcome,
                        "jitter": r.jitter,
                        "final": r.final,
                    }
                    for r in reports
                ]
            ),
            "actor": actor,
            "now": now,
        },
    )
    done = {row["id"]: row for row in rows}
    return [done.get(r.lease.run_id) for r in reports]


async def _complete_one(
    conn: Conn, report: Report, *, actor: str, now: datetime | None
) -> Row | None:
    (row,) = await complete_attempts(conn, [report], actor=actor, now=now)
    return row


async def succeed_run(
    conn: Conn, lease: Lease, outcome: Mapping[str, object], *, actor: str, now: datetime | None
) -> Row | None:
    """Mark the attempt succeeded; None means fenced (the lease was lost), recorded as an event."""
    return await _complete_one(conn, Report(lease, "succeeded", outcome), actor=actor, now=now)


async def fail_run(
    conn: Conn,
    lease: Lease,
    outcome: Mapping[str, object],
    *,
    jitter: float,
    actor: str,
    now: datetime | None,
    final: bool = False,
) -> Row | None:
    """Record a failed attempt: waiting again after the backoff, or dead when the attempts are
    spent or `final` says retrying cannot help. None means fenced."""
    report = Report(lease, "failed", outcome, jitter=jitter, final=final)
    return await _complete_one(conn, report, actor=actor, now=now)


async def cancelled_attempt(
    conn: Conn, lease: Lease, outcome: Mapping[str, object], *, actor: str, now: datetime | None
) -> Row | None:
    """The worker stopped the attempt on request: the run ends cancelled. None means fenced."""
    return await _complete_one(conn, Report(lease, "cancelled", outcome), actor=actor, now=now)


async def release_run(conn: Conn, lease: Lease, *, actor: str, now: datetime | None) -> Row | None:
    """Give an unfinished attempt back without consuming it (graceful shutdown)."""
    return await _fenced(conn, "release_run", lease, {}, actor=actor, now=now)


async def cancel_run(
    conn: Conn,
    run_id: int,
    *,
    actor: str,
    now: datetime | None,
    meta: Mapping[str, object] | None = None,
) -> Row | None:
    """Cancel a waiting run, or ask a running one to stop. None if it is neither."""
    return await _row(
        conn, "cancel_run", {"id": run_id, "actor": actor, "now": now, "meta": jsonb(meta or {})}
    )


async def rescue_expired(conn: Conn, *, limit: int, actor: str, now: datetime | None) -> list[Row]:
    """Put runs whose lease expired back to waiting (after backoff) or to dead."""
    return await _rows(conn, "rescue_expired", {"limit": limit, "actor": actor, "now": now})


async def get_run(conn: Conn, run_id: int) -> Row | None:
    return await _row(conn, "get_run", {"id": run_id})


# -- workers ---------------------------------------------------------------------------------


async def register_worker(
    conn: Conn,
    *,
    name: str,
    host: str,
    pid: int,
    version: str,
    queues: Sequence[str],
    slots: int,
    now: datetime | None,
) -> Row:
    row = await _row(
        conn,
        "register_worker",
        {
            "name": name,
            "host": host,
            "pid": pid,
            "version": version,
            "queues": list(queues),
            "slots": slots,
            "now": now,
        },
    )
    if row is None:
        raise RuntimeError("register_worker returned no row")
    return row


async def heartbeat_worker(conn: Conn, worker_id: int, *, now: datetime | None) -> str | None:
    """Record that the worker is alive; returns its registry state (None if unknown)."""
    row = await _row(conn, "heartbeat_worker", {"id": worker_id, "now": now})
    return None if row is None else str(row["state"])


async def set_worker_state(conn: Conn, worker_id: int, state: str, *, now: datetime | None) -> None:
    await _rows(conn, "set_worker_state", {"id": worker_id, "state": state, "now": now})


async def mark_gone_workers(
    conn: Conn, *, after_seconds: float, actor: str, now: datetime | None
) -> list[int]:
    rows = await _rows(
        conn, "mark_gone_workers", {"after_seconds": after_seconds, "actor": actor, "now": now}
    )
    return [int(r["id"]) for r in rows]


async def seconds_until_next_run(
    conn: Conn, queues: Sequence[str], *, now: datetime | None
) -> float | None:
    row = await _row(conn, "seconds_until_next_run", {"queues": list(queues), "now": now})
    return None if row is None or row["seconds"] is None else float(row["seconds"])


async def set_queue_limit(
    conn: Conn, name: str, max_running: int | None, *, actor: str, now: datetime | None
) -> Row:
    """Limit how many runs of a queue run at once across all workers (None: unlimited)."""
    row = await _row(
        conn,
        "set_queue_limit",
        {"name": name, "max_running": max_running, "actor": actor, "now": now},
    )
    if row is None:
        raise RuntimeError("set_queue_limit returned no row")
    return row
