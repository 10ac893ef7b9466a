"""The reporter: results are recorded in batches, and one bad result cannot sink the others."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from app.clock import SystemClock
from app.db import replay, store
from app.db.store import Conn, Lease, Report
from tests.factories import make_schedule
from tests.workers.test_worker import running_worker
from workers.reporter import Reporter, ReportFailed


async def _waiting_runs(conn: Conn, n: int) -> int:
    s = await make_schedule(conn)
    now = datetime.now(UTC)
    dues = [now - timedelta(milliseconds=k) for k in range(n)]
    await store.insert_runs(
        conn, [(s["id"], d, d) for d in dues], origin="backfill", actor="t", now=None
    )
    return int(s["id"])


async def test_a_busy_worker_reports_many_runs_per_statement(db: Conn, dsn: str) -> None:
    n = 400
    await _waiting_runs(db, n)
    async with running_worker(dsn, slots=64) as (worker, _):
        for _ in range(600):
            if worker.stats.succeeded == n:
                break
            await asyncio.sleep(0.05)
        batches = worker._reporter().batches
    assert worker.stats.succeeded == n and worker.stats.fenced == 0
    cur = await db.execute(
        "SELECT count(*) FILTER (WHERE state = 'succeeded') AS ok, count(*) AS all FROM pgsched.run"
    )
    assert await cur.fetchone() == {"ok": n, "all": n}
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.event WHERE type = 'run.succeeded'")
    assert await cur.fetchone() == {"n": n}
    # Group commit: with 64 jobs ending together, results share statements.
    assert batches < n / 4, batches
    assert await replay.verify(db) == []


async def test_one_unstorable_result_fails_alone(db: Conn, dsn: str) -> None:
    await _waiting_runs(db, 3)
    rows = await store.claim_runs(
        db, worker_id=1, queues=["default"], limit=3, lease_seconds=30, actor="w", now=None
    )
    a, b, c = (Lease.of(r) for r in rows)
    reporter = Reporter(dsn, clock=SystemClock(), actor=lambda: "worker:1")
    task = asyncio.create_task(reporter.run())
    try:
        # jsonb cannot hold U+0000 (the job layer replaces it; this result skipped that layer):
        # the batch fails in the database, and the reporter retries each result on its own.
        results = await asyncio.gather(
            reporter.report(Report(a, "succeeded", {"status": "succeeded"})),
            reporter.report(Report(b, "succeeded", {"status": "succeeded", "error": "a\x00b"})),
            reporter.report(Report(c, "failed", {"status": "failed"}, final=True)),
            return_exceptions=True,
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ok, bad, dead = results
    assert isinstance(ok, dict) and ok["state"] == "succeeded"
    assert isinstance(bad, ReportFailed)
    assert isinstance(dead, dict) and dead["state"] == "dead"
    still = await store.get_run(db, b.run_id)
    assert still is not None and still["state"] == "running", "left to its lease and rescue"
    assert await replay.verify(db) == []


async def test_reports_pending_at_stop_fail_instead_of_hanging(dsn: str) -> None:
    reporter = Reporter(dsn, clock=SystemClock(), actor=lambda: "worker:1")
    task = asyncio.create_task(reporter.run())
    lease = Lease(1, datetime.now(UTC), 1, uuid4())
    pending = asyncio.create_task(reporter.report(Report(lease, "succeeded", {})))
    await asyncio.sleep(0)  # both tasks started; the report is queued, not yet sent
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(ReportFailed):
        await pending
