"""The event log is the truth: folding it reproduces the tables, and tampering is caught."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease
from tests.conftest import ROOT, connect
from tests.factories import make_schedule
from tests.support import store as test_store

T0 = datetime.now(UTC).replace(microsecond=0)


async def _history(conn: Conn) -> dict[str, int]:
    """A history touching every transition the store has, with a moving fake clock."""
    t = T0
    a = await make_schedule(conn, now=t, name="nightly", max_attempts=2, retry_delay_seconds=5)
    b = await make_schedule(
        conn,
        now=t,
        name="hourly",
        kind="cron",
        interval_seconds=None,
        cron="0 * * * *",
        timezone="Europe/Berlin",
    )
    await store.update_schedule(
        conn,
        b["id"],
        {"priority": 5, "payload": {"k": [1, 2]}},
        event_type="schedule.updated",
        actor="admin",
        now=t,
        expected_version=1,
        meta={"source_ip": "127.0.0.1"},
    )
    await store.update_schedule(
        conn,
        b["id"],
        {"enabled": False, "paused_at": t},
        event_type="schedule.paused",
        actor="admin",
        now=t,
    )
    dues = [t + timedelta(minutes=k) for k in range(5)]
    runs = await store.insert_runs(
        conn,
        [(a["id"], d, d) for d in dues],
        origin="schedule",
        actor="ticker",
        now=t,
        meta={"tick": 1},
    )
    await store.insert_runs(
        conn,
        [(b["id"], t, t)],
        origin="trigger",
        adhoc=True,
        idempotency_key="k1",
        trace_context={"traceparent": "00-ab-cd-01"},
        actor="admin",
        now=t,
    )

    def claim(at: datetime, n: int) -> list[dict[str, object]]:
        return test_store.claim_runs(
            conn,
            worker_id=7,
            queues=["default"],
            limit=n,
            lease_seconds=30,
            actor="worker:7",
            now=at,
        )  # type: ignore[return-value]

    t += timedelta(minutes=5)
    claimed = await claim(t, 6)
    assert len(claimed) == 6
    leases = [Lease.of(r) for r in claimed]
    await store.renew_leases(conn, [lz.lease_token for lz in leases], lease_seconds=30, now=t)
    await test_store.succeed_run(
        conn, leases[0], {"status": "ok", "duration_ms": 12}, actor="w", now=t
    )
    await test_store.fail_run(
        conn, leases[1], {"status": "error", "error": "boom"}, jitter=0.5, actor="w", now=t
    )
    await store.release_run(conn, leases[2], actor="w", now=t)
    await store.cancel_run(conn, leases[3].run_id, actor="admin", now=t)
    await store.cancelled_attempt(conn, leases[3], {"status": "cancelled"}, actor="w", now=t)
    # A zombie: the same lease presented twice; the second is fenced and changes nothing.
    assert await test_store.succeed_run(conn, leases[0], {"status": "ok"}, actor="w", now=t) is None
    # leases[4] and leases[5] go silent; the rescuer takes them after the lease.
    t += timedelta(seconds=31)
    rescued = await store.rescue_expired(conn, limit=10, actor="rescuer", now=t)
    assert len(rescued) == 2
    # Retry the failed run until it is dead (max_attempts=2).
    t += timedelta(hours=2)
    again = [r for r in await claim(t, 10) if r["id"] == leases[1].run_id]
    await test_store.fail_run(
        conn, Lease.of(again[0]), {"status": "error"}, jitter=0.1, actor="w", now=t
    )
    waiting = await store.cancel_run(conn, runs[4]["id"], actor="admin", now=t)
    assert waiting is None or waiting["state"] in {"cancelled", "running"}
    return {"a": a["id"], "b": b["id"], "run": runs[0]["id"]}


async def test_verify_finds_no_difference_on_store_histories(conn: Conn) -> None:
    await _history(conn)
    cur = await conn.execute(
        "SELECT count(*) AS n, count(DISTINCT type) AS types FROM pgsched.event"
    )
    counts = await cur.fetchone()
    assert counts is not None and counts["types"] >= 12, counts
    assert await replay.verify(conn) == []


async def test_verify_reports_the_exact_tampered_column(conn: Conn) -> None:
    ids = await _history(conn)
    await conn.execute("UPDATE pgsched.run SET queue = 'tampered' WHERE id = %s", [ids["run"]])
    await conn.execute(
        "UPDATE pgsched.schedule SET timezone = 'Asia/Tokyo' WHERE id = %s", [ids["b"]]
    )
    differences = await replay.verify(conn)
    assert [(d.table, d.id, d.column, d.expected, d.actual) for d in differences] == [
        ("schedule", ids["b"], "timezone", "Europe/Berlin", "Asia/Tokyo"),
        ("run", ids["run"], "queue", "default", "tampered"),
    ]
    assert str(differences[1]) == (f"run {ids['run']}: queue is 'tampered', events say 'default'")


async def test_verify_reports_rows_without_events_and_events_without_rows(conn: Conn) -> None:
    ids = await _history(conn)
    await conn.execute("ALTER TABLE pgsched.run DISABLE TRIGGER ALL")
    await conn.execute("DELETE FROM pgsched.run WHERE id = %s", [ids["run"]])
    differences = await replay.verify(conn)
    assert [(d.table, d.id, d.column) for d in differences] == [("run", ids["run"], None)]
    assert "row missing from the table" in str(differences[0])


async def test_rebuild_restores_the_projections(conn: Conn) -> None:
    await _history(conn)
    cur = await conn.execute("SELECT to_jsonb(r) AS r FROM pgsched.run r ORDER BY id")
    runs_before = [row["r"] for row in await cur.fetchall()]
    cur = await conn.execute("SELECT to_jsonb(s) AS s FROM pgsched.schedule s ORDER BY id")
    schedules_before = [row["s"] for row in await cur.fetchall()]
    await conn.execute("UPDATE pgsched.run SET state = 'dead'")
    assert len(await replay.verify(conn)) > 0
    assert await replay.rebuild(conn) == {"schedules": 2, "runs": 6}
    assert await replay.verify(conn) == []
    cur = await conn.execute("SELECT to_jsonb(s) AS s FROM pgsched.schedule s ORDER BY id")
    assert [row["s"] for row in await cur.fetchall()] == schedules_before
    cur = await conn.execute("SELECT to_jsonb(r) AS r FROM pgsched.run r ORDER BY id")
    after = [row["r"] for row in await cur.fetchall()]
    # Only the lease expiry of running runs may differ (heartbeats are not history).
    strip = [{k: v for k, v in r.items() if k != "lease_expires_at"} for r in runs_before]
    assert [{k: v for k, v in r.items() if k != "lease_expires_at"} for r in after] == strip


def _cli(dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `pgsched` as a user would; `dsn=None` runs it with DATABASE_URL unset."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_cli_verify_and_rebuild(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        ids = await _history(conn)
        ok = _cli(dsn, "verify")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip().endswith(
            "0 difference(s) between the projections and the event log"
        )
        await conn.execute("UPDATE pgsched.schedule SET name = 'x' WHERE id = %s", [ids["a"]])
        bad = _cli(dsn, "verify")
        assert bad.returncode == 1
        assert f"schedule {ids['a']}: name is 'x', events say 'nightly'" in bad.stdout
        fixed = _cli(dsn, "rebuild", "--yes")  # without a terminal it would refuse to ask
        assert fixed.returncode == 0 and "rebuilt 2 schedule(s) and 6 run(s)" in fixed.stdout
        assert _cli(dsn, "verify").returncode == 0
    finally:
        await conn.close()


def test_cli_errors_are_one_line() -> None:
    out = _cli(None, "verify")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "pgsched: DATABASE_URL is not set (or pass --database-url), and no local PostgreSQL runs "
        "under .pgsched/pgdata here (`pgsched run` in this directory starts one)"
    )
    bad = _cli(None, "--database-url", "postgresql://nobody@127.0.0.1:1/none", "verify")
    assert bad.returncode == 2
    assert bad.stderr.startswith("pgsched: cannot connect to the database:")
    assert len(bad.stderr.strip().splitlines()) == 1
