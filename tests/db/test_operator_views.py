"""The operator views (docs/operators.md), each read as the read-only operator role."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgsched.app import ticker
from pgsched.app.db import store
from pgsched.app.db.store import Conn, Lease
from tests.conftest import connect
from tests.factories import cover_last_month, make_schedule
from tests.support import store as test_store

H = timedelta(hours=1)


async def _run(conn: Conn, schedule_id: int, due: datetime) -> dict[str, Any]:
    (run,) = await store.insert_runs(
        conn, [(schedule_id, due, due)], origin="backfill", actor="t", now=due
    )
    return run


async def _claim_one(conn: Conn, at: datetime) -> dict[str, Any]:
    (run,) = await test_store.claim_runs(
        conn, worker_id=9, queues=["default"], limit=1, lease_seconds=3600, actor="w", now=at
    )
    return run


async def _write_history(conn: Conn) -> dict[str, Any]:
    """One of each thing the views look for, at known times relative to now (taken here: the
    views compare with the database's now(), so module import time would drift)."""
    NOW = datetime.now(UTC)
    async with conn.transaction():  # all or nothing (a savepoint under `tx`)
        await cover_last_month(conn)  # 6 h back is last month's before 06:00 on the 1st
        jobs = await make_schedule(
            conn, now=NOW - 6 * H, name="nightly-report", max_attempts=1, next_due_at=None
        )
        # Succeeded: started 5 h ago, took 4 s (an hour bucket of its own).
        await _run(conn, jobs["id"], NOW - 5 * H)
        ok = await _claim_one(conn, NOW - 5 * H)
        await test_store.succeed_run(
            conn,
            Lease.of(ok),
            {"status": "succeeded"},
            actor="w",
            now=NOW - 5 * H + timedelta(seconds=4),
        )
        # Dead: one attempt, failed with an error, 2 hours ago.
        await _run(conn, jobs["id"], NOW - 2 * H)
        bad = await _claim_one(conn, NOW - 2 * H)
        await test_store.fail_run(
            conn,
            Lease.of(bad),
            {"status": "failed", "error": "boom"},
            jitter=0.5,
            actor="w",
            now=NOW - 2 * H + timedelta(seconds=2),
        )
        # Running for 20 minutes.
        await _run(conn, jobs["id"], NOW - timedelta(minutes=20))
        long = await _claim_one(conn, NOW - timedelta(minutes=20))
        # Waiting: one ready for 5 minutes, one scheduled for later.
        await _run(conn, jobs["id"], NOW - timedelta(minutes=5))
        await _run(conn, jobs["id"], NOW + H)
        # A schedule that never ran, one with a missed occurrence, and one 10 minutes overdue.
        quiet = await make_schedule(conn, now=NOW, name="quiet", next_due_at=NOW + H)
        skipper = await make_schedule(
            conn, now=NOW - 3 * H, name="skipper", interval_seconds=3600, missed_policy="skip"
        )
        await ticker.tick(conn, now=NOW - timedelta(seconds=30))
        # Created after the tick, so nothing has advanced it: the ticker looks behind.
        overdue = await make_schedule(
            conn, now=NOW - H, name="overdue", next_due_at=NOW - timedelta(minutes=10)
        )
        # An audited change from the API.
        await store.update_schedule(
            conn,
            quiet["id"],
            {"priority": 7},
            event_type="schedule.updated",
            actor="token:alice",
            now=NOW,
            meta={"source_ip": "203.0.113.9", "user_agent": "curl/8"},
        )
        await store.set_queue_limit(conn, "default", 8, actor="op", now=NOW)
    return {
        "jobs": jobs,
        "long": long,
        "overdue": overdue,
        "quiet": quiet,
        "skipper": skipper,
    }


@pytest.fixture
async def history(tx: Conn) -> dict[str, Any]:
    """The history, written in the rolled-back tier (tests/conftest.py `tx`): the views only
    read, so one transaction holds the history and the operator's reads of it."""
    return await _write_history(tx)


@pytest.fixture
async def operator(tx: Conn, history: dict[str, Any]) -> Conn:
    """The same connection, as the read-only operator role until the transaction ends.
    (Inside the transaction now() is its start, a moment before the history's NOW: the
    minutes the views report still round to the same values.)"""
    await tx.execute("SET LOCAL ROLE pgsched_operator")
    return tx


@pytest.fixture
async def own_history(dsn: str) -> AsyncIterator[dict[str, Any]]:
    """The history in a database of the test's own, committed, for a test that needs other
    sessions (DDL as the owner, statistics a closing backend flushes)."""
    conn = await connect(dsn)
    try:
        yield {**await _write_history(conn), "dsn": dsn}
    finally:
        await conn.close()


@pytest.fixture
async def own_operator(own_history: dict[str, Any]) -> AsyncIterator[Conn]:
    conn = await connect(own_history["dsn"], role="pgsched_operator")
    try:
        yield conn
    finally:
        await conn.close()


async def _rows(conn: Conn, sql: str) -> list[dict[str, Any]]:
    cur = await conn.execute(sql)
    return await cur.fetchall()


async def test_run_summary_24h(operator: Conn) -> None:
    rows = await _rows(
        operator,
        "SELECT job_type, state, runs, round(avg_duration_seconds) AS d "
        "FROM pgsched.run_summary_24h WHERE job_type = 'noop' ORDER BY state",
    )
    by_state = {r["state"]: (r["runs"], r["d"]) for r in rows}
    assert by_state["succeeded"] == (1, 4)
    assert by_state["dead"] == (1, 2)
    assert by_state["running"][0] == 1
    assert by_state["waiting"][0] >= 2


async def test_failed_attempts_24h(operator: Conn) -> None:
    rows = await _rows(
        operator, "SELECT error, status, attempts, runs FROM pgsched.failed_attempts_24h"
    )
    assert rows == [{"error": "boom", "status": "failed", "attempts": 1, "runs": 1}]


async def test_long_running_runs(operator: Conn, history: dict[str, Any]) -> None:
    rows = await _rows(
        operator,
        "SELECT run_id, schedule, round(running_seconds / 60) AS m FROM pgsched.long_running_runs",
    )
    assert rows == [{"run_id": history["long"]["id"], "schedule": "nightly-report", "m": 20}]


async def test_overdue_and_quiet_schedules(operator: Conn) -> None:
    overdue = await _rows(
        operator, "SELECT name, round(overdue_seconds / 60) AS m FROM pgsched.overdue_schedules"
    )
    assert overdue == [{"name": "overdue", "m": 10}]
    quiet = {r["name"] for r in await _rows(operator, "SELECT name FROM pgsched.quiet_schedules")}
    assert {"quiet", "overdue"} <= quiet
    assert "nightly-report" not in quiet, "it last started 20 minutes ago"


async def test_hourly_performance(operator: Conn) -> None:
    rows = await _rows(
        operator,
        "SELECT job_type, finished, succeeded, dead, "
        "success_rate_percent AS rate, p95_duration_seconds AS p95 "
        "FROM pgsched.hourly_performance ORDER BY hour",
    )
    assert [(r["finished"], r["succeeded"], r["dead"]) for r in rows] == [(1, 1, 0), (1, 0, 1)]
    assert [float(r["rate"]) for r in rows] == [100.0, 0.0]
    assert [round(r["p95"]) for r in rows] == [4, 2]


async def test_queue_depth(operator: Conn) -> None:
    (row,) = await _rows(
        operator,
        "SELECT queue, ready, scheduled, running, max_running, "
        "round(oldest_ready_seconds / 60) AS m FROM pgsched.queue_depth",
    )
    assert row["queue"] == "default" and row["running"] == 1 and row["max_running"] == 8
    assert row["scheduled"] >= 1 and row["ready"] >= 1 and row["m"] >= 5


async def test_dead_runs(operator: Conn) -> None:
    rows = await _rows(operator, "SELECT schedule, attempt, status, error FROM pgsched.dead_runs")
    assert rows == [
        {"schedule": "nightly-report", "attempt": 1, "status": "failed", "error": "boom"}
    ]


async def test_missed_occurrences(operator: Conn, history: dict[str, Any]) -> None:
    rows = await _rows(operator, "SELECT schedule, reason FROM pgsched.missed_occurrences")
    assert rows and all(r == {"schedule": "skipper", "reason": "skip"} for r in rows)


async def test_audit_log(operator: Conn, history: dict[str, Any]) -> None:
    rows = await _rows(
        operator,
        "SELECT actor, action, resource_type, resource_id, old_value, "
        "new_value ->> 'priority' AS new_priority, ip_address, user_agent "
        "FROM pgsched.audit_log WHERE actor = 'token:alice'",
    )
    assert rows == [
        {
            "actor": "token:alice",
            "action": "schedule.updated",
            "resource_type": "schedule",
            "resource_id": history["quiet"]["id"],
            "old_value": {"priority": 0},
            "new_priority": "7",
            "ip_address": "203.0.113.9",
            "user_agent": "curl/8",
        }
    ]


async def test_table_health_and_partition_horizon(operator: Conn) -> None:
    tables = {
        r["table_name"]: r
        for r in await _rows(
            operator, "SELECT table_name, partition_of, total_bytes FROM pgsched.table_health"
        )
    }
    assert tables["schedule"]["partition_of"] is None and tables["schedule"]["total_bytes"] > 0
    assert any(r["partition_of"] == "run" for r in tables.values())
    assert any(r["partition_of"] == "event" for r in tables.values())
    horizon = await _rows(operator, "SELECT table_name, alarm FROM pgsched.partition_horizon")
    assert {r["table_name"]: r["alarm"] for r in horizon} == {
        "pgsched.run": False,
        "pgsched.event": False,
    }


async def test_partition_defaults(own_operator: Conn, own_history: dict[str, Any]) -> None:
    """Empty while pgsched's own partitions hold everything; a stray DEFAULT partition that
    caught a row shows up with its count (the alarm /health and the metric read)."""
    assert await _rows(own_operator, "SELECT * FROM pgsched.partition_defaults") == []
    owner = await connect(own_history["dsn"], role="pgsched_owner")
    try:
        await owner.execute("CREATE TABLE pgsched.run_stray PARTITION OF pgsched.run DEFAULT")
    finally:
        await owner.close()
    writer = await connect(own_history["dsn"])
    try:
        far = datetime(2100, 1, 1, tzinfo=UTC)  # no partition of its own
        await store.insert_runs(  # its run.created event is written now, in this month
            writer, [(own_history["jobs"]["id"], far, far)], origin="backfill", actor="t", now=None
        )
        await writer.execute("SELECT pg_stat_force_next_flush()")
    finally:
        await writer.close()  # a closing backend flushes its statistics too
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # the statistics follow within a moment
        rows = await _rows(
            own_operator,
            "SELECT table_name, partition_name, live_rows FROM pgsched.partition_defaults",
        )
        if rows and rows[0]["live_rows"]:
            break
        await asyncio.sleep(0.1)
    assert rows == [
        {"table_name": "pgsched.run", "partition_name": "pgsched.run_stray", "live_rows": 1}
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE pgsched.schedule SET priority = 1",
        "INSERT INTO pgsched.queue (name, updated_at) VALUES ('x', now())",
        "DELETE FROM pgsched.run",
        "SELECT * FROM pgsched.api_token",
        "SELECT * FROM pgsched.maintain_v2()",
    ],
)
async def test_the_operator_role_only_reads(operator: Conn, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await operator.execute(statement)
