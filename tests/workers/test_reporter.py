"""The reporter: results are recorded in batches, and one bad result cannot sink the others."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from pgsched.app.clock import SystemClock
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease, Report
from pgsched.workers.reporter import Reporter, ReportFailed
from tests.chaos.proxy import Proxy
from tests.factories import cover_last_month, make_schedule
from tests.support import store as test_store
from tests.support.worker import eventually, running_worker, signalled, wait_state
from tests.workers.test_worker import python_job, trigger


async def _waiting_runs(conn: Conn, n: int) -> int:
    await cover_last_month(conn)  # runs due up to n ms ago: last month's at 00:00:00 on the 1st
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
    async with running_worker(dsn, slots=64) as worker:

        async def all_done() -> bool:
            return worker.stats.succeeded == n

        await eventually(f"{n} runs succeeded", all_done, within=30)
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
    await _waiting_runs(db, 4)
    rows = await test_store.claim_runs(
        db, worker_id=1, queues=["default"], limit=4, lease_seconds=30, actor="w", now=None
    )
    a, b, c, d = (Lease.of(r) for r in rows)
    reporter = Reporter(dsn, clock=SystemClock(), actor=lambda: "worker:1")
    task = asyncio.create_task(reporter.run())
    try:
        # jsonb cannot hold U+0000 (the job layer replaces it; this result skipped that layer):
        # the batch fails in the database, and the reporter retries each result on its own.
        results = await asyncio.gather(
            reporter.report(Report(a, "succeeded", {"status": "succeeded"})),
            reporter.report(Report(b, "succeeded", {"status": "succeeded", "error": "a\x00b"})),
            reporter.report(Report(c, "failed", {"status": "failed"}, final=True)),
            # And one that cannot even be encoded (a bug upstream): it fails alone as well.
            reporter.report(Report(d, "succeeded", {"status": "succeeded", "x": object()})),
            return_exceptions=True,
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ok, bad, dead, unencodable = results
    assert isinstance(ok, dict) and ok["state"] == "succeeded"
    assert isinstance(bad, ReportFailed) and isinstance(unencodable, ReportFailed)
    assert isinstance(dead, dict) and dead["state"] == "dead"
    still = await test_store.get_run(db, b.run_id)
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


async def _most_at_once(conn: Conn, where: str, params: list[object]) -> int:
    """The most jobs of runs matching `where` that were executing at once, from the jobs' own
    start and end records (job_log, in insert order). Run timestamps would not do: a claim's
    started_at is its transaction's start, which may precede the commit that freed the slot."""
    cur = await conn.execute(
        "SELECT max(n) AS most FROM ("
        " SELECT sum(CASE l.note WHEN 'start' THEN 1 ELSE -1 END)"
        "        OVER (ORDER BY l.id ROWS UNBOUNDED PRECEDING) AS n"
        " FROM public.job_log l JOIN pgsched.run r"
        "   ON l.idempotency_key = r.id || ':' || r.attempt"
        " WHERE l.note IN ('start', 'end') AND " + where + ") c",
        params,
    )
    row = await cur.fetchone()
    return int(row["most"]) if row and row["most"] is not None else 0


async def test_limits_hold_while_unlimited_runs_take_the_fast_claim(db: Conn, dsn: str) -> None:
    """The worker skips the limits' lock while the last look found none (ADR 0019); limited
    runs that become claimable meanwhile are still taken, and never past their limits."""
    now = datetime.now(UTC)
    slow = {"job_type": "python", "payload": python_job(dsn, "slow", seconds=0.2)}
    capped = await make_schedule(db, now=now, max_concurrency=2, **slow)
    queued = await make_schedule(db, now=now, queue="narrow", **slow)
    free = await make_schedule(db, now=now)
    await cover_last_month(db)  # the runs below are due up to 20 ms ago: see _waiting_runs
    await store.set_queue_limit(db, "narrow", 1, actor="t", now=None)
    async with (
        running_worker(dsn, slots=8, poll_seconds=0.2) as fast,
        running_worker(dsn, slots=4, queues=("narrow",), poll_seconds=0.2),
    ):
        await signalled(
            fast.claim_idle.until(lambda: fast.claim_idle.passes >= 1),
            "the first worker's first look, which finds nothing limited",
        )
        due = datetime.now(UTC)
        for s, n in ((capped, 6), (queued, 3), (free, 20)):
            dues = [due - timedelta(milliseconds=k) for k in range(n)]
            await store.insert_runs(
                db, [(s["id"], d, d) for d in dues], origin="backfill", actor="t", now=None
            )

        async def all_succeeded() -> bool:
            cur = await db.execute(
                "SELECT count(*) AS n FROM pgsched.run WHERE state <> 'succeeded'"
            )
            return (await cur.fetchone() or {}).get("n") == 0

        await eventually("every run succeeded", all_succeeded, within=15)
    cur = await db.execute("SELECT state, count(*) AS n FROM pgsched.run GROUP BY state")
    assert await cur.fetchall() == [{"state": "succeeded", "n": 29}]
    assert await _most_at_once(db, "r.schedule_id = %s", [capped["id"]]) == 2
    assert await _most_at_once(db, "r.queue = %s", ["narrow"]) == 1
    assert fast.stats.claimed == 26  # the capped schedule's 6 and 20 free ones
    assert await replay.verify(db) == []


# -- outages: a result is kept while its lease can be valid (ADR 0022) -----------------------


async def test_a_result_is_kept_while_its_lease_can_be_valid_then_given_up(
    db: Conn, dsn: str
) -> None:
    await _waiting_runs(db, 2)
    rows = await test_store.claim_runs(
        db, worker_id=1, queues=["default"], limit=2, lease_seconds=30, actor="w", now=None
    )
    short, long = (Lease.of(r) for r in rows)
    clock = SystemClock()
    with Proxy.before(dsn, up=False) as (proxy, via):
        reporter = Reporter(via, clock=clock, actor=lambda: "worker:1")
        task = asyncio.create_task(reporter.run())
        try:
            start = clock.monotonic()
            expiring = asyncio.create_task(
                reporter.report(
                    Report(short, "succeeded", {"status": "succeeded"}),
                    valid_until=lambda: start + 1.5,
                )
            )
            kept = asyncio.create_task(
                reporter.report(
                    Report(long, "succeeded", {"status": "succeeded"}),
                    valid_until=lambda: start + 30,
                )
            )
            with pytest.raises(ReportFailed, match="lease expired while the database"):
                await expiring
            given_up = clock.monotonic() - start
            assert 1.5 <= given_up < 4.0, "given up once its lease could no longer be valid"
            assert not kept.done(), "the other lease is still valid: still trying"
            await asyncio.sleep(7.0 - given_up)  # longer than the old five tries (6.2 s)
            assert not kept.done()
            proxy.up()
            row = await asyncio.wait_for(kept, 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert row is not None and row["state"] == "succeeded"
    abandoned = await test_store.get_run(db, short.run_id)
    assert abandoned is not None and abandoned["state"] == "running", "left to lease and rescue"


async def test_an_abandoned_result_is_one_line_naming_run_and_attempt(
    db: Conn, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = await make_schedule(
        db,
        now=datetime.now(UTC),
        job_type="python",
        payload=python_job(dsn, "slow", seconds=0.2),
        retry_delay_seconds=1,
    )
    run = await trigger(db, s["id"])
    caplog.set_level(logging.INFO, logger="pgsched")
    with Proxy.before(dsn) as (proxy, via):
        async with running_worker(via, lease_seconds=2.0) as worker:
            await wait_state(db, run["id"], {"running"})
            proxy.down()
            # The job ends, its lease (2 s, not renewed while the database is away) runs out.

            async def given_up() -> bool:
                return bool(worker.stats.claimed) and not worker._inflight

            await eventually("the result given up once the lease ran out", given_up, within=10)
            proxy.up()
            # Rescued and run again: the at-least-once path, now only past the lease.
            done = await wait_state(db, run["id"], {"succeeded"}, within=20)
    lines = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"run {run['id']} attempt 1: result abandoned"), lines
    assert "its lease expired while the database was unavailable" in lines[0]
    assert done["attempt"] == 2
