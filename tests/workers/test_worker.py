"""The worker loop in-process against a real database: execute, retry, time out, cancel, drain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgsched.app import ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.services import schedules
from tests.factories import make_schedule
from tests.support import store as test_store
from tests.support.worker import eventually, running_worker, signalled, wait_state

JOBS = "tests.workers.jobs_for_tests"


def python_job(dsn: str, fn: str, **kwargs: Any) -> dict[str, Any]:
    return {"target": f"{JOBS}:{fn}", "kwargs": {"dsn": dsn, **kwargs}}


async def trigger(conn: Conn, schedule_id: int) -> dict[str, Any]:
    run, _ = await schedules.trigger(conn, schedule_id, actor="test", now=None)
    return run


async def log(conn: Conn) -> list[tuple[str, str]]:
    cur = await conn.execute("SELECT idempotency_key, note FROM public.job_log ORDER BY id")
    return [(r["idempotency_key"], r["note"]) for r in await cur.fetchall()]


async def event_types(conn: Conn, run_id: int) -> list[str]:
    cur = await conn.execute(
        "SELECT type FROM pgsched.event WHERE stream = 'run' AND stream_id = %s ORDER BY id",
        [run_id],
    )
    return [r["type"] for r in await cur.fetchall()]


async def test_a_scheduled_run_is_executed_once_and_recorded(db: Conn, dsn: str) -> None:
    now = datetime.now(UTC)
    s = await make_schedule(
        db,
        now=now,
        job_type="python",
        payload=python_job(dsn, "ok"),
        kind="once",
        interval_seconds=None,
        run_at=now,
    )
    await ticker.tick(db, now=None)
    (run_id,) = [r["id"] for r in await _runs(db, s["id"])]
    async with running_worker(dsn) as worker:
        run = await wait_state(db, run_id, {"succeeded"})
    assert run["outcome"]["status"] == "succeeded" and run["outcome"]["output"] == "'done'"
    assert run["outcome"]["schedule_version"] == 1 and run["attempt"] == 1
    assert await log(db) == [(f"{run_id}:1", "ok")], "(run_id, attempt) is the idempotency key"
    assert await event_types(db, run_id) == ["run.created", "run.claimed", "run.succeeded"]
    assert worker.stats.succeeded == 1
    cur = await db.execute("SELECT state FROM pgsched.worker")
    assert await cur.fetchall() == [{"state": "stopped"}]
    assert await replay.verify(db) == []


async def test_failures_retry_with_backoff_then_go_dead(db: Conn, dsn: str) -> None:
    s = await make_schedule(
        db,
        now=datetime.now(UTC),
        job_type="python",
        payload=python_job(dsn, "fail"),
        max_attempts=3,
        retry_delay_seconds=0.2,
        retry_factor=2,
        retry_max_delay_seconds=5,
    )
    run = await trigger(db, s["id"])
    async with running_worker(dsn):
        dead = await wait_state(db, run["id"], {"dead"})
    assert dead["attempt"] == 3 and "this job always fails" in dead["outcome"]["error"]
    assert [n for _, n in await log(db)] == ["fail", "fail", "fail"]
    assert await event_types(db, run["id"]) == [
        "run.created",
        "run.claimed",
        "run.retry_scheduled",
        "run.claimed",
        "run.retry_scheduled",
        "run.claimed",
        "run.dead",
    ]
    # The waits between attempts follow delay * factor^(n-1) within the +-10 percent jitter.
    cur = await db.execute(
        "SELECT (data->>'available_at')::timestamptz - occurred_at AS wait FROM pgsched.event "
        "WHERE stream_id = %s AND type = 'run.retry_scheduled' ORDER BY id",
        [run["id"]],
    )
    waits = [r["wait"].total_seconds() for r in await cur.fetchall()]
    assert 0.18 <= waits[0] <= 0.22 and 0.36 <= waits[1] <= 0.44, waits


async def test_backoff_formula_is_capped(db: Conn) -> None:
    cur = await db.execute(
        "SELECT pgsched.backoff_seconds(10, 2, 3600, n, 0.5) AS mid,"
        " pgsched.backoff_seconds(10, 2, 3600, n, 0.0) AS low,"
        " pgsched.backoff_seconds(10, 2, 3600, n, 0.999) AS high"
        " FROM generate_series(1, 12) n ORDER BY n"
    )
    rows = await cur.fetchall()
    assert [r["mid"] for r in rows[:4]] == [10, 20, 40, 80]
    assert rows[0]["low"] == pytest.approx(9) and rows[0]["high"] == pytest.approx(10.998)
    assert rows[-1]["mid"] == 3600 and rows[-1]["high"] == 3600, "never above the cap"


async def test_a_job_over_its_timeout_is_stopped_and_retried(db: Conn, dsn: str) -> None:
    s = await make_schedule(
        db,
        now=datetime.now(UTC),
        job_type="python",
        payload=python_job(dsn, "slow", seconds=30),
        timeout_seconds=0.5,
        max_attempts=1,
    )
    run = await trigger(db, s["id"])
    async with running_worker(dsn):
        dead = await wait_state(db, run["id"], {"dead"})
    assert dead["outcome"]["status"] == "timeout"
    assert [n for _, n in await log(db)] == ["start"], "stopped before its end"


async def test_cancel_a_waiting_and_a_running_run(db: Conn, dsn: str) -> None:
    s = await make_schedule(
        db, now=datetime.now(UTC), job_type="python", payload=python_job(dsn, "slow", seconds=30)
    )
    waiting = await trigger(db, s["id"])
    cancelled = await store.cancel_run(db, waiting["id"], actor="op", now=None)
    assert cancelled is not None and cancelled["state"] == "cancelled"
    run = await trigger(db, s["id"])
    async with running_worker(dsn, lease_seconds=1.5):
        await wait_state(db, run["id"], {"running"})
        await store.cancel_run(db, run["id"], actor="op", now=None)
        done = await wait_state(db, run["id"], {"cancelled"})
    assert done["outcome"]["status"] == "cancelled"
    assert await event_types(db, run["id"]) == [
        "run.created",
        "run.claimed",
        "run.cancel_requested",
        "run.cancelled",
    ]
    assert await replay.verify(db) == []


async def test_graceful_shutdown_releases_unfinished_runs(db: Conn, dsn: str) -> None:
    s = await make_schedule(
        db, now=datetime.now(UTC), job_type="python", payload=python_job(dsn, "slow", seconds=30)
    )
    quick = await make_schedule(
        db, now=datetime.now(UTC), job_type="python", payload=python_job(dsn, "slow", seconds=0.3)
    )
    long_run = await trigger(db, s["id"])
    short_run = await trigger(db, quick["id"])
    async with running_worker(dsn, grace_seconds=1.0):
        await wait_state(db, long_run["id"], {"running"})
        await wait_state(db, short_run["id"], {"running"})
    # The short job finished within the grace period; the long one was given back.
    assert (await wait_state(db, short_run["id"], {"succeeded"}))["attempt"] == 1
    released = await wait_state(db, long_run["id"], {"waiting"})
    assert released["attempt"] == 0, "a released attempt is not consumed"
    assert (await event_types(db, long_run["id"]))[-1] == "run.released"
    assert await replay.verify(db) == []


async def test_worker_reconnects_after_its_connections_are_terminated(db: Conn, dsn: str) -> None:
    s = await make_schedule(
        db, now=datetime.now(UTC), job_type="python", payload=python_job(dsn, "ok")
    )
    async with running_worker(dsn) as worker:
        first = await trigger(db, s["id"])
        await wait_state(db, first["id"], {"succeeded"})
        cur = await db.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        killed = (await cur.fetchone() or {})["n"]
        assert killed >= 2, "the pool's and the listener's connections"
        second = await trigger(db, s["id"])
        await wait_state(db, second["id"], {"succeeded"})
    assert worker.stats.succeeded == 2


async def test_start_latency_is_short_after_the_due_instant(db: Conn, dsn: str) -> None:
    """A sanity check of the wake-up path, not a figure (bench/ measures latency)."""
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    s = await make_schedule(
        db, now=due, job_type="noop", kind="once", interval_seconds=None, run_at=due
    )
    # A 10 s poll: only the wake-up at the run's available_at can start it in time.
    async with running_worker(dsn, poll_seconds=10.0):
        await ticker.tick(db, now=None, lookahead=timedelta(seconds=2))
        (run,) = await _runs(db, s["id"])
        done = await wait_state(db, run["id"], {"succeeded"})
    assert done["started_at"] >= due, "never before it is due"
    assert done["started_at"] - due < timedelta(seconds=1), "woken at the due instant, not by poll"


async def _runs(conn: Conn, schedule_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute("SELECT * FROM pgsched.run WHERE schedule_id = %s", [schedule_id])
    return await cur.fetchall()


async def test_a_lease_lost_mid_run_abandons_the_attempt_with_evidence(db: Conn, dsn: str) -> None:
    s = await make_schedule(
        db,
        now=datetime.now(UTC),
        job_type="python",
        payload=python_job(dsn, "slow", seconds=30),
        retry_delay_seconds=60,
    )
    run = await trigger(db, s["id"])
    async with running_worker(dsn, lease_seconds=1.5, rescue_every_seconds=60) as worker:
        await wait_state(db, run["id"], {"running"})
        # As if this worker had stalled: its lease runs out and a rescuer takes the run back.
        await db.execute(
            "UPDATE pgsched.run SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
            [run["id"]],
        )
        assert len(await store.rescue_expired(db, limit=10, actor="rescuer", now=None)) == 1
        # The next heartbeat (every 0.5 s) notices, and the job's task records it.
        await signalled(
            worker.heartbeat.signals.until(lambda: worker.stats.fenced > 0),
            "the heartbeat finds the lease lost",
        )
    cur = await db.execute(
        "SELECT meta->>'transition' AS t, (meta->>'attempt')::int AS a FROM pgsched.event "
        "WHERE type = 'run.completion_fenced' AND stream_id = %s",
        [run["id"]],
    )
    assert await cur.fetchall() == [{"t": "lease_lost", "a": 1}]
    assert [n for _, n in await log(db)] == ["start"], "the abandoned job was stopped"
    assert (await test_store.get_run(db, run["id"]) or {})["state"] == "waiting"


async def test_the_worker_listens_again_after_its_connections_are_terminated(
    db: Conn, dsn: str
) -> None:
    """ADR 0013: notifications are hints, and after a reconnect the worker LISTENs again. With
    a 30 s poll, a run made after every backend of the worker was terminated starts at once
    only if the ticker's NOTIFY reaches a listener that came back."""
    async with running_worker(dsn, poll_seconds=30.0, lease_seconds=30.0) as worker:
        listener = await _listener_pid(db, within=10)
        cur = await db.execute(
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert (await cur.fetchone() or {})["n"] >= 2, "the pool's and the listener's"
        relistened = await _listener_pid(db, within=10, other_than=listener)

        # Let the wake-up that follows a reconnect, and the claim retries after the broken
        # claim connection, settle: once the claim loop is idle after a pass that began after
        # the listener's last LISTEN, only a NOTIFY can wake it early.
        def settled() -> bool:
            listens = worker.listener.listens
            return listens >= 2 and worker.idle_after_listen == listens

        await signalled(worker.claim_idle.until(settled), "the claim loop idles after relisten")
        now = datetime.now(UTC)
        s = await make_schedule(
            db, now=now, job_type="noop", kind="once", interval_seconds=None, run_at=now
        )
        made = datetime.now(UTC)
        created = await ticker.tick(db, now=None)  # materialises the run, then NOTIFYs once
        assert created.created == 1
        (run,) = await _runs(db, s["id"])
        done = await wait_state(db, run["id"], {"succeeded"}, within=10)
        assert await _listener_pid(db, within=0) == relistened
    assert done["started_at"] - made < timedelta(seconds=3), "woken by NOTIFY, not by the poll"
    assert worker.stats.succeeded == 1


async def _listener_pid(db: Conn, *, within: float, other_than: int | None = None) -> int:
    """The backend of the worker's listener: the session whose last statement was LISTEN."""

    async def listening() -> int | None:
        cur = await db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query ILIKE 'LISTEN %%pgsched_runs%%' AND pid <> coalesce(%s, 0)",
            [other_than],
        )
        rows = await cur.fetchall()
        if not rows:
            return None
        (row,) = rows
        return int(row["pid"])

    return await eventually(
        "a session of the worker listening on pgsched_runs", listening, within=within
    )
