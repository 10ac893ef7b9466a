"""Operations on schedules: overlap policy, trigger-now, backfill, pause/resume/delete, preview."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from pgsched.app import ticker
from pgsched.app.db import replay
from pgsched.app.db.store import Conn, Lease
from pgsched.app.domain import errors, schedule
from pgsched.app.services import schedules
from tests.conftest import connect
from tests.factories import clear_of_month_ends, make_schedule
from tests.support import store as test_store

# A day clear of month ends: history from T - 10 min never reaches last month (no partition).
T = clear_of_month_ends(datetime.now(UTC).replace(second=0, microsecond=0))
MIN = timedelta(minutes=1)


# `conn` here is the rolled-back tier (tests/conftest.py, `tx`): each test using it runs on one
# connection with explicit instants and never commits. The idempotency-key race opens four
# connections, so it takes `dsn` (a database of its own).
pytestmark = pytest.mark.tx


async def _states(conn: Conn, schedule_id: int) -> list[tuple[datetime, str]]:
    cur = await conn.execute(
        "SELECT due_at, state FROM pgsched.run WHERE schedule_id = %s AND NOT adhoc "
        "ORDER BY due_at",
        [schedule_id],
    )
    return [(r["due_at"], r["state"]) for r in await cur.fetchall()]


async def _overlapped(conn: Conn, schedule_id: int) -> list[datetime]:
    cur = await conn.execute(
        "SELECT (meta->>'due_at')::timestamptz AS d FROM pgsched.event "
        "WHERE type = 'schedule.occurrence_missed' AND meta->>'reason' = 'overlap' "
        "AND stream_id = %s ORDER BY 1",
        [schedule_id],
    )
    return [r["d"] for r in await cur.fetchall()]


async def _claim(conn: Conn, at: datetime) -> list[dict[str, object]]:
    return await test_store.claim_runs(
        conn, worker_id=1, queues=["default"], limit=10, lease_seconds=600, actor="w", now=at
    )


# -- overlap --------------------------------------------------------------------------------


async def test_overlap_allow_creates_every_occurrence(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, overlap_policy="allow")
    await ticker.tick(conn, now=T)
    await _claim(conn, T)  # T is running
    await ticker.tick(conn, now=T + MIN)
    await ticker.tick(conn, now=T + 2 * MIN)
    assert [st for _, st in await _states(conn, s["id"])] == ["running", "waiting", "waiting"]


async def test_overlap_skip_refuses_while_a_run_is_waiting_or_running(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, overlap_policy="skip")
    await ticker.tick(conn, now=T)  # T waiting
    await ticker.tick(conn, now=T + MIN)  # T still waiting: T+1 refused
    (claimed,) = await _claim(conn, T + MIN)  # T running
    await ticker.tick(conn, now=T + 2 * MIN)  # T running: T+2 refused
    await test_store.succeed_run(
        conn, Lease.of(claimed), {"status": "ok"}, actor="w", now=T + 2 * MIN
    )
    await ticker.tick(conn, now=T + 3 * MIN)  # nothing active: T+3 runs
    assert await _states(conn, s["id"]) == [(T, "succeeded"), (T + 3 * MIN, "waiting")]
    assert await _overlapped(conn, s["id"]) == [T + MIN, T + 2 * MIN]
    assert await replay.verify(conn) == []


async def test_overlap_queue_buffers_one_behind_the_running_run(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, overlap_policy="queue")
    await ticker.tick(conn, now=T)
    await _claim(conn, T)  # T running
    await ticker.tick(conn, now=T + MIN)  # buffered
    await ticker.tick(conn, now=T + 2 * MIN)  # one already buffered: refused
    assert await _states(conn, s["id"]) == [(T, "running"), (T + MIN, "waiting")]
    assert await _overlapped(conn, s["id"]) == [T + 2 * MIN]


async def test_overlap_skip_with_catch_up_keeps_only_the_first_of_a_batch(conn: Conn) -> None:
    s = await make_schedule(
        conn, now=T - 3 * MIN, overlap_policy="skip", missed_policy="all", grace_seconds=0
    )
    await ticker.tick(conn, now=T)
    assert await _states(conn, s["id"]) == [(T - 3 * MIN, "waiting")]
    assert await _overlapped(conn, s["id"]) == [T - 2 * MIN, T - MIN, T]


# -- trigger --------------------------------------------------------------------------------


async def test_trigger_creates_an_ad_hoc_run_now(conn: Conn) -> None:
    s = await make_schedule(conn, now=T)
    run, created = await schedules.trigger(conn, s["id"], actor="op", now=T + timedelta(seconds=7))
    assert created
    assert (run["origin"], run["adhoc"], run["due_at"]) == (
        "trigger",
        True,
        T + timedelta(seconds=7),
    )
    await ticker.tick(conn, now=T)  # the occurrence at T is separate from an ad-hoc run at T
    await schedules.trigger(conn, s["id"], actor="op", now=T)
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.run WHERE due_at = %s", [T])
    assert await cur.fetchone() == {"n": 2}


async def test_trigger_with_the_same_idempotency_key_returns_the_first_run(dsn: str) -> None:
    conns = [await connect(dsn) for _ in range(4)]
    try:
        s = await make_schedule(conns[0], now=T)
        results = await asyncio.gather(
            *(
                schedules.trigger(c, s["id"], actor="op", now=None, idempotency_key="abc")
                for c in conns
            )
        )
        assert len({run["id"] for run, _ in results}) == 1
        assert sorted(created for _, created in results) == [False, False, False, True]
        other, created = await schedules.trigger(
            conns[0], s["id"], actor="op", now=None, idempotency_key="other"
        )
        assert created and other["id"] != results[0][0]["id"]
        assert other["idempotency_key"] == "other"
    finally:
        for c in conns:
            await c.close()


async def test_trigger_unknown_schedule_and_bad_key(conn: Conn) -> None:
    with pytest.raises(errors.NotFound):
        await schedules.trigger(conn, 999_999, actor="op", now=T)
    s = await make_schedule(conn, now=T)
    with pytest.raises(errors.InvalidRequest) as err:
        await schedules.trigger(conn, s["id"], actor="op", now=T, idempotency_key="")
    assert err.value.field == "Idempotency-Key"


# -- backfill -------------------------------------------------------------------------------


async def test_backfill_is_idempotent_half_open_and_recorded(conn: Conn) -> None:
    s = await make_schedule(
        conn,
        now=T - 10 * MIN,
        kind="cron",
        cron="*/2 * * * *",
        interval_seconds=None,
        enabled=False,
    )
    start = T - 10 * MIN
    first = await schedules.backfill(conn, s["id"], start, T, actor="op", now=T)
    # [T-10, T): even minutes only if T is even; count from the function itself.
    expected = [t for t in (start + k * MIN for k in range(10)) if t.minute % 2 == 0]
    assert first.requested == len(expected) and len(first.created) == len(expected)
    again = await schedules.backfill(conn, s["id"], start, T, actor="op", now=T)
    assert (again.requested, again.created) == (len(expected), [])
    cur = await conn.execute(
        "SELECT due_at FROM pgsched.run WHERE schedule_id = %s AND origin = 'backfill' ORDER BY 1",
        [s["id"]],
    )
    assert [r["due_at"] for r in await cur.fetchall()] == expected
    cur = await conn.execute(
        "SELECT meta->>'requested' AS req, meta->>'created' AS made, actor FROM pgsched.event "
        "WHERE type = 'schedule.backfilled' ORDER BY id"
    )
    assert await cur.fetchall() == [
        {"req": str(len(expected)), "made": str(len(expected)), "actor": "op"},
        {"req": str(len(expected)), "made": "0", "actor": "op"},
    ]
    assert await replay.verify(conn) == []


@pytest.mark.parametrize(
    ("start", "end", "cap", "field"),
    [
        (T, T - MIN, 1000, "to"),  # empty range
        (T - 5 * MIN, T + MIN, 1000, "to"),  # into the future
        (T - 5 * MIN, T, 3, "to"),  # 5 occurrences over a cap of 3
    ],
)
async def test_backfill_refuses_bad_ranges(
    conn: Conn, start: datetime, end: datetime, cap: int, field: str
) -> None:
    s = await make_schedule(conn, now=T - 10 * MIN)
    with pytest.raises(errors.InvalidRequest) as err:
        await schedules.backfill(conn, s["id"], start, end, actor="op", now=T, cap=cap)
    assert err.value.field == field
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.run")
    assert await cur.fetchone() == {"n": 0}


async def test_backfill_exactly_at_the_cap_is_accepted(conn: Conn) -> None:
    s = await make_schedule(conn, now=T - 10 * MIN)
    done = await schedules.backfill(conn, s["id"], T - 3 * MIN, T, actor="op", now=T, cap=3)
    assert done.requested == 3


# -- pause, resume, delete, preview ---------------------------------------------------------


async def test_pause_resume_delete_record_events_and_are_idempotent(conn: Conn) -> None:
    s = await make_schedule(conn, now=T)
    paused = await schedules.pause(conn, s["id"], actor="op", now=T)
    assert (paused["enabled"], paused["paused_at"]) == (False, T)
    assert (await schedules.pause(conn, s["id"], actor="op", now=T))["version"] == paused["version"]
    resumed = await schedules.resume(conn, s["id"], actor="op", now=T + MIN)
    assert (resumed["enabled"], resumed["paused_at"]) == (True, None)
    deleted = await schedules.delete(conn, s["id"], actor="op", now=T + MIN)
    assert deleted["deleted_at"] == T + MIN
    with pytest.raises(errors.NotFound):
        await schedules.resume(conn, s["id"], actor="op", now=T)
    # The name is free again after a soft delete.
    await make_schedule(conn, now=T, name=s["name"])
    cur = await conn.execute(
        "SELECT type FROM pgsched.event WHERE stream = 'schedule' AND stream_id = %s ORDER BY id",
        [s["id"]],
    )
    assert [r["type"] for r in await cur.fetchall()] == [
        "schedule.created",
        "schedule.paused",
        "schedule.resumed",
        "schedule.deleted",
    ]
    assert await replay.verify(conn) == []


async def test_preview_uses_the_occurrence_function(conn: Conn) -> None:
    s = await make_schedule(
        conn,
        now=T,
        kind="cron",
        cron="30 2 * * *",
        interval_seconds=None,
        timezone="America/New_York",
    )
    times = schedule.preview(s, datetime(2026, 3, 7, tzinfo=UTC), 3)
    # 2026-03-08 is spring forward in New York: 02:30 does not exist and runs at 03:00 EDT.
    assert times == [
        datetime(2026, 3, 7, 7, 30, tzinfo=UTC),
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),
    ]
    with pytest.raises(errors.InvalidRequest):
        schedule.preview(s, T, 0)
    with pytest.raises(errors.InvalidRequest):
        schedule.preview(s, T, schedule.MAX_PREVIEW + 1)
