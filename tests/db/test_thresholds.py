"""Every instant-versus-`now` threshold, on both sides and exactly at it, against PostgreSQL.

Each table has a row 1 µs before the threshold, one exactly at it and one 1 µs after
(timestamptz's resolution: nothing lies between), and each case passes explicit instants to the
store, the ticker and the readers (`now=`), so the database clock never decides by accident. The
side an exact tie falls on is what the SQL says (`<` or `<=`); a comment at each table says why
that side is the right one.

Already covered on both sides elsewhere, so not repeated here:
- grace for missed occurrences: tests/db/test_ticker.py (`test_grace_boundary_is_inclusive`:
  exactly `grace` old runs, 1 s older is missed; `test_missed_policies`: younger ones run);
- maintain_v2's retention cutoff, run and event months: tests/db/test_maintenance.py
  (`..._are_retired_exactly_at_the_cutoff`: retired at it, kept 1 s before);
- the backoff's cap: tests/workers/test_worker.py (`test_backoff_formula_is_capped`);
- backfill's half-open range and its cap: tests/db/test_schedule_ops.py;
- starts_at/ends_at in the occurrence function itself: tests/unit/test_occurrences.py (here
  they go through the ticker and a stored row too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgsched.app import ticker
from pgsched.app.db import store
from pgsched.app.db.sql import query
from pgsched.app.db.store import Conn, Lease, Report
from tests.factories import clear_of_month_ends, make_schedule

# Every test here uses one connection and explicit instants: the rolled-back tier (`tx`).
pytestmark = pytest.mark.tx

T = clear_of_month_ends(datetime.now(UTC).replace(second=0, microsecond=0))
US = timedelta(microseconds=1)
ZERO = timedelta(0)
MIN = timedelta(minutes=1)
SIDES = ["before", "at", "after"]


async def _read(conn: Conn, name: str, **params: Any) -> list[dict[str, Any]]:
    """A named statement's rows. The readers are run by name: what is under test is their SQL
    (and the Python that wraps them is moving into the store package)."""
    cur = await conn.execute(query(name), params)
    return await cur.fetchall()


async def _one_run(conn: Conn, **schedule: Any) -> dict[str, Any]:
    """A disabled schedule (the ticker leaves it alone) with one waiting run due at T."""
    s = await make_schedule(conn, now=T, enabled=False, **schedule)
    (run,) = await store.insert_runs(conn, [(s["id"], T, T)], origin="backfill", actor="t", now=T)
    return run


async def _claim(conn: Conn, now: datetime, *, limits: bool = True) -> list[dict[str, Any]]:
    taken = await store.claim(
        conn,
        worker_id=1,
        queues=["default"],
        limit=10,
        lease_seconds=60,
        actor="w",
        now=now,
        limits=limits,
    )
    return taken.rows


# -- the lease: rescue_expired ----------------------------------------------------------------
# `lease_expires_at < now`: a lease of L seconds granted at C covers [C, C + L] and is taken
# back only once that instant has passed. At the instant itself the holder may still renew or
# report (renew_leases and complete_attempts check the token, not the clock); rescuing then
# would hand the run to a second worker while the first still legitimately holds it, a double
# execution, whereas rescuing 1 µs later costs nothing.


@pytest.mark.parametrize(
    ("expires_minus_now", "rescued"), [(-US, True), (ZERO, False), (US, False)], ids=SIDES
)
async def test_a_lease_is_rescued_only_once_it_has_expired(
    tx: Conn, expires_minus_now: timedelta, rescued: bool
) -> None:
    run = await _one_run(tx)
    (claimed,) = await _claim(tx, T)
    expires = claimed["lease_expires_at"]
    assert expires == T + MIN
    now = expires - expires_minus_now
    got = await store.rescue_expired(tx, limit=10, actor="rescuer", now=now)
    assert [r["id"] for r in got] == ([run["id"]] if rescued else [])
    cur = await tx.execute("SELECT state FROM pgsched.run WHERE id = %s", [run["id"]])
    assert await cur.fetchone() == {"state": "waiting" if rescued else "running"}


@pytest.mark.parametrize(("max_attempts", "state"), [(1, "dead"), (2, "waiting")])
async def test_a_rescued_run_with_no_attempt_left_is_dead(
    tx: Conn, max_attempts: int, state: str
) -> None:
    """`attempt >= max_attempts`: the expired attempt was the last one (1 of 1) or was not."""
    await _one_run(tx, max_attempts=max_attempts)
    await _claim(tx, T)
    (got,) = await store.rescue_expired(tx, limit=10, actor="rescuer", now=T + MIN + US)
    assert (got["attempt"], got["state"]) == (1, state)
    assert (got["finished_at"] is not None) == (state == "dead")


# -- retry backoff: a failed run is due again at available_at ---------------------------------
# `available_at <= now`, in lock_limits, claim_runs and claim_open_runs alike (and `ready` in
# the telemetry sample): available_at is the first instant the run may start (a backoff of 10 s
# is 10 s, not 10 s and a tick), and seconds_until_next_run, which an idle worker sleeps for,
# says 0 at that instant: the claim that follows must take it, or the worker would spin.


@pytest.mark.parametrize(
    "statement",
    ["open", "limits", "limited"],  # claim_open_runs; lock_limits + claim_runs; a limited schedule
)
@pytest.mark.parametrize(
    ("available_minus_now", "due"), [(-US, True), (ZERO, True), (US, False)], ids=SIDES
)
async def test_a_retry_is_claimable_from_its_available_at(
    tx: Conn, statement: str, available_minus_now: timedelta, due: bool
) -> None:
    limited = {"max_concurrency": 1} if statement == "limited" else {}
    run = await _one_run(tx, retry_delay_seconds=10, retry_factor=2, **limited)
    (claimed,) = await _claim(tx, T)
    failed_at = T + timedelta(seconds=5)
    # jitter 0.5 is the backoff's midpoint: exactly delay * factor^(attempt - 1) = 10 s.
    (back,) = await store.complete_attempts(
        tx,
        [Report(Lease.of(claimed), "failed", {"status": "failed"}, jitter=0.5)],
        actor="w",
        now=failed_at,
    )
    assert back is not None and back["state"] == "waiting"
    assert back["available_at"] == failed_at + timedelta(seconds=10)
    now = back["available_at"] - available_minus_now

    wait = await store.seconds_until_next_run(tx, ["default"], now=now)
    assert wait is not None and (wait == 0) == due
    (sample,) = await _read(tx, "telemetry_sample", stale_seconds=30, now=now)
    (queue,) = [q for q in sample["queues"] if q["queue"] == "default"]
    assert (queue["ready"], queue["scheduled"]) == ((1, 0) if due else (0, 1))
    got = await _claim(tx, now, limits=statement != "open")
    assert [(r["id"], r["attempt"]) for r in got] == ([(run["id"], 2)] if due else [])


# -- workers: gone after silence, healthy while recent -----------------------------------------
# mark_gone_workers: `heartbeat_at < now - after_seconds`, "silent for longer than" (its
# contract); the readers (page_workers' `healthy`, /health's live_workers, the telemetry's
# live/silent counts): `heartbeat_at >= now - stale_seconds`. With the same number of seconds
# the two must split every instant between them, so a worker silent exactly that long is still
# healthy and not yet gone: /health and the registry never disagree about it.


@pytest.mark.parametrize("state", ["active", "stopping"])
@pytest.mark.parametrize(
    ("silence_minus_limit", "gone"), [(-US, False), (ZERO, False), (US, True)], ids=SIDES
)
async def test_a_worker_is_gone_only_when_silent_longer_than_the_limit(
    tx: Conn, state: str, silence_minus_limit: timedelta, gone: bool
) -> None:
    limit = 90.0
    worker = await store.register_worker(
        tx, name="w", host="h", pid=1, version="t", queues=["default"], slots=1, now=T
    )
    if state == "stopping":
        await store.set_worker_state(tx, worker["id"], "stopping", now=T)
    now = T + timedelta(seconds=limit) + silence_minus_limit

    (listed,) = await _read(
        tx, "page_workers", limit=10, stale_seconds=limit, now=now, before_id=None, states=None
    )
    assert listed["healthy"] is not gone
    (health,) = await _read(tx, "health", stale_seconds=limit, now=now)
    assert health["live_workers"] == int(not gone)
    (sample,) = await _read(tx, "telemetry_sample", stale_seconds=limit, now=now)
    assert (sample["live_workers"], sample["silent_workers"]) == (int(not gone), int(gone))
    marked = await store.mark_gone_workers(tx, after_seconds=limit, actor="t", now=now)
    assert marked == ([worker["id"]] if gone else [])


async def test_a_stopped_worker_is_never_marked_gone(tx: Conn) -> None:
    worker = await store.register_worker(
        tx, name="w", host="h", pid=1, version="t", queues=["default"], slots=1, now=T
    )
    await store.set_worker_state(tx, worker["id"], "stopped", now=T)
    assert await store.mark_gone_workers(tx, after_seconds=1, actor="t", now=T + MIN) == []


# -- schedules: due by the ticker's horizon ---------------------------------------------------
# lock_due_groups: `next_due_at <= now + lookahead`. An occurrence due exactly at the horizon is
# inside the window the tick covers (the horizon is an instant the tick answers for, as `now`
# is when the look-ahead is 0); the run it makes is not claimable before its due instant anyway
# (available_at = due_at, tests/db/test_ticker.py).


@pytest.mark.parametrize("lookahead", [ZERO, ticker.DEFAULT_LOOKAHEAD], ids=["now", "lookahead"])
@pytest.mark.parametrize(
    ("due_minus_horizon", "made"), [(-US, True), (ZERO, True), (US, False)], ids=SIDES
)
async def test_a_schedule_is_due_up_to_the_horizon(
    tx: Conn, lookahead: timedelta, due_minus_horizon: timedelta, made: bool
) -> None:
    s = await make_schedule(tx, now=T, interval_seconds=3600)  # anchored at T
    assert s["next_due_at"] == T
    now = T - due_minus_horizon - lookahead
    await ticker.tick(tx, now=now, lookahead=lookahead)
    cur = await tx.execute(
        "SELECT due_at, origin FROM pgsched.run WHERE schedule_id = %s", [s["id"]]
    )
    assert await cur.fetchall() == ([{"due_at": T, "origin": "schedule"}] if made else [])
    row = await store.get_schedule(tx, s["id"])
    assert row is not None and row["next_due_at"] == (T + timedelta(hours=1) if made else T)


# -- starts_at / ends_at: inclusive bounds on occurrences -------------------------------------
# An occurrence exactly at starts_at or ends_at runs (the API documents both as inclusive, as
# the occurrence function does): "from 09:00 to 17:00" includes the 09:00 and 17:00 runs.


@pytest.mark.parametrize(
    ("ends_minus_last", "dues"),
    [(-US, [-2, -1]), (ZERO, [-2, -1, 0]), (US, [-2, -1, 0])],
    ids=SIDES,
)
async def test_an_occurrence_at_ends_at_runs(
    tx: Conn, ends_minus_last: timedelta, dues: list[int]
) -> None:
    s = await make_schedule(
        tx,
        now=T - 2 * MIN,
        kind="cron",
        cron="* * * * *",
        interval_seconds=None,
        grace_seconds=3600,
        ends_at=T + ends_minus_last,
    )
    await ticker.tick(tx, now=T)
    cur = await tx.execute(
        "SELECT due_at FROM pgsched.run WHERE schedule_id = %s ORDER BY due_at", [s["id"]]
    )
    assert [r["due_at"] for r in await cur.fetchall()] == [T + k * MIN for k in dues]
    row = await store.get_schedule(tx, s["id"])
    assert row is not None and row["next_due_at"] is None, "nothing after ends_at"


@pytest.mark.parametrize(
    ("starts_minus_first", "first"), [(-US, ZERO), (ZERO, ZERO), (US, MIN)], ids=SIDES
)
async def test_an_occurrence_at_starts_at_runs(
    tx: Conn, starts_minus_first: timedelta, first: timedelta
) -> None:
    s = await make_schedule(
        tx,
        now=T - 2 * MIN,
        kind="cron",
        cron="* * * * *",
        interval_seconds=None,
        starts_at=T + starts_minus_first,
    )
    assert s["next_due_at"] == T + first
    await ticker.tick(tx, now=T)
    cur = await tx.execute("SELECT due_at FROM pgsched.run WHERE schedule_id = %s", [s["id"]])
    assert [r["due_at"] for r in await cur.fetchall()] == ([T] if first == ZERO else [])


# -- retention for archiving: retirable_partitions_v1 -----------------------------------------
# `month_end <= now - retention`: a month [start, end) holds rows up to end - 1 µs, so at
# now = end + retention every row in it is older than the retention: the month is wholly past
# it at that instant, not one later. (maintain_v2 uses the same comparison; tests/db/
# test_maintenance.py covers it.) This is the archive's path (PGSCHED_ARCHIVE_DIR, ADR 0018).


def _month(t: datetime, plus: int) -> datetime:
    y, m = divmod(t.month - 1 + plus, 12)
    return datetime(t.year + y, m + 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("table", "days"), [("run", 30), ("event", 90)])
@pytest.mark.parametrize(
    ("now_minus_cutoff", "retired"), [(-US, False), (ZERO, True), (US, True)], ids=SIDES
)
async def test_a_month_is_retirable_once_wholly_past_retention(
    tx: Conn, table: str, days: int, now_minus_cutoff: timedelta, retired: bool
) -> None:
    start = _month(T, -5)
    end = _month(T, -4)
    await tx.execute("SET ROLE pgsched_owner")  # partitions are the owner's, as in production
    try:
        await tx.execute(
            "SELECT pgsched.create_month_partition_v1(%s::regclass, %s::date)",
            [f"pgsched.{table}", start.date()],
        )
    finally:
        await tx.execute("RESET ROLE")
    now = end + timedelta(days=days) + now_minus_cutoff
    rows = await _read(tx, "retirable_partitions", run_days=30, event_days=90, now=now)
    months = {(r["table_name"], r["month_end"]) for r in rows}
    assert ((f"pgsched.{table}", end) in months) is retired
