"""Store calls only tests make: shorthands over the store's own functions, and a raw read.

Production code claims with `store.claim` and reports batches with `store.complete_attempts`;
tests often want one claim's rows, or one attempt's result, in a line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Lease, Report, Row


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
    """Claim up to `limit` due runs, limited ones included (see `store.claim`)."""
    taken = await store.claim(
        conn,
        worker_id=worker_id,
        queues=queues,
        limit=limit,
        lease_seconds=lease_seconds,
        actor=actor,
        now=now,
    )
    return taken.rows


async def _complete_one(
    conn: Conn, report: Report, *, actor: str, now: datetime | None
) -> Row | None:
    (row,) = await store.complete_attempts(conn, [report], actor=actor, now=now)
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


async def get_run(conn: Conn, run_id: int) -> Row | None:
    """The whole run row, lease token included (which no API read returns)."""
    cur = await conn.execute("SELECT * FROM pgsched.run WHERE id = %(id)s", {"id": run_id})
    return await cur.fetchone()
