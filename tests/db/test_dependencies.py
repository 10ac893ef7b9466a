"""Schedule dependencies (ADR 0033) over simulated days: the ticker holds a downstream's run
until its upstreams' runs of the period succeeded, skips it with the reason when the wait times
out; cycles and unknown upstreams are refused by name; the log folds back exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgsched.app import ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Row
from pgsched.app.domain import schedule
from pgsched.app.domain.errors import HasDependents, InvalidDefinition
from pgsched.app.services import schedules
from tests.factories import clear_of_month_ends
from tests.support.store import claim_runs, fail_run, succeed_run

# The first whole hour after now, with two days of the month on either side: a simulated day
# of runs and events stays inside partitions a fresh database has.
H0 = clear_of_month_ends(
    datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1),
    timedelta(days=2),
)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)

pytestmark = pytest.mark.tx

CHAIN = {"a": [], "b": ["a"], "c": ["b"]}
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


async def _define(conn: Conn, name: str, *, now: datetime = H0 - SECOND, **over: Any) -> Row:
    fields = {"name": name, "job_type": "noop", "cron": "0 * * * *", **over}
    return await schedules.create(conn, fields | schedule.timing(fields), actor="test", now=now)


async def _define_graph(conn: Conn, graph: Mapping[str, Sequence[str]], **over: Any) -> None:
    for name, upstreams in graph.items():  # upstreams first: the dicts list them so
        await _define(conn, name, depends_on=list(upstreams), **over)


async def _work(conn: Conn, at: datetime, *, failing: frozenset[str] = frozenset()) -> datetime:
    """Tick and run what is claimable, a round a second from `at`, until a round claims
    nothing: each round's claims succeed (or fail, for the schedules named in `failing`).
    Returns the instant of the last round."""
    t = at
    for _ in range(20):
        await ticker.tick(conn, now=t)
        claimed = await claim_runs(
            conn,
            worker_id=1,
            queues=["default"],
            limit=100,
            lease_seconds=60,
            actor="worker",
            now=t,
        )
        if not claimed:
            return t
        for run in claimed:
            lease = store.Lease.of(run)
            if run["schedule_name"] in failing:
                await fail_run(conn, lease, {"error": "boom"}, jitter=0, actor="worker", now=t)
            else:
                await succeed_run(conn, lease, {"status": "ok"}, actor="worker", now=t)
        t += SECOND
    raise AssertionError("the runs never settled")


async def _runs(conn: Conn) -> dict[tuple[str, datetime], Row]:
    cur = await conn.execute(
        "SELECT s.name, r.* FROM pgsched.run r JOIN pgsched.schedule s ON s.id = r.schedule_id "
        "WHERE s.name <> 'pgsched.maintenance'"
    )
    return {(r["name"], r["due_at"]): r for r in await cur.fetchall()}


async def _event_count(conn: Conn, kind: str) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event WHERE type = %s", [kind])
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize("graph", [CHAIN, DIAMOND], ids=["chain", "diamond"])
async def test_a_graph_runs_in_order_every_hour_of_a_simulated_day(
    conn: Conn, graph: Mapping[str, Sequence[str]]
) -> None:
    await _define_graph(conn, graph)
    for hour in range(24):
        await _work(conn, H0 + hour * HOUR)
    runs = await _runs(conn)
    assert len(runs) == 24 * len(graph)
    assert {r["state"] for r in runs.values()} == {"succeeded"}
    for hour in range(24):
        due = H0 + hour * HOUR
        for name, upstreams in graph.items():
            for upstream in upstreams:
                before, after = runs[(upstream, due)], runs[(name, due)]
                assert before["finished_at"] <= after["started_at"], (name, upstream, due)
                assert before["started_at"] < after["started_at"]
    dependent = sum(1 for upstreams in graph.values() if upstreams)
    assert await _event_count(conn, "run.blocked") == 24 * dependent
    assert await _event_count(conn, "run.unblocked") == 24 * dependent
    assert await replay.verify(conn) == []


async def test_a_downstream_waits_for_every_upstream_run_of_its_period(conn: Conn) -> None:
    """Upstream every 15 minutes, downstream hourly: the period of the downstream's 11:00 is
    (10:00, 11:00], so it waits for the upstream's 10:15, 10:30, 10:45 and 11:00 (its 10:00,
    the first after both were created, waits for the upstream's 10:00 alone)."""
    quarter = timedelta(minutes=15)
    await _define(conn, "often", cron="*/15 * * * *", max_attempts=1)
    hourly = await _define(conn, "hourly", depends_on=["often"], dependency_timeout_seconds=600)
    await _work(conn, H0)
    first = (await _runs(conn))[("hourly", H0)]
    assert first["state"] == "succeeded"
    assert [w["due_at"] for w in first["waits_for"]] == [H0.isoformat()]
    await _work(conn, H0 + quarter)
    await _work(conn, H0 + 2 * quarter)
    await _work(conn, H0 + 3 * quarter, failing=frozenset({"often"}))
    await _work(conn, H0 + HOUR)
    run = (await _runs(conn))[("hourly", H0 + HOUR)]
    assert run["state"] == "blocked", "10:45 failed"
    assert [w["due_at"] for w in run["waits_for"]] == [
        (H0 + m * quarter).isoformat() for m in range(1, 5)
    ]
    # The timeout counts from the period's end (the due time), not from the first upstream.
    assert run["wait_until"] == H0 + HOUR + 600 * SECOND
    await _work(conn, H0 + HOUR + 600 * SECOND)
    skipped = (await _runs(conn))[("hourly", H0 + HOUR)]
    assert skipped["state"] == "skipped"
    assert skipped["outcome"]["upstream"]["due_at"] == (H0 + 3 * quarter).isoformat()
    assert skipped["outcome"]["upstream"]["state"] == "dead"
    assert hourly["depends_on"] == [(await store.schedules.live_schedule_id(conn, "often"))]
    assert await replay.verify(conn) == []


async def test_a_run_with_nothing_to_wait_for_is_never_blocked(conn: Conn) -> None:
    """An hourly downstream of a daily upstream: only the hour holding the upstream's
    occurrence waits; the others stay waiting from the start (no run.blocked, no latency)."""
    await _define(conn, "daily", cron=f"{H0.minute} {(H0 + 2 * HOUR).hour} * * *")
    await _define(conn, "hourly", depends_on=["daily"])
    result = await ticker.tick(conn, now=H0)
    assert result.blocked == 0
    assert (await _runs(conn))[("hourly", H0)]["state"] == "waiting"
    assert await _event_count(conn, "run.blocked") == 0
    await _work(conn, H0)
    await _work(conn, H0 + HOUR)
    result = await ticker.tick(conn, now=H0 + 2 * HOUR)
    assert result.blocked == 1, "the hour holding the daily occurrence waits for it"
    assert await _event_count(conn, "run.blocked") == 1
    assert await replay.verify(conn) == []


@pytest.mark.parametrize(("policy", "runs"), [("skip", 1), ("queue", 1), ("allow", 3)])
async def test_a_blocked_run_counts_for_the_overlap_policy(
    conn: Conn, policy: str, runs: int
) -> None:
    """A downstream whose upstream keeps failing: under `skip` or `queue` its next
    occurrences are refused while one run is blocked, rather than piling up blocked runs that
    would all be released at once."""
    await _define(conn, "a", max_attempts=1)
    await _define(
        conn, "b", depends_on=["a"], overlap_policy=policy, dependency_timeout_seconds=86400
    )
    for hour in range(3):
        await _work(conn, H0 + hour * HOUR, failing=frozenset({"a"}))
    held = [r for (name, _), r in (await _runs(conn)).items() if name == "b"]
    assert len(held) == runs and {r["state"] for r in held} == {"blocked"}
    assert await replay.verify(conn) == []


async def test_settling_locks_no_run_it_leaves_blocked(conn: Conn) -> None:
    """A run still waiting for its upstream is read, never locked (a row lock writes WAL at
    every tick of every ticker): its row carries no locker (xmax 0) after a settle."""
    await _define(conn, "a")
    await _define(conn, "b", depends_on=["a"])
    await ticker.tick(conn, now=H0)
    await ticker.tick(conn, now=H0 + SECOND)
    cur = await conn.execute(
        "SELECT r.state, r.xmax::text AS xmax FROM pgsched.run r"
        " JOIN pgsched.schedule s ON s.id = r.schedule_id WHERE s.name = 'b'"
    )
    assert await cur.fetchall() == [{"state": "blocked", "xmax": "0"}]


async def test_an_upstream_failure_makes_the_chain_wait_then_skip_with_the_reason(
    conn: Conn,
) -> None:
    await _define(conn, "a", max_attempts=1)
    await _define(conn, "b", depends_on=["a"], dependency_timeout_seconds=600)
    await _define(conn, "c", depends_on=["b"], dependency_timeout_seconds=900)
    await _work(conn, H0, failing=frozenset({"a"}))
    runs = await _runs(conn)
    assert [runs[(n, H0)]["state"] for n in "abc"] == ["dead", "blocked", "blocked"]
    # The ticker made b and c at H0 (its tick at H0): they wait until H0 + 600 s and + 900 s.
    await _work(conn, H0 + 599 * SECOND)
    assert (await _runs(conn))[("b", H0)]["state"] == "blocked"
    await _work(conn, H0 + 600 * SECOND)
    b = (await _runs(conn))[("b", H0)]
    assert b["state"] == "skipped" and b["finished_at"] == H0 + 600 * SECOND
    assert b["started_at"] is None and b["attempt"] == 0, "a skipped run never ran"
    a_run = (await _runs(conn))[("a", H0)]
    assert b["outcome"]["upstream"] == {
        "schedule_id": a_run["schedule_id"],
        "name": "a",
        "due_at": H0.isoformat(),
        "run_id": a_run["id"],
        "state": "dead",
    }
    assert "'a'" in b["outcome"]["error"] and b["outcome"]["error"].endswith(", dead")
    await _work(conn, H0 + 900 * SECOND)
    c = (await _runs(conn))[("c", H0)]
    assert c["state"] == "skipped"
    assert c["outcome"]["upstream"]["name"] == "b"
    assert c["outcome"]["upstream"]["state"] == "skipped"
    assert await _event_count(conn, "run.skipped") == 2
    assert await _event_count(conn, "run.unblocked") == 0
    assert await replay.verify(conn) == []
    # The log alone rebuilds the waits and the skips exactly.
    before = await _runs(conn)
    await replay.rebuild(conn)
    assert await _runs(conn) == before


async def test_a_blocked_run_is_never_claimed_and_an_operator_may_cancel_it(
    conn: Conn,
) -> None:
    await _define(conn, "a")
    await _define(conn, "b", depends_on=["a"])
    await ticker.tick(conn, now=H0)
    claimed = await claim_runs(
        conn, worker_id=1, queues=["default"], limit=100, lease_seconds=60, actor="w", now=H0
    )
    assert [r["schedule_name"] for r in claimed] == ["a"]
    b = (await _runs(conn))[("b", H0)]
    cancelled = await store.cancel_run(conn, b["id"], actor="operator", now=H0)
    assert cancelled is not None and cancelled["state"] == "cancelled"
    assert await replay.verify(conn) == []


async def test_a_cycle_of_three_is_refused_and_named(conn: Conn) -> None:
    a = await _define(conn, "a")
    await _define(conn, "b", depends_on=["a"])
    c = await _define(conn, "c", depends_on=["b"])
    with pytest.raises(InvalidDefinition) as refused:
        await schedules.update(
            conn, a["id"], {"depends_on": ["c"]}, if_match=None, actor="t", now=None
        )
    assert refused.value.field == "depends_on"
    assert refused.value.message == "would make a cycle: a -> c -> b -> a"
    with pytest.raises(InvalidDefinition, match=r"^would make a cycle: c -> c$"):
        await schedules.update(
            conn, c["id"], {"depends_on": [c["id"]]}, if_match=None, actor="t", now=None
        )
    # A diamond is no cycle: c may depend on a as well as on b.
    updated = await schedules.update(
        conn, c["id"], {"depends_on": ["b", a["id"]]}, if_match=None, actor="t", now=None
    )
    assert len(updated["depends_on"]) == 2
    assert await replay.verify(conn) == []


async def test_unknown_upstreams_and_job_definitions_are_refused_by_name(conn: Conn) -> None:
    with pytest.raises(InvalidDefinition, match=r"^'nope' is no live schedule$"):
        await _define(conn, "x", depends_on=["nope"])
    with pytest.raises(InvalidDefinition, match=r"^schedule 424242 is no live schedule$"):
        await _define(conn, "x", depends_on=[424242])
    await schedules.define_job(conn, "a-job", "noop", actor="t")
    with pytest.raises(InvalidDefinition, match="'a-job' is a job definition"):
        await _define(conn, "x", depends_on=["a-job"])


async def test_deleting_an_upstream_is_refused_with_its_dependents_named(conn: Conn) -> None:
    a = await _define(conn, "a")
    b = await _define(conn, "b", depends_on=["a"])
    await _define(conn, "c", depends_on=["a", "b"])
    with pytest.raises(HasDependents) as refused:
        await schedules.delete(conn, a["id"], actor="t", now=None)
    assert refused.value.dependents == ["b", "c"]
    assert "'b', 'c'" in str(refused.value)
    await schedules.update(conn, b["id"], {"depends_on": []}, if_match=None, actor="t", now=None)
    with pytest.raises(HasDependents, match="an upstream of 'c'"):
        await schedules.delete(conn, a["id"], actor="t", now=None)
    assert await replay.verify(conn) == []
