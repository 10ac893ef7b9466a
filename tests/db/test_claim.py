"""Claiming: each run exactly once, never more than asked, and concurrency limits hold."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease
from tests.conftest import connect
from tests.factories import clear_of_month_ends, make_schedule
from tests.support import store as test_store

# A day clear of month ends: runs from T - 5.5 h to T + 83 min stay in T's existing partition.
T = clear_of_month_ends(datetime.now(UTC).replace(second=0, microsecond=0))


# `conn` here is the rolled-back tier (tests/conftest.py, `tx`): each test using it claims on one
# connection at explicit instants. The tests of concurrent claimers take `dsn`; the tests of
# query plans are `own_database`: the shared database's earlier (rolled-back) tests leave dead
# rows and statistics behind that would sway the planner.
pytestmark = pytest.mark.tx


async def _waiting_runs(conn: Conn, schedule_id: int, n: int) -> None:
    dues = [T - timedelta(seconds=k) for k in range(n)]
    await store.insert_runs(
        conn, [(schedule_id, d, d) for d in dues], origin="backfill", actor="t", now=T
    )


async def _claim(conn: Conn, n: int, worker: int = 1) -> list[dict[str, object]]:
    return await test_store.claim_runs(
        conn,
        worker_id=worker,
        queues=["default"],
        limit=n,
        lease_seconds=600,
        actor=f"w{worker}",
        now=T,
    )


async def _running(conn: Conn, schedule_id: int) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM pgsched.run WHERE schedule_id = %s AND state = 'running'",
        [schedule_id],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize("statements", ["limits", "open", "mixed"])
async def test_eight_claimers_take_5000_runs_each_exactly_once(dsn: str, statements: str) -> None:
    """Eight connections claim at once until nothing is left, with the limits-checked claim
    (lock_limits + claim_runs), the lean one the worker sends while nothing is limited
    (claim_open_runs, ADR 0019), or both racing (each claimer alternates). The runs are in two
    queues, so each claim's search merges two index ranges and must still stop at its LIMIT."""
    setup = await connect(dsn)
    try:
        for k in range(5):
            s = await make_schedule(setup, now=T, queue=("default", "second")[k % 2])
            await _waiting_runs(setup, s["id"], 1000)
    finally:
        await setup.close()
    conns = [await connect(dsn) for _ in range(8)]
    claims: list[tuple[bool, list[int]]] = []

    async def claimer(i: int, conn: Conn) -> None:
        for n in itertools.count(i):
            limits = {"limits": True, "open": False, "mixed": n % 2 == 0}[statements]
            taken = await store.claim(
                conn,
                worker_id=i,
                queues=["default", "second"],
                limit=5,
                lease_seconds=600,
                actor=f"w{i}",
                now=T,
                limits=limits,
            )
            if not taken.rows:
                return
            claims.append((limits, [int(str(r["id"])) for r in taken.rows]))

    try:
        await asyncio.gather(*(claimer(i, c) for i, c in enumerate(conns)))
        ids = [run_id for _, batch in claims for run_id in batch]
        assert max(len(batch) for _, batch in claims) <= 5, "a claim returned more than asked"
        assert len(ids) == 5000 and len(set(ids)) == 5000, "every run exactly once"
        if statements == "mixed":
            assert {limits for limits, _ in claims} == {True, False}, "both statements claimed"
        cur = await conns[0].execute(
            "SELECT count(*) AS n, count(DISTINCT stream_id) AS runs FROM pgsched.event"
            " WHERE type = 'run.claimed'"
        )
        assert await cur.fetchone() == {"n": 5000, "runs": 5000}
        cur = await conns[0].execute(
            "SELECT count(*) AS n FROM pgsched.run WHERE state = 'running' AND attempt = 1"
        )
        assert await cur.fetchone() == {"n": 5000}, "each claimed once: attempt 1, not 2"
    finally:
        for c in conns:
            await c.close()


@pytest.mark.parametrize("limits", [True, False], ids=["limits", "open"])
async def test_claims_take_the_lowest_priority_number_first(conn: Conn, limits: bool) -> None:
    """ADR 0004: lower priority numbers run first, then the earliest available, across the
    queues a worker serves. The urgent runs here are the latest due and in the second queue;
    the background runs are the oldest due: neither due order nor queue order may decide."""
    background = await make_schedule(conn, now=T, priority=10)
    normal = await make_schedule(conn, now=T)  # priority 0
    urgent = await make_schedule(conn, now=T, priority=-5, queue="second")
    for s, minutes in ((background, 60), (normal, 30), (urgent, 0)):
        dues = [T - timedelta(minutes=minutes, seconds=k) for k in range(3)]
        await store.insert_runs(
            conn, [(s["id"], d, d) for d in dues], origin="backfill", actor="t", now=T
        )
    order: list[list[int]] = []
    taken_in_order: list[tuple[int, datetime]] = []
    while True:
        taken = await store.claim(
            conn,
            worker_id=1,
            queues=["default", "second"],
            limit=2,
            lease_seconds=600,
            actor="w1",
            now=T,
            limits=limits,
        )
        if not taken.rows:
            break
        order.append([int(r["priority"]) for r in taken.rows])
        taken_in_order += [(int(r["priority"]), r["available_at"]) for r in taken.rows]
    assert order == [[-5, -5], [-5, 0], [0, 0], [10, 10], [10]], order
    # Within a priority, the earliest available first.
    assert taken_in_order == sorted(taken_in_order), taken_in_order
    assert await replay.verify(conn) == []


async def test_max_concurrency_caps_running_runs(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, max_concurrency=2)
    await _waiting_runs(conn, s["id"], 5)
    first = await _claim(conn, 10)
    assert len(first) == 2
    assert await _claim(conn, 10) == [], "no free slot"
    await test_store.succeed_run(conn, Lease.of(first[0]), {"status": "ok"}, actor="w", now=T)
    assert len(await _claim(conn, 10)) == 1
    assert await _running(conn, s["id"]) == 2


async def test_overlap_queue_runs_one_at_a_time(conn: Conn) -> None:
    s = await make_schedule(conn, now=T, overlap_policy="queue")
    unlimited = await make_schedule(conn, now=T)
    await _waiting_runs(conn, s["id"], 3)
    await _waiting_runs(conn, unlimited["id"], 3)
    claimed = await _claim(conn, 10)
    by_schedule = [r["schedule_id"] for r in claimed]
    assert by_schedule.count(s["id"]) == 1 and by_schedule.count(unlimited["id"]) == 3


async def test_concurrent_claimers_respect_max_concurrency(dsn: str) -> None:
    setup = await connect(dsn)
    try:
        s = await make_schedule(setup, now=T, max_concurrency=3)
        await _waiting_runs(setup, s["id"], 50)
    finally:
        await setup.close()
    conns = [await connect(dsn) for _ in range(8)]
    try:
        for _ in range(5):  # several rounds of simultaneous claims
            await asyncio.gather(*(_claim(c, 5, worker=i) for i, c in enumerate(conns)))
            assert await _running(conns[0], s["id"]) == 3
        assert await replay.verify(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


@pytest.mark.own_database  # a plan: the shared database's leftovers would sway it
async def test_the_claim_reads_an_index_range_not_the_backlog(conn: Conn) -> None:
    """ADR 0004 (the claim's partial index) and bench/PEERS.md: with 20,000 finished runs and
    5,000 waiting runs not yet due, the claim must walk a partial index over waiting runs and
    stop after its LIMIT: no sequential scan of the month, no walk of its primary key."""
    s = await make_schedule(conn, now=T)
    await conn.execute(
        "INSERT INTO pgsched.run (schedule_id, due_at, origin, state, queue, priority,"
        " available_at, max_attempts, created_at)"
        " SELECT %s, %s - make_interval(secs => g), 'backfill', 'succeeded', 'default', 0,"
        " %s, 3, %s FROM generate_series(1, 20000) g",
        [s["id"], T, T, T],
    )
    await conn.execute(
        "INSERT INTO pgsched.run (schedule_id, due_at, origin, state, queue, priority,"
        " available_at, max_attempts, created_at)"
        " SELECT %s, %s + make_interval(secs => g), 'schedule', 'waiting', 'default', 0,"
        " %s + make_interval(secs => g), 3, %s FROM generate_series(1, 5000) g",
        [s["id"], T, T, T],
    )
    await _waiting_runs(conn, s["id"], 10)
    await conn.execute("ANALYZE pgsched.run")
    from pgsched.app.db.sql import query

    cur = await conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS OFF, TIMING OFF, COSTS OFF) " + query("claim_runs"),
        {
            "worker_id": 1,
            "queues": ["default"],
            "limit": 5,
            "lease_seconds": 60,
            "actor": "w",
            "now": T,
            "schedule_ids": [],
            "queue_names": [],
        },
    )
    plan = "\n".join(r["QUERY PLAN"] for r in await cur.fetchall())
    # The search for claimable runs (not the UPDATE that follows, which finds rows by key).
    plan = plan[plan.index("CTE open") : plan.index("CTE due")]
    month = f"run_y{T:%Y}m{T:%m}"
    assert f"Seq Scan on {month}" not in plan, plan
    assert f"{month}_pkey" not in plan, plan
    assert "run_claimable" in plan or f"{month}_queue_priority_available_at_id_idx" in plan, plan
    assert not re.search(r"->\s+(Incremental )?Sort \(", plan), "no Sort node: index order"


@pytest.mark.own_database  # a plan: the shared database's leftovers would sway it
async def test_a_backlog_across_a_month_boundary_is_read_in_index_order(conn: Conn) -> None:
    """The same at a month boundary: on the 1st, runs still waiting in last month's partition and
    the new month's runs are both claimable. With a backlog in each (20,000 + 20,000), the
    lean claim and the limits-checked claim must merge the two partitions' index ranges and
    stop after their LIMIT, never read or sort a month's backlog. (With a few thousand the
    planner may sort them instead: cheap, and its choice; this is the size where it matters.)"""
    following = (T.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
    now = following + timedelta(hours=1)
    s = await make_schedule(conn, now=T, enabled=False)
    for start, step in ((following - timedelta(hours=25), 0.5), (following, 0.05)):
        await conn.execute(
            "INSERT INTO pgsched.run (schedule_id, due_at, origin, state, queue, priority,"
            " available_at, max_attempts, created_at)"
            " SELECT %(s)s, %(start)s + make_interval(secs => g * %(step)s), 'schedule',"
            " 'waiting', 'default', 0, %(start)s + make_interval(secs => g * %(step)s), 3, %(t)s"
            " FROM generate_series(1, 20000) g",
            {"s": s["id"], "start": start, "step": step, "t": T},
        )
    await conn.execute("ANALYZE pgsched.run")
    from pgsched.app.db.sql import query

    params = {
        "worker_id": 1,
        "queues": ["default"],
        "limit": 10,
        "lease_seconds": 60,
        "actor": "w",
        "now": now,
        "schedule_ids": [],
        "queue_names": [],
    }
    for name, search_ends in (("claim_open_runs", "CTE claimed"), ("claim_runs", "CTE due")):
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS OFF, TIMING OFF, COSTS OFF) " + query(name), params
            )
            plan = "\n".join(r["QUERY PLAN"] for r in await cur.fetchall())
        search = plan[: plan.index(search_ends)]
        if name == "claim_runs":
            search = search[search.index("CTE open") :]
        scans = re.findall(r" on (run_y\d{4}m\d{2}) \w+ \(actual rows=(\d+)", search)
        months = {month for month, _ in scans}
        assert {f"run_y{T:%Y}m{T:%m}", f"run_y{following:%Y}m{following:%m}"} <= months, search
        assert "Seq Scan on run_" not in search, (name, search)
        # Each month's scan stops at the LIMIT: no month's backlog is read, so none is sorted.
        assert max(int(rows) for _, rows in scans) <= 10, (name, search)


async def test_queue_limit_caps_running_runs_across_schedules(conn: Conn) -> None:
    await store.set_queue_limit(conn, "default", 3, actor="op", now=T)
    for _ in range(3):
        s = await make_schedule(conn, now=T)
        await _waiting_runs(conn, s["id"], 4)
    assert len(await _claim(conn, 10)) == 3
    assert await _claim(conn, 10) == []
    await store.set_queue_limit(conn, "default", None, actor="op", now=T)
    assert len(await _claim(conn, 10)) == 9, "unlimited again"
    cur = await conn.execute(
        "SELECT meta FROM pgsched.event WHERE type = 'queue.updated' ORDER BY id"
    )
    assert [r["meta"] for r in await cur.fetchall()] == [
        {"queue": "default", "max_running": 3},
        {"queue": "default", "max_running": None},
    ]


async def test_queue_and_schedule_limits_both_hold(conn: Conn) -> None:
    await store.set_queue_limit(conn, "default", 4, actor="op", now=T)
    one_at_a_time = await make_schedule(conn, now=T, max_concurrency=1)
    free = await make_schedule(conn, now=T)
    await _waiting_runs(conn, one_at_a_time["id"], 5)
    await _waiting_runs(conn, free["id"], 5)
    claimed = await _claim(conn, 10)
    by_schedule = [r["schedule_id"] for r in claimed]
    assert len(claimed) <= 4
    assert by_schedule.count(one_at_a_time["id"]) <= 1


async def test_concurrent_claimers_respect_a_queue_limit(dsn: str) -> None:
    setup = await connect(dsn)
    try:
        await store.set_queue_limit(setup, "default", 5, actor="op", now=T)
        for _ in range(4):
            s = await make_schedule(setup, now=T)
            await _waiting_runs(setup, s["id"], 20)
    finally:
        await setup.close()
    conns = [await connect(dsn) for _ in range(8)]
    running: list[int] = []
    try:
        # Claimers that find the queue locked skip it for that call, so slots fill over rounds;
        # what must never happen is a sixth running run.
        for _ in range(4):
            await asyncio.gather(*(_claim(c, 3, worker=i) for i, c in enumerate(conns)))
            cur = await conns[0].execute(
                "SELECT count(*) AS n FROM pgsched.run WHERE state = 'running'"
            )
            running.append(int((await cur.fetchone() or {})["n"]))
        assert max(running) == 5 and running[-1] == 5, running
    finally:
        for c in conns:
            await c.close()


async def test_the_claim_without_the_limits_lock_leaves_limited_runs_alone(conn: Conn) -> None:
    """`limits=False` (a worker whose last look found no limits, ADR 0019) is one statement;
    it takes only runs no limit applies to, and says nothing was limited."""
    capped = await make_schedule(conn, now=T, max_concurrency=5)
    one_at_a_time = await make_schedule(conn, now=T, overlap_policy="queue")
    queued = await make_schedule(conn, now=T, queue="narrow")
    free = await make_schedule(conn, now=T)
    await store.set_queue_limit(conn, "narrow", 5, actor="t", now=T)
    for s in (capped, one_at_a_time, queued, free):
        await _waiting_runs(conn, s["id"], 3)

    async def claim(limits: bool) -> store.Claim:
        return await store.claim(
            conn,
            worker_id=1,
            queues=["default", "narrow"],
            limit=20,
            lease_seconds=600,
            actor="w1",
            now=T,
            limits=limits,
        )

    fast = await claim(limits=False)
    assert not fast.limited
    assert {r["schedule_id"] for r in fast.rows} == {free["id"]} and len(fast.rows) == 3
    full = await claim(limits=True)
    assert full.limited
    assert sorted(r["schedule_id"] for r in full.rows) == sorted(
        [capped["id"]] * 3 + [one_at_a_time["id"]] + [queued["id"]] * 3
    )
    assert await replay.verify(conn) == []


@pytest.mark.own_database  # a plan: the shared database's leftovers would sway it
async def test_the_next_due_time_is_one_index_probe_per_queue(conn: Conn) -> None:
    """An idle worker asks every poll interval how long until the next run becomes claimable:
    never a scan of the month's runs (migration 0013), and the answer is the earliest waiting
    run of its queues, by the database clock."""
    s = await make_schedule(conn, now=T)
    await conn.execute(
        "INSERT INTO pgsched.run (schedule_id, due_at, origin, state, queue, priority,"
        " available_at, max_attempts, created_at)"
        " SELECT %s, %s - make_interval(secs => g), 'backfill', 'succeeded', 'default', 0,"
        " %s, 3, %s FROM generate_series(1, 20000) g",
        [s["id"], T, T, T],
    )
    later = [T + timedelta(seconds=k) for k in (90, 30, 60)]
    await store.insert_runs(
        conn, [(s["id"], d, d) for d in later], origin="backfill", actor="t", now=T
    )
    await conn.execute("ANALYZE pgsched.run")
    from pgsched.app.db.sql import query

    params = {"queues": ["default", "other"], "now": T}
    assert await store.seconds_until_next_run(conn, ["default", "other"], now=T) == 30
    assert await store.seconds_until_next_run(conn, ["other"], now=T) is None
    cur = await conn.execute("EXPLAIN (COSTS OFF) " + query("seconds_until_next_run"), params)
    plan = "\n".join(r["QUERY PLAN"] for r in await cur.fetchall())
    assert "Seq Scan on run" not in plan, plan
    assert "run_next_available" in plan or "queue_available_at_idx" in plan, plan


@pytest.mark.own_database  # a plan: the shared database's leftovers would sway it
async def test_the_open_claim_and_the_full_claim_write_and_return_alike(conn: Conn) -> None:
    """claim_open_runs repeats claim_runs' UPDATE, event and result (ADR 0019): same columns
    back, same run.claimed data, and its search is an index range too."""
    s = await make_schedule(conn, now=T)
    await _waiting_runs(conn, s["id"], 4)

    async def take(limits: bool) -> list[dict[str, object]]:
        taken = await store.claim(
            conn,
            worker_id=1,
            queues=["default"],
            limit=2,
            lease_seconds=60,
            actor="w",
            now=T,
            limits=limits,
        )
        return taken.rows

    fast, full = await take(limits=False), await take(limits=True)
    assert len(fast) == len(full) == 2
    assert set(fast[0]) == set(full[0])
    cur = await conn.execute(
        "SELECT stream_id, data FROM pgsched.event WHERE type = 'run.claimed' ORDER BY id"
    )
    events = await cur.fetchall()
    assert [set(e["data"]) for e in events[:2]] == [set(e["data"]) for e in events[2:]]
    assert [e["stream_id"] for e in events] == [r["id"] for r in fast + full]
    from pgsched.app.db.sql import query

    cur = await conn.execute(
        "EXPLAIN (COSTS OFF) " + query("claim_open_runs"),
        {
            "worker_id": 1,
            "queues": ["default"],
            "limit": 5,
            "lease_seconds": 60,
            "actor": "w",
            "now": T,
        },
    )
    plan = "\n".join(r["QUERY PLAN"] for r in await cur.fetchall())
    search = plan[plan.index("CTE due") : plan.index("CTE claimed")]
    assert "Seq Scan on run" not in search and "queue_priority_available_at" in search, plan
    assert await replay.verify(conn) == []
