"""Issue 3: three tickers at once, SIGKILLed at random, lose and double nothing.

500 schedules (cron and interval, 10 zones) run for 7 simulated days under three ticker
*processes* (tests/chaos/ticker_process.py) that read a simulated clock from the test database.
At random moments, while a tick transaction is open, one of them is SIGKILLed and a fresh one
takes its place. At the end every schedule's runs must be exactly the occurrences an independent
oracle expects: tests/unit/cron_oracle.py (a minute-by-minute brute force that shares no code with
app.domain) for cron, integer arithmetic for intervals. 0 missing, 0 duplicates, and the event
log must still fold into the tables (killed transactions leave nothing half-written).

`PGSCHED_SEED=<n>` replays a run's random choices (schedules, kill moments, victims); the seed is
printed. Process timing is not replayable, so a failure report gives the seed and the schedule.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import IO, Any

import pytest

from pgsched.app import ticker
from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from tests.conftest import ROOT, connect
from tests.factories import make_schedule
from tests.unit.cron_oracle import OracleCron, evaluate, walk

SCHEDULES = 500
DAYS = 7
TICKERS = 3
# Simulated minutes per clock step and real seconds between steps: 7 days in 672 steps.
STEP = timedelta(minutes=15)
STEP_PAUSE = 0.03
KILLS = (12, 16)  # inclusive range of SIGKILLs per run

# Whole, half- and quarter-hour offsets on both sides of UTC, most with DST rules. A week from
# now rarely contains a transition; the DST policy itself is swept by tests/unit against the
# same oracle. This test is about the ticker's exactly-once under kills.
ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # +10:30 / +11:00
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45
    "Pacific/Apia",  # +13:00
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/St_Johns",  # -03:30 / -02:30
    "Africa/Casablanca",  # +01:00, +00:00 during Ramadan
)
# (expression, weight): weights keep the run count (and so the runtime) in check; every-5-minutes
# alone is 2,016 runs a week.
CRONS = (
    ("*/5 * * * *", 1),
    ("*/15 * * * *", 3),
    ("0 * * * *", 4),
    ("@hourly", 2),
    ("0 */3 * * *", 4),
    ("*/30 1 * * *", 3),
    ("30 2 * * *", 4),
    ("30 1 * * *", 4),
    ("@daily", 4),
    ("0 12 * * 0", 3),
    ("0 9 * * mon-fri", 3),
    ("45 23 1,15 * 5", 2),
    ("15 4 */2 * *", 3),
    ("0 6,18 * * *", 3),
)
INTERVALS = ((300, 1), (900, 3), (3600, 4), (5400, 4), (4321, 3), (86_400, 3))


@dataclass(frozen=True)
class Definition:
    """What the oracle needs to know about one schedule."""

    id: int
    kind: str
    cron: str | None
    timezone: str
    interval_seconds: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    created_at: datetime
    jitter_seconds: int

    def __str__(self) -> str:
        what = f"cron {self.cron!r}" if self.kind == "cron" else f"every {self.interval_seconds} s"
        bounds = " ".join(
            f"{label} {value.isoformat()}"
            for label, value in (("starts_at", self.starts_at), ("ends_at", self.ends_at))
            if value is not None
        )
        return (
            f"schedule {self.id}: {what} in {self.timezone}, created_at"
            f" {self.created_at.isoformat()}{' ' + bounds if bounds else ''}"
        )


def _weighted(rng: random.Random, options: tuple[tuple[Any, int], ...]) -> Any:
    values, weights = zip(*options, strict=True)
    return rng.choices(values, weights=weights)[0]


async def _create_schedules(conn: Conn, rng: random.Random, start: datetime) -> list[Definition]:
    """500 schedules, all created at `start` (so `first_due` is the first occurrence >= start).

    Expected set, exactly: every occurrence t with start <= t <= end + look-ahead (and inside the
    schedule's own starts_at/ends_at). Nothing is ever dropped as missed: `missed_policy="all"`
    with a cap above any schedule's weekly count means a late occurrence (a ticker killed, slow or
    reading a stale clock) still runs, as "catchup"; grace only decides that origin.
    """
    definitions = []
    async with conn.transaction():
        for i in range(SCHEDULES):
            zone = ZONES[i % len(ZONES)]
            over: dict[str, Any] = {
                "timezone": zone,
                "missed_policy": "all",
                "missed_cap": 100_000,
                "grace_seconds": 3600,
                "jitter_seconds": rng.choice((0, 0, 0, 30, 300)),
            }
            if rng.random() < 0.6:
                over |= {"kind": "cron", "cron": _weighted(rng, CRONS), "interval_seconds": None}
                if rng.random() < 0.15:  # starts later in the week, at an odd second
                    over["starts_at"] = start + timedelta(seconds=rng.randrange(3 * 86_400))
            else:
                over |= {"kind": "interval", "interval_seconds": _weighted(rng, INTERVALS)}
                # The anchor: created_at (None), or starts_at in the past or later in the week.
                roll = rng.random()
                if roll < 0.4:
                    over["starts_at"] = start - timedelta(seconds=rng.randrange(2 * 86_400))
                elif roll < 0.55:
                    over["starts_at"] = start + timedelta(seconds=rng.randrange(3 * 86_400))
            if rng.random() < 0.15:  # ends inside the window, 1 to 4 days after it starts
                begins = max(start, over.get("starts_at") or start)
                over["ends_at"] = begins + timedelta(seconds=rng.randrange(86_400, 4 * 86_400))
            row = await make_schedule(conn, now=start, **over)
            definitions.append(
                Definition(
                    id=row["id"],
                    kind=row["kind"],
                    cron=row["cron"],
                    timezone=row["timezone"],
                    interval_seconds=row["interval_seconds"],
                    starts_at=row["starts_at"],
                    ends_at=row["ends_at"],
                    created_at=row["created_at"],
                    jitter_seconds=row["jitter_seconds"],
                )
            )
    return definitions


def _expected(definition: Definition, start: datetime, until: datetime) -> list[datetime]:
    """The oracle: occurrences in [start, until] within the schedule's own bounds."""
    low = max(start, definition.starts_at or start)
    high = min(until, definition.ends_at or until)
    if definition.kind == "cron":
        assert definition.cron is not None
        everything = _cron_oracle(definition.cron, definition.timezone, start, until)
        return [t for t in everything if low <= t <= high]
    # Interval: anchor + k * interval, k >= 0, anchor = starts_at or created_at (real time).
    assert definition.interval_seconds is not None
    anchor = definition.starts_at or definition.created_at
    step = definition.interval_seconds
    offset = int((low - anchor).total_seconds())
    k = max(0, -(-offset // step))  # ceil: the first k with anchor + k * step >= low
    found = []
    while (t := anchor + timedelta(seconds=k * step)) <= high:
        found.append(t)
        k += 1
    return found


@cache
def _zone_walk(zone: str, start: datetime, until: datetime) -> list[Any]:
    # (start - 1 us, until]: the oracle walks whole minutes after `after`, so start is included.
    return walk(zone, start - timedelta(microseconds=1), until)


@cache
def _cron_oracle(expr: str, zone: str, start: datetime, until: datetime) -> tuple[datetime, ...]:
    return tuple(evaluate(OracleCron.parse(expr), _zone_walk(zone, start, until)))


class Tickers:
    """The ticker processes: spawn, SIGKILL while a transaction is open, reap, always."""

    def __init__(self, dsn: str, logs: Path) -> None:
        self.dsn = dsn
        self.logs = logs
        self.slots: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.spawned = 0
        self.kills = 0
        self.kills_in_transaction = 0

    def spawn(self, slot: int | None = None) -> None:
        self.spawned += 1
        name = f"chaos-ticker-{self.spawned}"
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.ticker_process", self.dsn, name],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if slot is None:
            self.slots.append((name, proc, log))
        else:
            self.slots[slot] = (name, proc, log)

    async def kill_in_flight(self, conn: Conn, slot: int, patience: float = 2.0) -> None:
        """SIGKILL the ticker in `slot` as soon as it has a tick transaction open, then replace it.

        The check and the kill are a few hundred microseconds apart, so the transaction is
        almost always still open; pg_stat_database.xact_rollback counts the ones that were.
        """
        name, proc, log = self.slots[slot]
        deadline = time.monotonic() + patience
        in_transaction = False
        while time.monotonic() < deadline and proc.poll() is None:
            cur = await conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
                " AND xact_start IS NOT NULL AND query NOT LIKE '%%chaos\\_%%'",
                [name],
            )
            if await cur.fetchone():
                in_transaction = True
                break
            await asyncio.sleep(0.001)
        self._check_alive(slot)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        self.kills += 1
        self.kills_in_transaction += in_transaction
        self.spawn(slot)

    def _check_alive(self, slot: int) -> None:
        name, proc, _ = self.slots[slot]
        if proc.poll() is not None:
            output = (self.logs / f"{name}.log").read_text(errors="replace")
            pytest.fail(f"{name} exited by itself with {proc.returncode}:\n{output}")

    def check_all_alive(self) -> None:
        for slot in range(len(self.slots)):
            self._check_alive(slot)

    def wait_all(self, timeout: float) -> None:
        """Wait for every ticker to exit by itself (the clock said done); fail on a bad exit."""
        deadline = time.monotonic() + timeout
        for name, proc, _ in self.slots:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not stop when the clock said done")
            if proc.returncode != 0:
                output = (self.logs / f"{name}.log").read_text(errors="replace")
                pytest.fail(f"{name} exited with {proc.returncode}:\n{output}")

    def reap(self) -> None:
        """Kill and reap whatever is still running (any exit path of the test)."""
        for _, proc, log in self.slots:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()


async def _scalar(conn: Conn, sql: str, params: list[Any] | None = None) -> Any:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


async def _rollbacks(conn: Conn) -> int:
    """Transactions rolled back in this database: a SIGKILLed ticker's open one counts here."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await _scalar(
            conn, "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
    )


async def _drive(
    conn: Conn, tickers: Tickers, rng: random.Random, start: datetime, until: datetime
) -> float:
    """Walk the clock to the end with 3 tickers, killing some; drain; stop them. Drain seconds."""
    await conn.execute(
        "CREATE TABLE public.chaos_clock (now timestamptz NOT NULL, done boolean NOT NULL)"
    )
    await conn.execute("INSERT INTO public.chaos_clock VALUES (%s, false)", [start])
    await conn.execute(
        "CREATE TABLE public.chaos_tick (ticker text, now timestamptz, schedules int,"
        " created int, duplicates int, missed int, batches int)"
    )
    steps = DAYS * timedelta(days=1) // STEP
    kill_steps = set(rng.sample(range(1, steps), rng.randint(*KILLS)))
    for _ in range(TICKERS):
        tickers.spawn()
    for step in range(1, steps + 1):
        await conn.execute("UPDATE public.chaos_clock SET now = %s", [start + step * STEP])
        if step in kill_steps:
            await tickers.kill_in_flight(conn, rng.randrange(TICKERS))
        tickers.check_all_alive()
        await asyncio.sleep(STEP_PAUSE)

    # The clock stays at the end until no schedule is due by then (+ look-ahead); then it stops.
    drain_began = time.monotonic()
    while await _scalar(
        conn, "SELECT count(*) FROM pgsched.schedule WHERE next_due_at <= %s", [until]
    ):
        tickers.check_all_alive()
        if time.monotonic() - drain_began > 60:
            pytest.fail("the tickers did not catch up with the clock within 60 s")
        await asyncio.sleep(0.05)
    drained = time.monotonic() - drain_began
    await conn.execute("UPDATE public.chaos_clock SET done = true")
    tickers.wait_all(timeout=15)
    return drained


@dataclass
class Findings:
    """What the tables hold, compared with the oracle."""

    expected: int
    runs: int
    distinct_runs: int
    run_created_events: int
    missed_events: int
    origins: Counter[str]
    missing: dict[int, list[datetime]]
    unexpected: dict[int, list[datetime]]
    duplicated: dict[int, list[datetime]]
    jitter_out_of_range: list[dict[str, Any]]


async def _compare(
    conn: Conn, definitions: list[Definition], start: datetime, until: datetime
) -> Findings:
    by_id = {d.id: d for d in definitions}
    cur = await conn.execute(
        "SELECT schedule_id, due_at, available_at, origin FROM pgsched.run"
        " ORDER BY schedule_id, due_at"
    )
    runs = await cur.fetchall()
    actual: dict[int, Counter[datetime]] = {d.id: Counter() for d in definitions}
    for r in runs:
        actual.setdefault(r["schedule_id"], Counter())[r["due_at"]] += 1
    expected = {d.id: set(_expected(d, start, until)) for d in definitions}

    missing, unexpected, duplicated = {}, {}, {}
    for schedule_id, got in actual.items():
        want = expected.get(schedule_id, set())
        if lost := sorted(want - got.keys()):
            missing[schedule_id] = lost
        if surplus := sorted(got.keys() - want):
            unexpected[schedule_id] = surplus
        if twice := sorted(t for t, n in got.items() if n > 1):
            duplicated[schedule_id] = twice

    cur = await conn.execute(
        "SELECT count(*) AS runs, count(DISTINCT (schedule_id, due_at)) AS distinct_runs,"
        " (SELECT count(*) FROM pgsched.event WHERE type = 'run.created') AS created,"
        " (SELECT count(*) FROM pgsched.event WHERE type = 'schedule.occurrence_missed')"
        "   AS missed"
        " FROM pgsched.run"
    )
    counts = await cur.fetchone()
    assert counts is not None
    return Findings(
        expected=sum(map(len, expected.values())),
        runs=counts["runs"],
        distinct_runs=counts["distinct_runs"],
        run_created_events=counts["created"],
        missed_events=counts["missed"],
        origins=Counter(r["origin"] for r in runs),
        missing=missing,
        unexpected=unexpected,
        duplicated=duplicated,
        jitter_out_of_range=[
            r
            for r in runs
            if not timedelta(0)
            <= r["available_at"] - r["due_at"]
            <= timedelta(seconds=by_id[r["schedule_id"]].jitter_seconds)
        ],
    )


def _describe(found: dict[int, list[datetime]], definitions: list[Definition]) -> str:
    by_id = {d.id: d for d in definitions}
    return "\n".join(
        f"  {by_id[sid]}: {[t.isoformat() for t in dues[:5]]}"
        f"{' ...' if len(dues) > 5 else ''} ({len(dues)})"
        for sid, dues in list(found.items())[:10]
    )


async def test_three_tickers_killed_at_random_materialise_every_occurrence_exactly_once(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("PGSCHED_SEED") or secrets.randbits(32))
    with capsys.disabled():
        print(f"\nchaos: PGSCHED_SEED={seed}")
    rng = random.Random(seed)  # noqa: S311 - reproducible test choices, not security
    began = time.monotonic()

    # Runs are partitioned by due_at and events by occurred_at (the simulated now); the current
    # month and 3 ahead exist, so a week from the current hour is always inside them.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(days=DAYS)
    # The last ticks run at `end` and materialise up to end + look-ahead.
    until = end + ticker.DEFAULT_LOOKAHEAD

    conn = await connect(dsn)
    tickers = Tickers(dsn, tmp_path)
    try:
        definitions = await _create_schedules(conn, rng, start)
        rollbacks_before = await _rollbacks(conn)
        drained = await _drive(conn, tickers, rng, start, until)
        chaos_seconds = time.monotonic() - began

        oracle_began = time.monotonic()
        found = await _compare(conn, definitions, start, until)
        oracle_seconds = time.monotonic() - oracle_began
        cur = await conn.execute(
            "SELECT count(*) AS ticks, coalesce(sum(batches), 0) AS batches,"
            " coalesce(sum(duplicates), 0) AS duplicates FROM public.chaos_tick"
        )
        ticks = await cur.fetchone()
        assert ticks is not None
        differences = await replay.verify(conn)
        # Killed backends flush their statistics as they exit; give the last ones a moment.
        await asyncio.sleep(0.5)
        aborted = await _rollbacks(conn) - rollbacks_before
        kinds = Counter(d.kind for d in definitions)

        with capsys.disabled():
            print(
                f"chaos: {len(definitions)} schedules ({kinds['cron']} cron,"
                f" {kinds['interval']} interval, {len(ZONES)} zones),"
                f" {start:%Y-%m-%d %H:%M} UTC + {DAYS} days, clock steps of {STEP}\n"
                f"chaos: expected occurrences {found.expected}; runs {found.runs}"
                f" ({found.origins['schedule']} on time, {found.origins['catchup']} catchup);"
                f" missing {sum(map(len, found.missing.values()))},"
                f" unexpected {sum(map(len, found.unexpected.values()))},"
                f" duplicates {found.runs - found.distinct_runs}\n"
                f"chaos: {tickers.spawned} ticker processes, {tickers.kills} SIGKILLs"
                f" ({tickers.kills_in_transaction} with a tick transaction open),"
                f" {aborted} transactions rolled back; {ticks['ticks']} ticks and"
                f" {ticks['batches']} batches completed, {ticks['duplicates']} duplicates"
                f" absorbed by ON CONFLICT; {found.run_created_events} run.created events\n"
                f"chaos: {chaos_seconds:.1f} s with tickers (drain {drained:.1f} s),"
                f" comparison {oracle_seconds:.1f} s, replay.verify: {len(differences)}"
                " differences"
            )

        assert not found.missing, (
            f"seed {seed}: occurrences never materialised:\n{_describe(found.missing, definitions)}"
        )
        assert not found.unexpected, (
            f"seed {seed}: runs no occurrence explains:\n{_describe(found.unexpected, definitions)}"
        )
        assert not found.duplicated, (
            f"seed {seed}: occurrences materialised twice:\n"
            f"{_describe(found.duplicated, definitions)}"
        )
        assert found.runs == found.distinct_runs == found.expected
        assert found.run_created_events == found.runs
        assert found.missed_events == 0, "missed_policy=all with a large cap drops nothing"
        assert not found.jitter_out_of_range, found.jitter_out_of_range[:5]
        assert tickers.kills >= KILLS[0]
        assert aborted >= 1, "no kill landed while a tick transaction was open"
        assert differences == [], [str(d) for d in differences[:20]]
    finally:
        tickers.reap()
        await conn.close()
