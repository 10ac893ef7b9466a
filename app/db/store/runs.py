"""Runs: their creation, claim, leases, completion, cancellation, retry and rescue.

Each function runs one named statement (app/db/queries/runs.sql) that writes the projection row
and appends its event together, so a state change and its event commit or roll back as one
(ADRs 0004, 0005). Callers own the transaction: several calls in one `async with
conn.transaction()` are atomic. Time is passed in as `now` (None = the database's now(), ADR
0003). Completions are fenced by the attempt's lease (ADR 0013).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from pgsched.app.db.store import health
from pgsched.app.db.store.executor import Conn, Row, jsonb, row, rows
from pgsched.otel import spans


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
    return await rows(
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
        return Claim(await rows(conn, "claim_open_runs", params), limited=False)
    async with conn.transaction():
        locked = await row(conn, "lock_limits", params) or {}
        schedule_ids, queue_names = locked["schedule_ids"], locked["queue_names"]
        taken = await rows(
            conn,
            "claim_runs",
            {**params, "schedule_ids": schedule_ids, "queue_names": queue_names},
        )
    return Claim(taken, limited=bool(schedule_ids or queue_names))


async def renew_leases(
    conn: Conn, tokens: Sequence[UUID], *, lease_seconds: float, now: datetime | None
) -> list[Row]:
    """Extend the given leases; returns (id, lease_token, cancel_requested) of those still held."""
    if not tokens:
        return []
    return await rows(
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
    done = await row(
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
    if done is None:
        await record_fenced(conn, lease, name, actor=actor, now=now)
    return done


async def record_fenced(
    conn: Conn, lease: Lease, transition: str, *, actor: str, now: datetime | None
) -> None:
    """Evidence that an attempt no longer holding its lease tried `transition` (or, with
    "lease_lost", was abandoned by its worker): changes nothing, counts nothing."""
    await rows(
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
    completed = await rows(
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
    await health.evaluate_after(conn, completed, now=now)
    done = {r["id"]: r for r in completed}
    return [done.get(r.lease.run_id) for r in reports]


async def cancelled_attempt(
    conn: Conn, lease: Lease, outcome: Mapping[str, object], *, actor: str, now: datetime | None
) -> Row | None:
    """The worker stopped the attempt on request: the run ends cancelled. None means fenced."""
    (done,) = await complete_attempts(
        conn, [Report(lease, "cancelled", outcome)], actor=actor, now=now
    )
    return done


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
    return await row(
        conn, "cancel_run", {"id": run_id, "actor": actor, "now": now, "meta": jsonb(meta or {})}
    )


async def rescue_expired(conn: Conn, *, limit: int, actor: str, now: datetime | None) -> list[Row]:
    """Put runs whose lease expired back to waiting (after backoff) or to dead."""
    rescued = await rows(conn, "rescue_expired", {"limit": limit, "actor": actor, "now": now})
    await health.evaluate_after(conn, rescued, now=now)
    return rescued


async def retry_run(
    conn: Conn, run_id: int, *, actor: str, now: datetime | None, meta: Mapping[str, object]
) -> Row | None:
    """A dead or cancelled run back to waiting (ADR 0004: only an operator does this); None
    when the run is in neither state."""
    return await row(
        conn, "retry_run", {"id": run_id, "actor": actor, "now": now, "meta": jsonb(meta)}
    )


async def wake_workers(conn: Conn) -> None:
    """NOTIFY idle workers that runs are waiting (a hint only; they poll anyway). Sent in the
    caller's transaction, so it is delivered when the runs it announces are committed."""
    await rows(conn, "notify_runs")
