"""complete_attempts: a batch of attempt results in one statement, each fenced on its own."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease, Report
from tests.factories import make_schedule
from tests.support import store as test_store

T = datetime.now(UTC).replace(microsecond=0)


# `conn` here is the rolled-back tier (tests/conftest.py, `tx`): every test here runs on one
# connection; the retried report's `now=None` is the transaction's start, the same for both.
pytestmark = pytest.mark.tx


async def _claimed(conn: Conn, n: int, **schedule: object) -> list[Lease]:
    s = await make_schedule(conn, now=T, **schedule)
    dues = [T + timedelta(seconds=k) for k in range(n)]
    await store.insert_runs(
        conn, [(s["id"], d, d) for d in dues], origin="backfill", actor="t", now=T
    )
    rows = await test_store.claim_runs(
        conn,
        worker_id=1,
        queues=["default"],
        limit=n,
        lease_seconds=30,
        actor="w",
        now=T + timedelta(seconds=n),
    )
    assert len(rows) == n
    return [Lease.of(r) for r in sorted(rows, key=lambda r: r["due_at"])]


async def _types(conn: Conn, run_id: int) -> list[str]:
    cur = await conn.execute(
        "SELECT type FROM pgsched.event WHERE stream = 'run' AND stream_id = %s ORDER BY id",
        [run_id],
    )
    return [r["type"] for r in await cur.fetchall()]


async def test_one_statement_records_every_kind_of_result(conn: Conn) -> None:
    ok, retry, final, spent, cancelled, zombie = await _claimed(
        conn, 6, max_attempts=2, retry_delay_seconds=10
    )
    # `spent` is on its last attempt: fail it once through the normal path first.
    await test_store.fail_run(conn, spent, {"status": "failed"}, jitter=0.0, actor="w", now=T)
    (spent_row,) = await test_store.claim_runs(
        conn,
        worker_id=1,
        queues=["default"],
        limit=1,
        lease_seconds=30,
        actor="w",
        now=T + timedelta(minutes=5),
    )
    spent = Lease.of(spent_row)
    stale = Lease(zombie.run_id, zombie.due_at, zombie.attempt, uuid4())  # not its token
    at = T + timedelta(minutes=6)

    results = await store.complete_attempts(
        conn,
        [
            Report(ok, "succeeded", {"status": "succeeded", "n": 1}),
            Report(retry, "failed", {"status": "failed"}, jitter=0.5),
            Report(final, "failed", {"status": "failed"}, final=True),
            Report(spent, "failed", {"status": "timed_out"}, jitter=0.5),
            Report(cancelled, "cancelled", {"status": "cancelled"}),
            Report(stale, "succeeded", {"status": "succeeded"}),
        ],
        actor="w",
        now=at,
    )

    states = [r and r["state"] for r in results]
    assert states == ["succeeded", "waiting", "dead", "dead", "cancelled", None]
    stored = await test_store.get_run(conn, ok.run_id)
    assert stored is not None and stored["outcome"] == {"status": "succeeded", "n": 1}
    # The retry waits delay * factor^(attempt-1) (+/- jitter) from the database's `now`.
    assert results[1] is not None and results[1]["available_at"] > at
    assert results[1]["finished_at"] is None
    assert results[2] is not None and results[2]["finished_at"] == at
    assert await _types(conn, ok.run_id) == ["run.created", "run.claimed", "run.succeeded"]
    assert (await _types(conn, retry.run_id))[-1] == "run.retry_scheduled"
    assert (await _types(conn, final.run_id))[-1] == "run.dead"
    assert (await _types(conn, spent.run_id))[-2:] == ["run.claimed", "run.dead"]
    assert (await _types(conn, cancelled.run_id))[-1] == "run.cancelled"
    assert (await _types(conn, zombie.run_id))[-1] == "run.completion_fenced"
    zombie_row = await test_store.get_run(conn, zombie.run_id)
    assert zombie_row is not None and zombie_row["state"] == "running", (
        "the fenced run is untouched"
    )
    assert await replay.verify(conn) == []


async def test_a_retried_report_counts_once_and_is_not_a_zombie(conn: Conn) -> None:
    """The connection broke after COMMIT; the worker sends the same results again."""
    leases = await _claimed(conn, 3)
    reports = [
        Report(lease, "succeeded", {"status": "succeeded", "k": i})
        for i, lease in enumerate(leases)
    ]
    first = await store.complete_attempts(conn, reports, actor="w", now=None)
    again = await store.complete_attempts(conn, reports, actor="w", now=None)

    assert [r and r["id"] for r in again] == [r and r["id"] for r in first]
    assert all(r is not None and r["state"] == "succeeded" for r in again)
    cur = await conn.execute("SELECT type, count(*) AS n FROM pgsched.event GROUP BY type")
    counts = Counter({r["type"]: r["n"] for r in await cur.fetchall()})
    assert counts["run.succeeded"] == 3
    assert counts["run.completion_fenced"] == 0
    # A different result for the same attempt is not the same report: that one is fenced.
    (other,) = await store.complete_attempts(
        conn, [Report(leases[0], "failed", {"status": "failed"})], actor="w", now=None
    )
    assert other is None
    assert (await _types(conn, leases[0].run_id))[-1] == "run.completion_fenced"
    assert await replay.verify(conn) == []


async def test_empty_batch_sends_nothing(conn: Conn) -> None:
    assert await store.complete_attempts(conn, [], actor="w", now=None) == []
