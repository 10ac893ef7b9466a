"""Partition maintenance and retention (issue 7): months ahead, DETACH/DROP past retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgsched.app import maintenance, ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.domain import schedule
from tests.conftest import connect, migrate
from tests.db.roles import login_role
from tests.factories import make_schedule
from tests.support import store as test_store

RETENTION = maintenance.Retention(months_ahead=3, run_days=30, event_days=90)
NOW = datetime.now(UTC)


def month_start(d: datetime, plus: int = 0) -> datetime:
    y, m = divmod(d.month - 1 + plus, 12)
    return datetime(d.year + y, m + 1, 1, tzinfo=UTC)


async def partitions(conn: Conn, table: str) -> list[datetime]:
    cur = await conn.execute(
        "SELECT month_start FROM pgsched.month_partitions_v1(%s::regclass)", [table]
    )
    return [r["month_start"] for r in await cur.fetchall()]


async def create_months(conn: Conn, table: str, first: datetime, count: int) -> None:
    """Past months, created as the owner role like every partition in production."""
    await conn.execute("SET ROLE pgsched_owner")
    try:
        for k in range(count):
            await conn.execute(
                "SELECT pgsched.create_month_partition_v1(%s::regclass, %s::date)",
                [table, month_start(first, k).date()],
            )
    finally:
        await conn.execute("RESET ROLE")


async def test_maintain_keeps_months_ahead_and_is_idempotent(conn: Conn) -> None:
    at = month_start(NOW, 2) + timedelta(days=3)
    done = await maintenance.maintain(conn, RETENTION, now=at)
    created = [(r["action"], r["table_name"]) for r in done]
    # Two months later the last existing month is NOW+3; NOW+4 and NOW+5 are new, per table.
    assert created.count(("created", "pgsched.run")) == 2
    assert created.count(("created", "pgsched.event")) == 2
    assert await maintenance.maintain(conn, RETENTION, now=at) == []
    assert (await partitions(conn, "pgsched.run"))[-1] == month_start(at, 3)
    cur = await conn.execute(
        "SELECT count(*) AS n FROM pgsched.event WHERE type = 'partition.created'"
    )
    assert await cur.fetchone() == {"n": 4}


async def test_run_months_are_retired_exactly_at_the_cutoff(conn: Conn) -> None:
    old = month_start(NOW, -6)
    await create_months(conn, "pgsched.run", old, 6)
    # The month [old+1, old+2) ends exactly 30 days before `at`: retired (the cutoff is
    # inclusive); the next month ends one second after the cutoff: kept.
    end_of_second = month_start(old, 2)
    at = end_of_second + timedelta(days=30)
    done = await maintenance.maintain(conn, RETENTION, now=at)
    retired = [r["partition_name"] for r in done if r["action"] == "retired"]
    assert retired == [
        f"run_y{old:%Y}m{old:%m}",
        f"run_y{month_start(old, 1):%Y}m{month_start(old, 1):%m}",
    ]
    kept = await partitions(conn, "pgsched.run")
    assert kept[0] == month_start(old, 2)
    # One second earlier, the second month would have stayed: check with a fresh set.
    await create_months(conn, "pgsched.run", old, 2)
    done = await maintenance.maintain(conn, RETENTION, now=at - timedelta(seconds=1))
    assert [r["partition_name"] for r in done if r["action"] == "retired"] == [
        f"run_y{old:%Y}m{old:%m}"
    ]


async def test_a_month_holding_an_unfinished_run_is_kept(conn: Conn) -> None:
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 4)
    s = await make_schedule(conn, now=NOW)
    due = old + timedelta(days=5)
    await store.insert_runs(conn, [(s["id"], due, due)], origin="backfill", actor="t", now=NOW)
    done = await maintenance.maintain(conn, RETENTION, now=NOW)
    by_action = {(r["action"], r["partition_name"]) for r in done}
    assert ("kept", f"run_y{old:%Y}m{old:%m}") in by_action
    assert month_start(old) in await partitions(conn, "pgsched.run")
    cur = await conn.execute(
        "SELECT meta->>'unfinished_runs' AS n FROM pgsched.event WHERE type = 'partition.kept'"
    )
    assert await cur.fetchall() == [{"n": "1"}]


async def test_event_months_are_retired_exactly_at_their_cutoff(conn: Conn) -> None:
    """Events keep 90 days: the month ending exactly 90 days before `at` goes, the next stays;
    one second earlier only the first goes."""
    old = month_start(NOW, -8)
    await create_months(conn, "pgsched.event", old, 8)
    end_of_second = month_start(old, 2)
    at = end_of_second + timedelta(days=90)

    def events_retired(done: list[dict[str, object]]) -> list[object]:
        return [
            r["partition_name"]
            for r in done
            if r["action"] == "retired" and r["table_name"] == "pgsched.event"
        ]

    first, second = (f"event_y{m:%Y}m{m:%m}" for m in (old, month_start(old, 1)))
    assert events_retired(await maintenance.maintain(conn, RETENTION, now=at)) == [first, second]
    assert month_start(old, 2) in await partitions(conn, "pgsched.event")
    await create_months(conn, "pgsched.event", old, 2)
    done = await maintenance.maintain(conn, RETENTION, now=at - timedelta(seconds=1))
    assert events_retired(done) == [first]


async def test_a_month_holding_a_running_run_is_kept(conn: Conn) -> None:
    """Not only waiting runs: one a worker holds right now keeps its month too."""
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 4)
    s = await make_schedule(conn, now=NOW)
    due = old + timedelta(days=5)
    await store.insert_runs(conn, [(s["id"], due, due)], origin="backfill", actor="t", now=NOW)
    claimed = await test_store.claim_runs(
        conn, worker_id=1, queues=["default"], limit=1, lease_seconds=60, actor="w", now=NOW
    )
    assert [r["state"] for r in claimed] == ["running"]
    done = await maintenance.maintain(conn, RETENTION, now=NOW)
    assert ("kept", f"run_y{old:%Y}m{old:%m}") in {(r["action"], r["partition_name"]) for r in done}
    assert month_start(old) in await partitions(conn, "pgsched.run")


async def test_a_run_written_into_the_month_while_it_is_counted_is_kept(
    conn: Conn, dsn: str
) -> None:
    """maintain_v2 locks before it counts: a backfill still open when maintenance starts ends
    up counted (maintain_v1 counted first, then its DETACH waited for that transaction and
    dropped the month with the new run in it)."""
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 4)
    s = await make_schedule(conn, now=NOW)
    due = old + timedelta(days=5)
    writer = await connect(dsn)
    try:
        async with writer.transaction():
            await store.insert_runs(
                writer, [(s["id"], due, due)], origin="backfill", actor="t", now=NOW
            )
            # Maintenance starts while the backfill is open, and must wait for it.
            task = asyncio.create_task(maintenance.maintain(conn, RETENTION, now=NOW))
            await asyncio.sleep(0.5)
            assert not task.done(), "maintenance waited for the open writer"
        done = await task
    finally:
        await writer.close()
    assert ("kept", f"run_y{old:%Y}m{old:%m}") in {(r["action"], r["partition_name"]) for r in done}
    cur = await conn.execute("SELECT state FROM pgsched.run WHERE due_at = %s", [due])
    assert await cur.fetchall() == [{"state": "waiting"}]
    assert await replay.verify(conn) == []


async def test_maintenance_gives_up_on_a_held_lock_within_its_lock_timeout(
    conn: Conn, dsn: str
) -> None:
    """Every step waits at most 5 s for a lock: a session holding pgsched.run makes the pass
    fail in about that time, changing nothing, instead of queueing every claim behind it."""
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 4)
    holder = await connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE pgsched.run IN ACCESS SHARE MODE")
            started = asyncio.get_running_loop().time()
            with pytest.raises(psycopg.errors.LockNotAvailable):
                await maintenance.maintain(conn, RETENTION, now=NOW)
            waited = asyncio.get_running_loop().time() - started
    finally:
        await holder.close()
    assert 4.5 <= waited < 15, waited
    assert month_start(old) in await partitions(conn, "pgsched.run"), "nothing was dropped"


async def test_retiring_events_keeps_the_fold_complete(conn: Conn) -> None:
    """Snapshots before the drop: verify still finds no drift after old event months go."""
    old = month_start(NOW, -5)
    await create_months(conn, "pgsched.event", old, 5)
    await create_months(conn, "pgsched.run", old, 5)
    # History written five months ago: a schedule and a run still waiting (kept by retention).
    s = await make_schedule(conn, now=old + timedelta(days=1), name="ancient")
    await store.update_schedule(
        conn,
        s["id"],
        {"priority": 4},
        event_type="schedule.updated",
        actor="op",
        now=old + timedelta(days=2),
    )
    due = old + timedelta(days=3)
    await store.insert_runs(conn, [(s["id"], due, due)], origin="schedule", actor="ticker", now=due)
    assert await replay.verify(conn) == []
    done = await maintenance.maintain(conn, RETENTION, now=NOW)
    assert any(r["table_name"] == "pgsched.event" and r["action"] == "retired" for r in done)
    cur = await conn.execute(
        "SELECT count(*) AS n FROM pgsched.event WHERE type = 'schedule.created'"
    )
    assert await cur.fetchone() == {"n": 0}, "the creation event is gone with its month"
    assert await replay.verify(conn) == [], "the snapshots carry the state"


async def test_the_ticker_never_fails_across_month_boundaries(conn: Conn) -> None:
    # Half past the hour: from a NOW at :59, the on-the-hour ticks below made two runs each.
    at = NOW.replace(minute=30, second=0, microsecond=0)
    hourly = [await make_schedule(conn, now=at, interval_seconds=3600) for _ in range(3)]
    for _ in range(7):  # seven months of moved clock, maintenance then ticks, as in production
        await maintenance.maintain(conn, RETENTION, now=at)
        ahead = await partitions(conn, "pgsched.run")
        assert ahead[-1] >= month_start(at, 3), "three months ahead of the clock"
        result = await ticker.tick(conn, now=at)
        assert result.created == len(hourly)
        # The runs finish, so their months may retire once past retention.
        for run in await test_store.claim_runs(
            conn, worker_id=1, queues=["default"], limit=10, lease_seconds=60, actor="w", now=at
        ):
            await test_store.succeed_run(
                conn, store.Lease.of(run), {"status": "succeeded"}, actor="w", now=at
            )
        at = month_start(at, 1) + timedelta(days=2, hours=5)
    runs = await partitions(conn, "pgsched.run")
    assert runs[0] >= month_start(at - timedelta(days=30), -1), "old months were retired"
    assert await replay.verify(conn) == []


async def test_the_worker_role_may_run_maintenance_but_not_ddl(dsn: str) -> None:
    worker = await connect(dsn, role="pgsched_worker")
    try:
        rows = await maintenance.maintain(worker, RETENTION, now=month_start(NOW, 1))
        assert rows, "SECURITY DEFINER: created as the owner"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await worker.execute(
                "SELECT pgsched.create_month_partition_v1("
                "'pgsched.run'::regclass, '2030-01-01'::date)"
            )
    finally:
        await worker.close()


async def test_builtin_schedule_is_installed_once_and_updated(conn: Conn) -> None:
    first = await maintenance.ensure_builtin_schedule(conn, RETENTION, now=None)
    again = await maintenance.ensure_builtin_schedule(conn, RETENTION, now=None)
    assert first["id"] == again["id"] and first["version"] == again["version"]
    assert (first["job_type"], first["cron"]) == ("python", "7 * * * *")
    changed = await maintenance.ensure_builtin_schedule(
        conn, maintenance.Retention(run_days=60), now=None
    )
    assert changed["version"] == first["version"] + 1
    assert changed["payload"] == {
        "target": maintenance.BUILTIN_TARGET,
        "kwargs": {"months_ahead": 3, "run_days": 60, "event_days": 90},
    }
    preview = schedule.preview(changed, NOW, 2)
    assert all(t.minute == 7 for t in preview)
    assert await replay.verify(conn) == []


async def test_the_builtin_job_maintains_when_a_worker_runs_it(
    conn: Conn, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default path end to end, as a deployment runs it: a worker logged in as a member of
    pgsched_worker only runs the built-in schedule (the python job, on its own connection;
    sql jobs run as pgsched_job, which may not maintain) and creates a missing month ahead."""
    from tests.workers.test_worker import running_worker, trigger, wait_state

    builtin = await maintenance.ensure_builtin_schedule(
        conn, maintenance.Retention(months_ahead=4), now=None
    )
    assert builtin["payload"]["kwargs"]["months_ahead"] == 4
    fourth = month_start(NOW, 4)
    assert fourth not in await partitions(conn, "pgsched.run")
    run = await trigger(conn, builtin["id"])
    async with login_role(dsn, "pgsched_worker") as worker_dsn:
        monkeypatch.setenv("DATABASE_URL", worker_dsn)  # run_builtin connects here
        async with running_worker(worker_dsn):
            done = await wait_state(conn, run["id"], {"succeeded", "dead"}, within=30)
    assert done["state"] == "succeeded", done["outcome"]
    assert fourth in await partitions(conn, "pgsched.run")
    assert fourth in await partitions(conn, "pgsched.event")


async def test_the_migration_turns_the_stored_sql_builtin_into_the_python_job(
    empty_dsn: str,
) -> None:
    """A database whose built-in schedule is the sql job of 0015 gets the python job, with the
    same retention, as an ordinary schedule.updated event (verify stays clean)."""
    migrate(empty_dsn, "0015")
    conn = await connect(empty_dsn)
    try:
        payload = {
            "statement": "SELECT * FROM pgsched.maintain_v2(%s::int,"
            " make_interval(days => %s::int), make_interval(days => %s::int))",
            "params": [4, 31, 92],
        }
        # As 0015's code stored it: only the columns that schema has (today's create_schedule
        # names columns added since), the rest their defaults, and schedule.created the row.
        cur = await conn.execute(
            "WITH s AS (INSERT INTO pgsched.schedule (name, job_type, payload, kind, cron,"
            " timeout_seconds, created_at, updated_at)"
            " VALUES (%s, 'sql', %s, 'cron', '7 * * * *', 600, now(), now()) RETURNING *),"
            " ev AS (INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'schedule', s.id, 'schedule.created', 'pgsched', to_jsonb(s) FROM s)"
            " SELECT * FROM s",
            [maintenance.BUILTIN_NAME, Jsonb(payload)],
        )
        old = await cur.fetchone()
        assert old is not None
        migrate(empty_dsn)
        new = await store.get_schedule(conn, old["id"])
        assert new is not None
        # Two updates: 0016 makes it the python job, 0018 moves the job's import path (ADR 0023).
        assert (new["job_type"], new["version"]) == ("python", old["version"] + 2)
        assert new["payload"] == {
            "target": maintenance.BUILTIN_TARGET,
            "kwargs": {"months_ahead": 4, "run_days": 31, "event_days": 92},
        }
        assert await replay.verify(conn) == []
        # What `pgsched ticker` then finds is what it would install: nothing to change.
        same = await maintenance.ensure_builtin_schedule(
            conn, maintenance.Retention(4, 31, 92), now=None
        )
        assert same["version"] == new["version"]
    finally:
        await conn.close()
