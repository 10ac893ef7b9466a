"""The ticker: due occurrences become runs exactly once; missed ones follow the policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from pgsched.app import ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from tests.conftest import connect
from tests.factories import clear_of_month_ends, make_schedule

# A whole minute a day clear of month ends, so runs and events from T - 30 min on have a partition.
T = clear_of_month_ends(datetime.now(UTC).replace(second=0, microsecond=0))
MIN = timedelta(minutes=1)


# `conn` here is the rolled-back tier (tests/conftest.py, `tx`): each test using it runs on one
# connection with explicit instants (its NOTIFYs are dropped at the rollback, unheard). The tests
# of concurrent tickers and of NOTIFY take `dsn`, a database of their own.
pytestmark = pytest.mark.tx


async def _runs(conn: Conn, schedule_id: int) -> list[tuple[datetime, str]]:
    cur = await conn.execute(
        "SELECT due_at, origin FROM pgsched.run WHERE schedule_id = %s ORDER BY due_at",
        [schedule_id],
    )
    return [(r["due_at"], r["origin"]) for r in await cur.fetchall()]


async def _missed(conn: Conn, schedule_id: int) -> list[tuple[datetime, str]]:
    cur = await conn.execute(
        "SELECT (meta->>'due_at')::timestamptz AS due_at, meta->>'reason' AS reason "
        "FROM pgsched.event WHERE type = 'schedule.occurrence_missed' AND stream_id = %s "
        "ORDER BY 1",
        [schedule_id],
    )
    return [(r["due_at"], r["reason"]) for r in await cur.fetchall()]


async def test_due_occurrences_become_runs_once(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, interval_seconds=60)
    assert s["next_due_at"] == T
    first = await ticker.tick(conn, now=T)
    assert (first.created, await _runs(conn, s["id"])) == (1, [(T, "schedule")])
    again = await ticker.tick(conn, now=T)
    assert again.created == 0 and again.schedules == 0
    # 2 min 30 s later: T+1 and T+2 are due (T+2 within grace), T+3 is not yet.
    later = await ticker.tick(conn, now=T + 2.5 * MIN)
    assert later.created == 2
    assert [d for d, _ in await _runs(conn, s["id"])] == [T, T + MIN, T + 2 * MIN]
    cur = await conn.execute("SELECT next_due_at FROM pgsched.schedule WHERE id = %s", [s["id"]])
    assert await cur.fetchone() == {"next_due_at": T + 3 * MIN}
    assert await replay.verify(conn) == []


async def test_look_ahead_materialises_just_before_the_due_instant(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, interval_seconds=60)
    await ticker.tick(conn, now=T)
    almost = await ticker.tick(conn, now=T + MIN - timedelta(milliseconds=500))
    assert almost.created == 1, "within the 1 s look-ahead"
    (run,) = [r for r in await _runs(conn, s["id"]) if r[0] == T + MIN]
    assert run == (T + MIN, "schedule")
    cur = await conn.execute("SELECT available_at FROM pgsched.run WHERE due_at = %s", [T + MIN])
    assert await cur.fetchone() == {"available_at": T + MIN}, "not claimable before it is due"
    too_early = await ticker.tick(conn, now=T + 2 * MIN - timedelta(seconds=2))
    assert too_early.created == 0


async def test_concurrent_tickers_never_double_an_occurrence(dsn: str) -> None:
    setup = await connect(dsn)
    try:
        for _ in range(200):
            await make_schedule(
                setup, now=T - 30 * MIN, interval_seconds=60, missed_policy="all", missed_cap=100
            )
    finally:
        await setup.close()
    conns = [await connect(dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(ticker.tick(c, now=T, batch=7, actor=f"ticker:{i}") for i, c in enumerate(conns))
        )
        cur = await conns[0].execute(
            "SELECT count(*) AS n, count(DISTINCT (schedule_id, due_at)) AS d FROM pgsched.run"
        )
        counts = await cur.fetchone()
        # 200 schedules x 31 occurrences (T-30 .. T), each exactly once, shared among tickers.
        assert counts == {"n": 200 * 31, "d": 200 * 31}
        assert sum(r.created for r in results) == 200 * 31
        assert all(r.schedules > 0 for r in results), "SKIP LOCKED spreads the batches"
        assert await replay.verify(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


@pytest.mark.parametrize(
    ("policy", "cap", "runs", "missed"),
    [
        # Down since T-5; now is T+1s, grace 60 s: T-1 is 61 s late (missed), T is on time.
        (
            "skip",
            100,
            [(0, "schedule")],
            [(-5, "skip"), (-4, "skip"), (-3, "skip"), (-2, "skip"), (-1, "skip")],
        ),
        (
            "latest",
            100,
            [(-1, "catchup"), (0, "schedule")],
            [(-5, "superseded"), (-4, "superseded"), (-3, "superseded"), (-2, "superseded")],
        ),
        (
            "all",
            3,
            [(-3, "catchup"), (-2, "catchup"), (-1, "catchup"), (0, "schedule")],
            [(-5, "over_cap"), (-4, "over_cap")],
        ),
        (
            "all",
            100,
            [
                (-5, "catchup"),
                (-4, "catchup"),
                (-3, "catchup"),
                (-2, "catchup"),
                (-1, "catchup"),
                (0, "schedule"),
            ],
            [],
        ),
    ],
)
async def test_missed_policies(
    conn: Conn,
    policy: str,
    cap: int,
    runs: list[tuple[int, str]],
    missed: list[tuple[int, str]],
) -> None:
    s = await make_schedule(
        conn,
        now=T - 5 * MIN,
        interval_seconds=60,
        missed_policy=policy,
        missed_cap=cap,
        grace_seconds=60,
    )
    await ticker.tick(conn, now=T + timedelta(seconds=1))
    assert await _runs(conn, s["id"]) == [(T + k * MIN, o) for k, o in runs]
    assert await _missed(conn, s["id"]) == [(T + k * MIN, r) for k, r in missed]
    assert await replay.verify(conn) == []


async def test_grace_boundary_is_inclusive(conn: Conn) -> None:
    """An occurrence exactly `grace` old is on time; one second more and it is missed."""
    on_time = await make_schedule(
        conn, now=T - MIN, interval_seconds=3600, missed_policy="skip", grace_seconds=60
    )
    late = await make_schedule(
        conn,
        now=T - MIN - timedelta(seconds=1),
        interval_seconds=3600,
        missed_policy="skip",
        grace_seconds=60,
    )
    await ticker.tick(conn, now=T)
    assert await _runs(conn, on_time["id"]) == [(T - MIN, "schedule")]
    assert await _runs(conn, late["id"]) == []
    assert await _missed(conn, late["id"]) == [(T - MIN - timedelta(seconds=1), "skip")]


async def test_paused_schedule_materialises_nothing_and_resume_applies_the_policy(
    conn: Conn,
) -> None:
    s = await make_schedule(conn, now=T - 10 * MIN, interval_seconds=60, missed_policy="latest")
    await ticker.tick(conn, now=T - 10 * MIN)
    await store.update_schedule(
        conn,
        s["id"],
        {"enabled": False, "paused_at": T - 9 * MIN},
        event_type="schedule.paused",
        actor="op",
        now=T - 9 * MIN,
    )
    paused = await ticker.tick(conn, now=T)
    assert paused.created == 0 and paused.schedules == 0
    await store.update_schedule(
        conn,
        s["id"],
        {"enabled": True, "paused_at": None},
        event_type="schedule.resumed",
        actor="op",
        now=T,
    )
    await ticker.tick(conn, now=T)
    assert await _runs(conn, s["id"]) == [
        (T - 10 * MIN, "schedule"),
        (T - 2 * MIN, "catchup"),  # the latest late one
        (T - MIN, "schedule"),  # exactly `grace` old: on time
        (T, "schedule"),
    ]
    assert len(await _missed(conn, s["id"])) == 7  # T-9 .. T-3, superseded by T-2
    assert await replay.verify(conn) == []


async def test_one_off_runs_once_and_is_done(conn: Conn) -> None:
    s = await make_schedule(conn, now=T - MIN, kind="once", interval_seconds=None, run_at=T)
    await ticker.tick(conn, now=T)
    await ticker.tick(conn, now=T + 10 * MIN)
    assert await _runs(conn, s["id"]) == [(T, "schedule")]
    cur = await conn.execute("SELECT next_due_at FROM pgsched.schedule WHERE id = %s", [s["id"]])
    assert await cur.fetchone() == {"next_due_at": None}


async def test_jitter_is_deterministic_and_bounded(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, interval_seconds=60, jitter_seconds=30)
    await ticker.tick(conn, now=T + 5 * MIN)
    cur = await conn.execute(
        "SELECT due_at, available_at FROM pgsched.run WHERE schedule_id = %s", [s["id"]]
    )
    rows = await cur.fetchall()
    assert rows
    offsets = [r["available_at"] - r["due_at"] for r in rows]
    assert all(timedelta(0) <= o <= timedelta(seconds=30) for o in offsets)
    row = await store.get_schedule(conn, s["id"])
    assert row is not None
    planned = ticker.plan({**row, "next_due_at": T}, T + 5 * MIN, T + 5 * MIN)
    assert {d: a for d, a, _ in planned.runs} == {r["due_at"]: r["available_at"] for r in rows}


async def test_tick_notifies_workers_once_per_batch(dsn: str) -> None:
    listener = await connect(dsn)
    writer = await connect(dsn)
    try:
        await listener.execute("LISTEN pgsched_runs")
        for _ in range(5):
            await make_schedule(writer, now=T, interval_seconds=60)
        result = await ticker.tick(writer, now=T, batch=2)
        assert result.batches == 3
        got = [n async for n in listener.notifies(timeout=1.0)]
        assert len(got) == 3
    finally:
        await listener.close()
        await writer.close()


def _kolkata_hour_opposite(t: datetime) -> int:
    """The Asia/Kolkata hour twelve hours away from t (a fixed '30 2' once made this test
    fail whenever CI ran near 21:00 UTC, when that daily occurrence fell inside the window)."""
    return (t + timedelta(hours=5, minutes=30) + timedelta(hours=12)).hour


async def test_grouped_batch_equals_planning_each_schedule_alone(conn: Conn) -> None:
    """lock_due_groups plans alike schedules once: the runs, misses and next due times must be
    exactly what plan() gives each schedule on its own (jitter and interval anchors included)."""
    shapes: list[dict[str, object]] = [
        {"kind": "cron", "cron": "* * * * *", "interval_seconds": None},
        {"kind": "cron", "cron": "*/5 * * * *", "interval_seconds": None},
        {  # daily, twelve hours from T, so it is never due in this test's window
            "kind": "cron",
            "cron": f"30 {_kolkata_hour_opposite(T)} * * *",
            "interval_seconds": None,
            "timezone": "Asia/Kolkata",
        },
        {"kind": "interval", "interval_seconds": 90},
        {
            "kind": "interval",
            "interval_seconds": 90,
            "starts_at": T - 45 * MIN + timedelta(seconds=7),
        },
        {"kind": "cron", "cron": "* * * * *", "interval_seconds": None, "jitter_seconds": 40},
        {
            "kind": "cron",
            "cron": "* * * * *",
            "interval_seconds": None,
            "missed_policy": "all",
            "missed_cap": 3,
        },
        {"kind": "cron", "cron": "* * * * *", "interval_seconds": None, "missed_policy": "skip"},
    ]
    made = [
        await make_schedule(conn, now=T - 30 * MIN - timedelta(seconds=k), **shape)
        for k in range(4)
        for shape in shapes
    ]
    now = T + 10 * MIN
    horizon = now + ticker.DEFAULT_LOOKAHEAD
    expected = {}
    for s in made:
        row = await store.get_schedule(conn, s["id"])
        assert row is not None
        if row["next_due_at"] <= horizon:  # the daily one is not due yet
            expected[s["id"]] = ticker.plan(row, now, horizon)

    result = await ticker.tick(conn, now=now)

    assert result.schedules == len(expected) == len(made) - 4
    for s in made:
        if s["id"] not in expected:
            assert await _runs(conn, s["id"]) == []
            continue
        plan = expected[s["id"]]
        cur = await conn.execute(
            "SELECT due_at, available_at, origin FROM pgsched.run WHERE schedule_id = %s"
            " ORDER BY due_at",
            [s["id"]],
        )
        got = [(r["due_at"], r["available_at"], r["origin"]) for r in await cur.fetchall()]
        assert got == plan.runs, s
        assert await _missed(conn, s["id"]) == sorted(plan.missed)
        row = await store.get_schedule(conn, s["id"])
        assert row is not None and row["next_due_at"] == plan.next_due_at
    # The four copies of each jittered shape drew their own offsets: one plan per schedule.
    jittered = {tuple(r for r in expected[s["id"]].runs) for s in made if s["jitter_seconds"] > 0}
    assert len(jittered) == 4
    assert await replay.verify(conn) == []


async def test_tickers_together_share_a_boundary_exactly_once(dsn: str) -> None:
    conns = [await connect(dsn) for _ in range(3)]
    try:
        made = [await make_schedule(conns[0], now=T, interval_seconds=60) for _ in range(300)]
        result = await ticker.tick_together(conns, now=T, batch=20)
        assert (result.schedules, result.created, result.duplicates) == (300, 300, 0)
        assert result.batches >= 15
        cur = await conns[0].execute(
            "SELECT count(*) AS runs, count(DISTINCT schedule_id) AS schedules FROM pgsched.run"
        )
        assert await cur.fetchone() == {"runs": 300, "schedules": len(made)}
        again = await ticker.tick_together(conns, now=T)
        assert again.created == 0
        assert await replay.verify(conns[0]) == []
    finally:
        for c in conns:
            await c.close()
