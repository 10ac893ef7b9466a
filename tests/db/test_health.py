"""Schedule health and the circuit breaker (ADR 0032): each threshold from both sides, the
transitions as events, the breaker at exactly N, and the projection that `verify` folds."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgsched.app import service
from pgsched.app.clock import FakeClock
from pgsched.app.db import outage, replay, store
from pgsched.app.db.sql import query
from pgsched.app.db.store import Conn, Lease, Row
from pgsched.app.services import runs as run_service
from pgsched.app.services import schedules
from tests.conftest import connect, migrate
from tests.db.roles import login_role
from tests.factories import clear_of_month_ends, make_schedule
from tests.support import store as test_store
from tests.support.worker import eventually

pytestmark = pytest.mark.tx

T = clear_of_month_ends(datetime.now(UTC).replace(microsecond=0), timedelta(days=2))
_queues = itertools.count(1)
# Thresholds that leave the other rules out of the way, so each test sees the one it tests.
QUIET = {"consecutive_failures": 1000, "failure_rate": 1.0, "window_runs": 1000,
         "overdue_seconds": None}  # fmt: skip


class Runs:
    """Runs of one schedule, each ended as told, one second apart on the database clock that
    the test moves (`at`)."""

    def __init__(self, conn: Conn, schedule: Row) -> None:
        self.conn, self.schedule, self.at = conn, schedule, T + timedelta(minutes=1)

    async def _claim(self) -> Lease:
        self.at += timedelta(seconds=1)
        (row,) = await test_store.claim_runs(
            self.conn,
            worker_id=1,
            queues=[self.schedule["queue"]],
            limit=1,
            lease_seconds=30,
            actor="w",
            now=self.at,
        )
        return Lease.of(row)

    async def end(self, *outcomes: str) -> None:
        """Each of `ok` (succeeded), `dead` (failed for good) or `retried` (failed, retried,
        then succeeded) is one run."""
        for outcome in outcomes:
            self.at += timedelta(seconds=1)
            await store.insert_runs(
                self.conn, [(self.schedule["id"], self.at, self.at)], origin="backfill",
                actor="t", now=self.at,
            )  # fmt: skip
            lease = await self._claim()
            if outcome == "retried":
                await test_store.fail_run(
                    self.conn, lease, {"status": "failed"}, jitter=0.0, actor="w", now=self.at
                )
                self.at += timedelta(hours=1)  # past the backoff
                lease = await self._claim()
            if outcome == "dead":
                await test_store.fail_run(
                    self.conn, lease, {"status": "failed"}, jitter=0.0, actor="w",
                    now=self.at, final=True,
                )  # fmt: skip
            else:
                await test_store.succeed_run(
                    self.conn, lease, {"status": "succeeded"}, actor="w", now=self.at
                )

    async def row(self) -> Row:
        return await schedules.live(self.conn, self.schedule["id"])


async def _runs(conn: Conn, *, policy: dict[str, Any] | None = None, **over: Any) -> Runs:
    fields = {"queue": f"health-{next(_queues)}", "max_attempts": 2, "retry_delay_seconds": 1.0}
    fields["health_policy"] = {**QUIET, **(policy or {})}
    s = await make_schedule(conn, now=T, **(fields | over))
    return Runs(conn, s)


async def _events(conn: Conn, schedule_id: int, *types: str) -> list[Row]:
    cur = await conn.execute(
        "SELECT type, actor, data, meta FROM pgsched.event"
        " WHERE stream = 'schedule' AND stream_id = %s AND type = ANY(%s) ORDER BY id",
        [schedule_id, list(types)],
    )
    return await cur.fetchall()


def _transitions(events: Sequence[Row]) -> list[tuple[str, str, str | None]]:
    return [(e["meta"]["from"], e["meta"]["to"], e["meta"]["reason"]) for e in events]


# -- consecutive failures ----------------------------------------------------------------


async def test_unhealthy_at_the_consecutive_failures_threshold_not_one_before(conn: Conn) -> None:
    runs = await _runs(conn, policy={"consecutive_failures": 3})
    await runs.end("ok", "dead", "dead")
    assert (await runs.row())["health"] == "healthy"  # two in a row: one short
    await runs.end("dead")
    row = await runs.row()
    assert (row["health"], row["health_reason"]) == ("unhealthy", "consecutive_failures")
    assert row["health_since"] == runs.at
    (event,) = await _events(conn, row["id"], "schedule.health_changed")
    assert event["actor"] == "system"
    assert event["data"] == {
        "health": "unhealthy",
        "health_reason": "consecutive_failures",
        "health_since": runs.at.isoformat(),
    }
    assert event["meta"]["from"] == "healthy" and event["meta"]["to"] == "unhealthy"
    assert event["meta"]["consecutive_failures"] == 3
    # A success ends the streak: healthy again, as a second event.
    await runs.end("ok")
    assert (await runs.row())["health"] == "healthy"
    assert _transitions(await _events(conn, row["id"], "schedule.health_changed")) == [
        ("healthy", "unhealthy", "consecutive_failures"),
        ("unhealthy", "healthy", None),
    ]
    assert await replay.verify(conn) == []


async def test_a_run_that_succeeded_on_a_retry_breaks_the_streak(conn: Conn) -> None:
    runs = await _runs(conn, policy={"consecutive_failures": 3})
    await runs.end("dead", "dead", "retried", "dead", "dead")
    assert (await runs.row())["health"] == "healthy"
    await runs.end("dead")
    assert (await runs.row())["health_reason"] == "consecutive_failures"


# -- failure rate ----------------------------------------------------------------------------


async def test_degraded_at_the_failure_rate_over_the_window(conn: Conn) -> None:
    runs = await _runs(conn, policy={"failure_rate": 0.5, "window_runs": 4})
    await runs.end("ok", "ok", "ok", "dead")
    assert (await runs.row())["health"] == "healthy"  # window: dead ok ok ok = 1/4
    await runs.end("dead")  # window: dead dead ok ok = 2/4
    row = await runs.row()
    assert (row["health"], row["health_reason"]) == ("degraded", "failure_rate")
    await runs.end("ok")  # window: ok dead dead ok = 2/4, and a success does not heal it yet
    assert (await runs.row())["health"] == "degraded"
    await runs.end("ok")  # window: ok ok dead dead = 2/4
    assert (await runs.row())["health"] == "degraded"
    await runs.end("ok")  # window: ok ok ok dead = 1/4
    assert (await runs.row())["health"] == "healthy"
    assert _transitions(await _events(conn, row["id"], "schedule.health_changed")) == [
        ("healthy", "degraded", "failure_rate"),
        ("degraded", "healthy", None),
    ]
    assert await replay.verify(conn) == []


# -- overdue -------------------------------------------------------------------------------


async def test_overdue_by_the_database_clock_on_both_sides(conn: Conn) -> None:
    s = await make_schedule(
        conn,
        now=T,
        queue=f"health-{next(_queues)}",
        health_policy={**QUIET, "overdue_seconds": 300},
    )
    due = s["next_due_at"]
    # No ticker ran: the occurrence is late, but not yet by more than the threshold.
    assert await store.health.evaluate(conn, [s["id"]], now=due + timedelta(seconds=300)) == []
    (changed,) = await store.health.evaluate(conn, [s["id"]], now=due + timedelta(seconds=301))
    assert (changed["health"], changed["health_reason"]) == ("unhealthy", "overdue")
    # Paused, it owes nothing: healthy again.
    await schedules.pause(conn, s["id"], actor="t", now=due + timedelta(seconds=302))
    (back,) = await store.health.evaluate(conn, [s["id"]], now=due + timedelta(seconds=303))
    assert back["health"] == "healthy"
    assert await replay.verify(conn) == []


async def test_a_waiting_run_nobody_starts_is_overdue(conn: Conn) -> None:
    s = await make_schedule(
        conn, now=T, queue=f"health-{next(_queues)}", enabled=False,
        health_policy={**QUIET, "overdue_seconds": 600},
    )  # fmt: skip
    await schedules.trigger(conn, s["id"], actor="t", now=T)
    assert await store.health.evaluate(conn, [s["id"]], now=T + timedelta(seconds=600)) == []
    changed = next(
        c
        for c in await store.health.sweep(conn, now=T + timedelta(seconds=601))
        if c["id"] == s["id"]
    )
    assert changed["health_reason"] == "overdue"
    # Started at last: not overdue any more (the sweep, `None`, judges every schedule).
    await test_store.claim_runs(
        conn, worker_id=1, queues=[s["queue"]], limit=1, lease_seconds=30, actor="w",
        now=T + timedelta(seconds=602),
    )  # fmt: skip
    healed = await store.health.evaluate(conn, None, now=T + timedelta(seconds=603))
    assert [(c["id"], c["health"]) for c in healed] == [(s["id"], "healthy")]


async def test_the_sweep_judges_every_schedule_chunk_by_chunk(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = {**QUIET, "overdue_seconds": 60}
    made = [await make_schedule(conn, now=T, health_policy=policy) for _ in range(5)]
    monkeypatch.setattr(store.health, "SWEEP_CHUNK", 2)
    changed = await store.health.sweep(conn, now=T + timedelta(hours=1))
    assert {c["id"] for c in changed} >= {s["id"] for s in made}
    assert {c["health_reason"] for c in changed if c["id"] in {s["id"] for s in made}} == {
        "overdue"
    }


async def test_the_service_runs_the_sweep_on_its_clock(conn: Conn) -> None:
    """`pgsched run` and `pgsched ticker` serve `health_loop` beside the tickers."""
    s = await make_schedule(conn, now=T, health_policy={**QUIET, "overdue_seconds": 60})
    loop = service.health_loop(FakeClock(T + timedelta(hours=1)))
    assert (loop.name, loop.period_seconds) == ("health", service.HEALTH_SWEEP_SECONDS)
    changed = await loop.step(conn)
    assert isinstance(changed, list)
    assert s["id"] in {c["id"] for c in changed}


# -- the circuit breaker -------------------------------------------------------------------


async def test_the_breaker_pauses_at_exactly_n_and_not_at_n_minus_one(conn: Conn) -> None:
    runs = await _runs(conn, pause_after_failures=3)
    await runs.end("dead", "dead")
    assert (await runs.row())["enabled"] is True
    await runs.end("dead")
    row = await runs.row()
    assert row["enabled"] is False and row["paused_at"] == runs.at
    (paused,) = await _events(conn, row["id"], "schedule.paused")
    assert paused["actor"] == "system"
    assert paused["meta"] == {
        "reason": "circuit_breaker",
        "consecutive_failures": 3,
        "pause_after_failures": 3,
    }
    assert await replay.verify(conn) == []


async def test_a_success_in_between_resets_the_breaker(conn: Conn) -> None:
    runs = await _runs(conn, pause_after_failures=3)
    await runs.end("dead", "dead", "ok", "dead", "dead", "retried", "dead", "dead")
    assert (await runs.row())["enabled"] is True
    assert await _events(conn, runs.schedule["id"], "schedule.paused") == []


async def test_after_a_resume_the_next_failure_pauses_again(conn: Conn) -> None:
    """Resumed with the streak unbroken, the schedule gets one more try (half-open): the old
    failures do not pause it again by themselves, the next one does."""
    runs = await _runs(conn, pause_after_failures=2)
    await runs.end("dead", "dead")
    runs.at += timedelta(seconds=1)
    await schedules.resume(conn, runs.schedule["id"], actor="admin", now=runs.at)
    sweep = await store.health.evaluate(conn, None, now=runs.at + timedelta(seconds=1))
    assert runs.schedule["id"] not in {c["id"] for c in sweep}
    assert (await runs.row())["enabled"] is True
    await runs.end("dead")
    assert (await runs.row())["enabled"] is False
    events = await _events(conn, runs.schedule["id"], "schedule.paused", "schedule.resumed")
    assert [(e["type"], e["actor"]) for e in events] == [
        ("schedule.paused", "system"),
        ("schedule.resumed", "admin"),
        ("schedule.paused", "system"),
    ]
    assert await replay.verify(conn) == []


async def test_a_run_dead_by_an_expired_lease_counts(conn: Conn) -> None:
    runs = await _runs(conn, pause_after_failures=1, max_attempts=1)
    await store.insert_runs(
        conn, [(runs.schedule["id"], runs.at, runs.at)], origin="backfill", actor="t", now=runs.at
    )
    await runs._claim()
    rescued = await store.rescue_expired(
        conn, limit=10, actor="w", now=runs.at + timedelta(minutes=5)
    )
    assert [r["state"] for r in rescued] == ["dead"]
    assert (await runs.row())["enabled"] is False


# -- the policy ----------------------------------------------------------------------------


async def test_a_changed_policy_judges_the_same_runs_at_once(conn: Conn) -> None:
    runs = await _runs(conn)
    await runs.end("ok", "dead", "dead")
    assert (await runs.row())["health"] == "healthy"
    updated = await schedules.update(
        conn, runs.schedule["id"], {"health_policy": {"consecutive_failures": 2}},
        if_match=None, actor="admin", now=runs.at,
    )  # fmt: skip
    assert updated["health"] == "unhealthy"
    # Only the threshold named changed; the others kept the schedule's values.
    assert updated["health_policy"] == {**QUIET, "consecutive_failures": 2}
    assert await replay.verify(conn) == []


async def test_an_operator_retrying_a_dead_run_takes_it_out_of_the_streak(conn: Conn) -> None:
    runs = await _runs(conn, policy={"consecutive_failures": 2})
    await runs.end("ok", "dead", "dead")
    assert (await runs.row())["health"] == "unhealthy"
    cur = await conn.execute(
        "SELECT id FROM pgsched.run WHERE schedule_id = %s ORDER BY due_at DESC LIMIT 1",
        [runs.schedule["id"]],
    )
    last = await cur.fetchone()
    assert last is not None
    await run_service.retry(conn, last["id"], actor="admin", now=runs.at, meta={})
    assert (await runs.row())["health"] == "healthy"


@pytest.mark.own_database
async def test_the_worker_role_may_record_health_and_trip_the_breaker(conn: Conn, dsn: str) -> None:
    """The reporter and the sweep run as pgsched_worker: the event guard lets it append
    schedule.health_changed and schedule.paused, and the columns are granted."""
    runs = await _runs(conn, pause_after_failures=1, policy={"consecutive_failures": 1})
    async with login_role(dsn, "pgsched_worker") as worker_dsn:
        worker = await connect(worker_dsn)
        try:
            runs.conn = worker
            await runs.end("dead")
        finally:
            await worker.close()
    row = await schedules.live(conn, runs.schedule["id"])
    assert (row["health"], row["enabled"]) == ("unhealthy", False)
    assert await replay.verify(conn) == []


@pytest.mark.own_database
async def test_0021_gives_existing_schedules_their_health_as_events(empty_dsn: str) -> None:
    """A schedule made before 0021 gets the default policy and `healthy` with an event that
    says so (schedule.migrated), so verify stays clean; the downgrade drops the columns."""
    from pgsched.app.domain.schedule import HEALTH_POLICY, builtin_definition
    from pgsched.app.maintenance import Retention, builtin_job

    migrate(empty_dsn, "0019")
    old = await connect(empty_dsn)
    try:
        now = await store.db_now(old, None)
        fields = builtin_definition(builtin_job(Retention()), now)
        for column in ("health_policy", "pause_after_failures"):
            fields.pop(column)
        await old.execute(
            "SELECT pgsched.install_builtin_maintenance_v1(%s::jsonb)", [store.jsonb(fields)]
        )
    finally:
        await old.close()
    migrate(empty_dsn)
    conn = await connect(empty_dsn)
    try:
        cur = await conn.execute("SELECT * FROM pgsched.schedule")
        (row,) = await cur.fetchall()
        assert (row["health"], row["health_policy"]) == ("healthy", HEALTH_POLICY)
        assert await replay.verify(conn) == []
        (event,) = await _events(conn, row["id"], "schedule.migrated")
        assert event["meta"] == {"migration": "0021"}
    finally:
        await conn.close()
    migrate(empty_dsn, "0019", down=True)


# -- review fixes: exact thresholds, skipped runs, concurrent evaluations ------------------


async def test_the_failure_rate_is_exact_at_its_threshold(conn: Conn) -> None:
    """7 dead of 25 is a rate of exactly 0.28: degraded (in float8, 0.28 * 25 > 7)."""
    runs = await _runs(conn, policy={"failure_rate": 0.28, "window_runs": 25})
    await runs.end(*(["ok"] * 18), *(["dead"] * 6))
    assert (await runs.row())["health"] == "healthy"  # 6 of 24
    await runs.end("ok")  # 6 of 25
    assert (await runs.row())["health"] == "healthy"
    await runs.end("dead")  # the oldest ok leaves the window: 7 of 25
    row = await runs.row()
    assert (row["health"], row["health_reason"]) == ("degraded", "failure_rate")


async def _skip(conn: Conn, runs: Runs, count: int) -> None:
    """`count` runs of the schedule that ended `skipped`, as the ticker leaves a run whose
    upstreams did not succeed in time (ADR 0033), with the event that says so."""
    for _ in range(count):
        runs.at += timedelta(seconds=1)
        (made,) = await store.insert_runs(
            conn, [(runs.schedule["id"], runs.at, runs.at)], origin="backfill", actor="t",
            now=runs.at,
        )  # fmt: skip
        await conn.execute(
            "WITH s AS (UPDATE pgsched.run SET state = 'skipped', finished_at = %(at)s,"
            '  outcome = \'{"status": "skipped"}\' WHERE id = %(id)s RETURNING *)'
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT %(at)s, 'run', s.id, 'run.skipped', 'ticker',"
            "  jsonb_build_object('state', s.state, 'finished_at', s.finished_at,"
            "                     'outcome', s.outcome) FROM s",
            {"id": made["id"], "at": runs.at},
        )


async def test_skipped_runs_count_as_failures(conn: Conn) -> None:
    """A downstream whose runs are skipped every time did not do its work: unhealthy by its
    consecutive failures, and a success ends the streak as for dead runs."""
    runs = await _runs(conn, policy={"consecutive_failures": 3})
    await runs.end("ok", "dead")
    await _skip(conn, runs, 2)
    (changed,) = await store.health.evaluate(conn, [runs.schedule["id"]], now=runs.at)
    assert (changed["health"], changed["health_reason"], changed["failures"]) == (
        "unhealthy", "consecutive_failures", 3,
    )  # fmt: skip
    assert await replay.verify(conn) == []


async def test_skipped_runs_count_in_the_failure_rate(conn: Conn) -> None:
    runs = await _runs(conn, policy={"failure_rate": 0.5, "window_runs": 4})
    await runs.end("ok", "ok", "ok")
    await _skip(conn, runs, 1)
    assert await store.health.evaluate(conn, [runs.schedule["id"]], now=runs.at) == []
    await _skip(conn, runs, 1)  # window: skipped skipped ok ok
    (changed,) = await store.health.evaluate(conn, [runs.schedule["id"]], now=runs.at)
    assert (changed["health"], changed["health_reason"]) == ("degraded", "failure_rate")


# The gate of the race below: an evaluation on a session that set pgsched_test.gate waits for
# the test's advisory lock when it starts its UPDATE, after its snapshot was taken and before
# it locks any schedule row (a BEFORE STATEMENT trigger fires before the first row is read).
GATE = """
CREATE FUNCTION public.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('pgsched_test.gate', true) = 'on' THEN
        PERFORM pg_advisory_xact_lock(4242);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER test_gate BEFORE UPDATE ON pgsched.schedule
    FOR EACH STATEMENT EXECUTE FUNCTION public.test_gate();
"""


@pytest.mark.own_database
@pytest.mark.parametrize("breaker", [1, None], ids=["trip", "health"])
async def test_an_evaluation_racing_another_records_the_change_once(
    conn: Conn, dsn: str, breaker: int | None
) -> None:
    """Two evaluations of one schedule: the second took its snapshot before the first
    committed and reaches the row after. It must see the row as it is now: no second
    schedule.health_changed, no second pause (version + 2), no health_since moved."""
    runs = await _runs(conn, pause_after_failures=breaker, policy={"consecutive_failures": 1})
    sid = runs.schedule["id"]
    holder = await connect(dsn)
    try:  # the run dies while another transaction holds the schedule: nothing judged yet
        await holder.execute("BEGIN")
        await holder.execute(
            "SELECT 1 FROM pgsched.schedule WHERE id = %s FOR NO KEY UPDATE", [sid]
        )
        await runs.end("dead")
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    assert (await runs.row())["health"] == "healthy"
    version = (await runs.row())["version"]
    await conn.execute(GATE)
    first, second = await connect(dsn), await connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(4242)")
        await second.execute("SET pgsched_test.gate = 'on'")
        late = asyncio.create_task(store.health.evaluate(second, [sid], now=runs.at))

        async def second_waits() -> bool:
            cur = await conn.execute(
                "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted AND locktype = 'advisory'",
                [second.info.backend_pid],
            )
            return await cur.fetchone() is not None

        await eventually("the second evaluation waits at the gate", second_waits)
        (won,) = await store.health.evaluate(first, [sid], now=runs.at)
        assert won["paused"] is (breaker is not None)
        await conn.execute("SELECT pg_advisory_unlock(4242)")
        assert await late == []
    finally:
        await first.close()
        await second.close()
    assert len(await _events(conn, sid, "schedule.health_changed")) == 1
    paused = await _events(conn, sid, "schedule.paused")
    assert len(paused) == (0 if breaker is None else 1)
    row = await runs.row()
    assert row["version"] == version + (0 if breaker is None else 1)
    assert await replay.verify(conn) == []


async def _plan_indexes(conn: Conn, name: str, params: dict[str, Any]) -> set[str]:
    """The parent indexes (a partition's index named by its partitioned one) that `name`'s
    plan reads, with sequential scans priced out so the tiny test tables do not hide them."""
    await conn.execute("SET LOCAL enable_seqscan = off")
    cur = await conn.execute("EXPLAIN (COSTS OFF) " + query(name), params)
    plan = "\n".join(next(iter(r.values())) for r in await cur.fetchall())
    index_of: dict[str, str] = {}
    cur = await conn.execute(
        "SELECT i.relname AS own, coalesce(p.relname, i.relname) AS parent FROM pg_class i"
        " LEFT JOIN pg_inherits h ON h.inhrelid = i.oid"
        " LEFT JOIN pg_class p ON p.oid = h.inhparent"
        " WHERE i.relkind IN ('i', 'I') AND i.relnamespace = 'pgsched'::regnamespace"
    )
    for r in await cur.fetchall():
        index_of[r["own"]] = r["parent"]
    return {parent for own, parent in index_of.items() if f"using {own} " in plan}


async def test_the_evaluation_and_health_read_through_their_partial_indexes(conn: Conn) -> None:
    """A schedule's outcomes and its newest success are read through indexes of those runs
    only (a schedule that never succeeds is not read run by run), and /health's counts of
    schedules that are not healthy through an index of those."""
    runs = await _runs(conn)
    await runs.end("ok", "dead")
    used = await _plan_indexes(
        conn, "evaluate_health", {"ids": [runs.schedule["id"]], "now": None, "actor": "system"}
    )
    assert {"run_outcome_by_schedule", "run_success_by_schedule"} <= used
    used = await _plan_indexes(conn, "health", {"now": None, "stale_seconds": 30.0})
    assert "schedule_not_healthy" in used


@pytest.mark.own_database
async def test_one_process_sweeps_while_its_connection_leads(conn: Conn, dsn: str) -> None:
    """Every `pgsched run` and `pgsched ticker` has the sweep loop; only the one whose
    connection leads sweeps, it keeps the lead pass after pass, and when its session ends
    another takes over at its next pass."""
    s = await make_schedule(conn, now=T, health_policy={**QUIET, "overdue_seconds": 60})
    loop = service.health_loop(FakeClock(T + timedelta(hours=1)))
    assert loop.own_connection
    leader, other = await connect(dsn), await connect(dsn)
    try:
        assert await store.health.lead_sweep(leader)
        assert await store.health.lead_sweep(leader)  # kept, not taken twice
        assert await loop.step(other) == []  # not the leader: judges nothing
        assert (await schedules.live(conn, s["id"]))["health"] == "healthy"
        await leader.close()  # the leading process ends; its backend releases the lead
        await eventually("the lead passes on", lambda: store.health.lead_sweep(other))
        changed = await loop.step(other)
        assert isinstance(changed, list) and s["id"] in {c["id"] for c in changed}
        assert await loop.step(other) == []  # leads still; nothing left to change
        cur = await conn.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        assert await cur.fetchone() == {"n": 1}
    finally:
        await leader.close()
        await other.close()


@pytest.mark.own_database
async def test_a_loop_with_its_own_connection_keeps_it_and_ends_its_session(dsn: str) -> None:
    """The sweep's lead lives in its connection's session: the loop steps on the same
    connection every pass, and when the loop ends, the session ends with it (no other user of
    the pool inherits the lead)."""
    seen: list[int] = []

    async def step(conn: Conn) -> object:
        seen.append(conn.info.backend_pid)
        return await store.health.lead_sweep(conn)

    pool = outage.pool(dsn, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        loop = service.PoolLoop(pool, service.Periodic("x", 1.0, step, True), FakeClock(T))
        await loop.run_once()
        await loop.run_once()
        assert len(seen) == 2 and seen[0] == seen[1]
        await loop.closed()
        async with pool.connection() as conn:
            assert conn.info.backend_pid != seen[0]
            await eventually("the lead is free", lambda: store.health.lead_sweep(conn))
    finally:
        await pool.close()
