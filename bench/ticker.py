"""Benchmark (issue 3): materialising one minute boundary for N every-minute schedules.

    PGSCHED_BENCH_DSN=postgresql://postgres@127.0.0.1:5432/postgres \
        python -m bench.ticker [--sizes 1000,10000,100000] [--repeat 3] [--batches 1000,5000]

Target (issue 3): 100k schedules in under 2 s on the development machine, cost growing linearly
or better.

What it does, on the server named by PGSCHED_BENCH_DSN (a superuser DSN; default the machine's
server):

1. creates a throwaway database `pgsched_bench_<rand>_base` and migrates it with alembic, as
   `pgsched migrate` does (`app.cli.migrate`);
2. per size N, copies it (CREATE DATABASE … TEMPLATE) and seeds N schedules with one set-based
   statement (SEED_SCHEDULES below): kind 'cron', `* * * * *` UTC, job type 'noop', every other
   column from `app.domain.schedule.DEFAULTS`, next_due_at = B (a whole minute, now + 2 min), and
   the matching `schedule.created` events, exactly as the store's create_schedule writes them; then
   VACUUM ANALYZE. The store's one-row-per-call path would take minutes for 100k;
3. per repeat and per batch size, copies the seeded database again (so every measurement starts
   from the same state) and times, on one autocommit connection:
   - `first`: `app.ticker.tick(conn, now=B, batch=…)`, the boundary every schedule is due at
     (asserts N runs created, none missed or duplicated);
   - `steady`: `tick(conn, now=B + 1 min)`, the next boundary, after the schedules advanced
     (dead tuples and grown indexes included, as in a running system);
4. on the smallest size, folds the event log (`app.db.replay.verify`, what `pgsched verify` runs)
   and asserts no difference: the benchmark drove the real path;
5. once, on a fresh copy of the largest size: a time split of the first tick (per SQL statement,
   wall and client CPU; row decoding; BEGIN/COMMIT; Python planning as the remainder; garbage
   collector pauses) and, on another copy, a cProfile of it;
6. drops every database it created `WITH (FORCE)`, also on failure or Ctrl-C.

Times are wall-clock seconds for the whole tick (database clock read, locking, planning, inserts,
events, commits). Reported: min and median over repeats, runs inserted per second (from the
median), us per schedule, and the linearity ratio (us per schedule at the largest size over us
per schedule at the smallest). Results: bench/results/ticker.json (and the raw cProfile in
bench/results/tmp/, which git ignores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import inspect
import itertools
import os
import pstats
import secrets
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bench._common import (
    RESULTS,
    command_line,
    machine,
    now_iso,
    source_digests,
    table,
    write_results,
)
from pgsched.app import ticker
from pgsched.app.cli import migrate
from pgsched.app.db import replay, store
from pgsched.app.db.sql import names, query
from pgsched.app.db.store import Conn
from pgsched.app.domain import schedule
from pgsched.app.settings import libpq_url, with_database

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
MINUTE = timedelta(minutes=1)
REPO = RESULTS.parent.parent

# N schedules and their schedule.created events in one statement. The column list and the event
# are those of the store's create_schedule (app/db/queries/schedules.sql); the values come from
# app.schedule.complete(), so every column but the name is what the API would store. Only the
# name varies: bench-1 … bench-N.
SEED_SCHEDULES = """
WITH s AS (
    INSERT INTO pgsched.schedule (
        name, job_type, payload, kind, cron, interval_seconds, run_at, timezone, starts_at, ends_at,
        jitter_seconds, queue, priority, max_attempts, retry_delay_seconds, retry_factor,
        retry_max_delay_seconds, timeout_seconds, overlap_policy, missed_policy, missed_cap,
        grace_seconds, max_concurrency, enabled, paused_at, next_due_at, created_at, updated_at)
    SELECT 'bench-' || g, d.job_type, d.payload, d.kind, d.cron, d.interval_seconds, d.run_at,
           d.timezone, d.starts_at, d.ends_at, d.jitter_seconds, d.queue, d.priority,
           d.max_attempts, d.retry_delay_seconds, d.retry_factor, d.retry_max_delay_seconds,
           d.timeout_seconds, d.overlap_policy, d.missed_policy, d.missed_cap, d.grace_seconds,
           d.max_concurrency, d.enabled,
           NULL,           -- paused_at: the schedules are enabled
           d.next_due_at,  -- the boundary B
           now(), now()    -- created_at, updated_at
    FROM generate_series(1, %(n)s::integer) AS g
    CROSS JOIN jsonb_populate_record(NULL::pgsched.schedule, %(fields)s::jsonb) AS d
    ORDER BY g
    RETURNING *
)
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta, trace_id)
SELECT s.created_at, 'schedule', s.id, 'schedule.created', 'bench', to_jsonb(s), '{}'::jsonb, NULL
FROM s
ORDER BY s.id
"""

# The code this benchmark measures; their digests go into the results.
DROP_RUN_FK = "ALTER TABLE pgsched.run DROP CONSTRAINT run_schedule_id_fkey"

SOURCES = (
    "app/ticker.py",
    "app/db/queries",
    "app/db/store",
    "app/domain/occurrences.py",
    "app/domain/schedule.py",
    "alembic/versions",
)

SERVER_SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "autovacuum",
    "max_wal_size",
    "work_mem",
)


# -- throwaway databases -----------------------------------------------------------------------


class Databases:
    """Databases created by this run, all named pgsched_bench_<rand>_*; dropped at the end."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin = libpq_url(admin_dsn)
        self.prefix = f"pgsched_bench_{secrets.token_hex(4)}"
        self.created: list[str] = []

    def url(self, name: str) -> str:
        return with_database(self.admin, name)

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(stmt)
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            try:
                self.drop(name)
            except psycopg.Error as exc:  # keep dropping the others; say which one is left
                print(f"could not drop {name}: {exc}")

    def server_info(self) -> dict[str, Any]:
        with psycopg.connect(self.admin, autocommit=True) as c:
            version = c.execute("SHOW server_version").fetchone()
            rows = c.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)",
                [list(SERVER_SETTINGS)],
            ).fetchall()
        settings = {name: f"{setting}{' ' + unit if unit else ''}" for name, setting, unit in rows}
        return {"server_version": version[0] if version else None, "settings": settings}


async def connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[Conn]:
    conn = await connect(url)
    try:
        yield conn
    finally:
        await conn.close()


def _check_seed_columns() -> None:
    """SEED_SCHEDULES must set every column app.domain.schedule.DEFAULTS knows (it may grow)."""
    listed = SEED_SCHEDULES.split("INSERT INTO pgsched.schedule (", 1)[1].split(")", 1)[0]
    columns = {c.strip() for c in listed.split(",")}
    if missing := set(schedule.DEFAULTS) - columns:
        raise RuntimeError(f"bench/ticker.py SEED_SCHEDULES lacks columns {sorted(missing)}")


async def seed(url: str, n: int, boundary: datetime) -> float:
    """N every-minute schedules due at `boundary`, with their events; returns seconds taken."""
    _check_seed_columns()
    fields = schedule.complete(
        {
            "name": "bench",  # replaced per row in SEED_SCHEDULES
            "job_type": "noop",
            "kind": "cron",
            "cron": "* * * * *",
            "timezone": "UTC",
            "next_due_at": boundary,
        }
    )
    started = time.perf_counter()
    async with connection(url) as conn:
        await conn.execute(SEED_SCHEDULES, {"n": n, "fields": store.jsonb(fields)})
        await conn.execute("VACUUM ANALYZE")
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM pgsched.schedule) AS schedules,"
            " (SELECT count(*) FROM pgsched.event WHERE type = 'schedule.created') AS events"
        )
        counts = await cur.fetchone()
    if counts != {"schedules": n, "events": n}:
        raise RuntimeError(f"seeding {n} schedules produced {counts}")
    return time.perf_counter() - started


# -- one measurement ---------------------------------------------------------------------------


def _cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the server backends `pids` have used so far.

    The server runs on this machine; its backends' CPU time, unlike wall time, does not grow
    when a neighbour's load makes them wait for a core, so it is the steadier per-schedule cost.
    """
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


async def _backend_pids(conns: Sequence[Any]) -> list[int]:
    pids = []
    for conn in conns:
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cur.fetchone()
        pids.append(row["pid"])
    return pids


async def timed_tick(conns: Sequence[Any], n: int, at: datetime, batch: int) -> dict[str, Any]:
    pids = await _backend_pids(conns)
    server_cpu, client_cpu = _cpu_s(pids), time.process_time()
    started = time.perf_counter()
    result = await ticker.tick_together(conns, now=at, batch=batch)
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = _cpu_s(pids) - server_cpu, time.process_time() - client_cpu
    got = (result.schedules, result.created, result.duplicates, result.missed)
    if got != (n, n, 0, 0):
        raise AssertionError(f"tick at {at}: (schedules, created, duplicates, missed) = {got}")
    return {
        "s": elapsed,
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "created": result.created,
        "batches": result.batches,
    }


async def measure(
    url: str, n: int, batch: int, tickers: int, boundary: datetime, *, fk: str, verify: bool
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(connection(url)) for _ in range(tickers)]
        conn = conns[0]
        if fk == "drop":  # what-if: the run -> schedule foreign key's share (ADR 0015)
            await conn.execute(DROP_RUN_FK)
        first = await timed_tick(conns, n, boundary, batch)
        steady = await timed_tick(conns, n, boundary + MINUTE, batch)
        out = {"first": first, "steady": steady}
        if verify:
            differences = await replay.verify(conn)
            if differences:
                raise AssertionError(f"verify found {len(differences)}: {differences[:5]}")
            cur = await conn.execute("SELECT count(*) AS runs FROM pgsched.run")
            row = await cur.fetchone()
            out["verify"] = {"differences": 0, "runs": row["runs"] if row else None}
    return out


# -- where the time goes -----------------------------------------------------------------------

_NAME_OF_SQL = {query(name): name for name in names()}


class Split:
    """Wall and client-CPU seconds per (statement, phase); GC pauses on the side."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.each: dict[str, list[float]] = defaultdict(list)  # wall seconds per call
        self.gc_s = 0.0
        self._gc_started = 0.0

    @contextlib.contextmanager
    def timing(self, key: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.each[key].append(time.perf_counter() - wall)
            self.wall[key] += self.each[key][-1]
            self.cpu[key] += time.process_time() - cpu
            self.calls[key] += 1

    def on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_started


class _TimedCursor:
    def __init__(self, cursor: Any, name: str, split: Split) -> None:
        self._cursor, self._name, self._split = cursor, name, split

    async def fetchall(self) -> list[Any]:
        with self._split.timing(f"{self._name}: decode rows"):
            return await self._cursor.fetchall()  # type: ignore[no-any-return]

    async def fetchone(self) -> Any:
        with self._split.timing(f"{self._name}: decode rows"):
            return await self._cursor.fetchone()

    def __getattr__(self, attribute: str) -> Any:  # rowcount and the like, untimed
        return getattr(self._cursor, attribute)


class _TimedTransaction:
    def __init__(self, inner: Any, split: Split) -> None:
        self._inner, self._split = inner, split

    async def __aenter__(self) -> Any:
        with self._split.timing("BEGIN"):
            return await self._inner.__aenter__()

    async def __aexit__(self, *exc: object) -> Any:
        with self._split.timing("COMMIT"):
            return await self._inner.__aexit__(*exc)


class TimedConn:
    """Stands in for the connection `tick` gets: times every statement it runs, by query name.

    `execute` covers adapting the parameters, the round trip and the server's work; the client
    CPU spent in it (time.process_time) is parameter adaptation and protocol, the rest is waiting
    for the server. Row decoding happens later, in fetchall/fetchone.
    """

    def __init__(self, conn: Conn, split: Split) -> None:
        self._conn, self._split = conn, split

    async def execute(self, statement: Any, params: Any = None) -> _TimedCursor:
        name = _NAME_OF_SQL.get(statement, "other")
        with self._split.timing(f"{name}: execute"):
            cursor = await self._conn.execute(statement, params)
        return _TimedCursor(cursor, name, self._split)

    def transaction(self) -> _TimedTransaction:
        return _TimedTransaction(self._conn.transaction(), self._split)

    def __getattr__(self, attribute: str) -> Any:  # anything else the ticker may use, untimed
        return getattr(self._conn, attribute)


async def time_split(url: str, n: int, batch: int, boundary: datetime) -> dict[str, Any]:
    split = Split()
    async with connection(url) as conn:
        gc.callbacks.append(split.on_gc)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            tick = await timed_tick([TimedConn(conn, split)], n, boundary, batch)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            gc.callbacks.remove(split.on_gc)
    accounted = sum(split.wall.values())
    rows = [
        {
            "part": key,
            "calls": split.calls[key],
            "wall_s": round(split.wall[key], 3),
            "client_cpu_s": round(split.cpu[key], 3),
            "server_wait_s": round(max(0.0, split.wall[key] - split.cpu[key]), 3),
            # Per-call trend: flat means each batch costs the same however far the tick got.
            "first_calls_ms": [round(t * 1000, 1) for t in split.each[key][:3]],
            "last_calls_ms": [round(t * 1000, 1) for t in split.each[key][-3:]],
        }
        for key in sorted(split.wall, key=lambda k: -split.wall[k])
    ]
    rows.append(
        {
            "part": "Python planning and bookkeeping (the remainder: plan() per row, lists)",
            "calls": tick["batches"],
            "wall_s": round(wall - accounted, 3),
            "client_cpu_s": round(cpu - sum(split.cpu.values()), 3),
            "server_wait_s": None,
            "first_calls_ms": [],
            "last_calls_ms": [],
        }
    )
    client_cpu = cpu
    return {
        "schedules": n,
        "batch": batch,
        "tick_s": round(wall, 3),
        "client_cpu_s": round(client_cpu, 3),
        "waiting_for_server_s": round(wall - client_cpu, 3),
        "gc_pauses_s": round(split.gc_s, 3),
        "parts": rows,
    }


async def explain_lock(url: str, boundary: datetime, batch: int) -> list[str]:
    """EXPLAIN ANALYZE of the ticker's first lock_due_groups (rolled back: nothing stays)."""
    async with connection(url) as conn, conn.transaction():
        cur = await conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + query("lock_due_groups"),
            {"horizon": boundary + ticker.DEFAULT_LOOKAHEAD, "limit": batch},
        )
        plan = [row["QUERY PLAN"] for row in await cur.fetchall()]
        raise psycopg.Rollback  # the transaction block rolls back and swallows it
    return plan


# Functions worth naming in the profile summary, whatever their rank.
_WATCH = (
    "_materialise",
    "plan",
    "spec_of",
    "next_after",
    "occurrences",
    "_iterate",
    "jitter_offset",
    "insert_runs",
    "fetchall",
    "execute",
)


async def profile(url: str, n: int, batch: int, boundary: datetime) -> dict[str, Any]:
    profiler = cProfile.Profile()
    async with connection(url) as conn:
        profiler.enable()
        tick = await timed_tick([conn], n, boundary, batch)
        profiler.disable()
    (RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
    dump = RESULTS / "tmp" / f"ticker_{n}.prof"
    profiler.dump_stats(str(dump))
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]

    def describe(func: tuple[str, int, str], row: tuple[Any, ...]) -> dict[str, Any]:
        filename, line, fn = func
        short = filename.split("/site-packages/")[-1].replace(f"{REPO}/", "")
        return {
            "function": f"{short}:{line}({fn})",
            "ncalls": row[1],
            "tottime_s": round(row[2], 3),
            "cumtime_s": round(row[3], 3),
        }

    by_tottime = sorted(entries.items(), key=lambda kv: -kv[1][2])[:20]
    watched = [
        describe(func, row)
        for func, row in sorted(entries.items(), key=lambda kv: -kv[1][3])
        if func[2] in _WATCH and ("/app/" in func[0] or "psycopg" in func[0])
    ]
    return {
        "schedules": n,
        "batch": batch,
        "tick_s_under_cprofile": round(tick["s"], 3),
        "note": "cProfile inflates Python-heavy parts; read shares, not absolute times",
        "top_by_tottime": [describe(f, r) for f, r in by_tottime],
        "watched_by_cumtime": watched[:15],
        "pstats_file": str(dump.relative_to(REPO)),
    }


# -- the run -----------------------------------------------------------------------------------


def summarise(raw: list[dict[str, Any]], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (size, batch, tick): min/median seconds, runs/s, us/schedule, linearity."""
    groups: dict[tuple[int, int, int, str, str], list[float]] = defaultdict(list)
    cpu: dict[tuple[int, int, int, str, str], list[tuple[float, float]]] = defaultdict(list)
    for m in raw:
        for which in ("first", "steady"):
            key = (m["schedules"], m["batch"], m["tickers"], m.get("fk", "keep"), which)
            groups[key].append(m[which]["s"])
            cpu[key].append((m[which]["server_cpu_s"], m[which]["client_cpu_s"]))
    rows: list[dict[str, Any]] = []
    order = sorted(groups.items(), key=lambda kv: (kv[0][4], kv[0][3], kv[0][2], *kv[0][:2]))
    for key, times in order:
        n, batch, tickers, fk, which = key
        median = statistics.median(times)
        smallest = statistics.median(groups[(min(sizes), batch, tickers, fk, which)])
        rows.append(
            {
                "tick": which,
                "schedules": n,
                "batch": batch,
                "tickers": tickers,
                "fk": fk,
                "repeats": len(times),
                "s_min": round(min(times), 3),
                "s_median": round(median, 3),
                "runs_per_s": round(n / median),
                "us_per_schedule": round(median / n * 1e6, 1),
                "server_cpu_s": round(statistics.median(s for s, _ in cpu[key]), 2),
                "client_cpu_s": round(statistics.median(c for _, c in cpu[key]), 2),
                # >1: each schedule costs more at this size than at the smallest one.
                "per_schedule_vs_smallest": round((median / n) / (smallest / min(sizes)), 2),
            }
        )
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dbs = Databases(os.environ.get("PGSCHED_BENCH_DSN", DEFAULT_DSN))
    info = machine() | dbs.server_info()
    # A whole minute in the current month (or the next, which has partitions too).
    boundary = datetime.now(UTC).replace(second=0, microsecond=0) + 2 * MINUTE
    raw: list[dict[str, Any]] = []
    seeding: dict[int, float] = {}
    extra: dict[str, Any] = {}
    try:
        base = dbs.create("base")
        started = time.perf_counter()
        migrate(dbs.url(base))
        extra["migrate_s"] = round(time.perf_counter() - started, 2)
        seeded: dict[int, str] = {}
        for n in args.sizes:
            seeded[n] = dbs.create(f"n{n}", template=base)
            seeding[n] = round(await seed(dbs.url(seeded[n]), n, boundary), 2)
            print(f"{n:>7} schedules seeded in {seeding[n]} s", flush=True)
        # Sizes and batch sizes interleave within each repeat, so a burst of load from a
        # neighbour on this shared machine lands on one repeat of each, not on one size.
        for repeat in range(args.repeat):
            for n in args.sizes:
                for batch, tickers, fk in itertools.product(args.batches, args.tickers, args.fk):
                    db = dbs.create(f"n{n}_b{batch}_t{tickers}_{fk}_r{repeat}", template=seeded[n])
                    verify = n == min(args.sizes)
                    load = os.getloadavg()[0]
                    m = await measure(
                        dbs.url(db), n, batch, tickers, boundary, fk=fk, verify=verify
                    )
                    dbs.drop(db)
                    raw.append(
                        {
                            "schedules": n,
                            "batch": batch,
                            "tickers": tickers,
                            "fk": fk,
                            "repeat": repeat,
                            "load1": load,
                            **m,
                        }
                    )
                    print(
                        f"{n:>7} schedules, batch {batch:>5}, tickers {tickers}, fk {fk},"
                        f" repeat {repeat}:"
                        " first "
                        f"{m['first']['s']:.3f} s, steady {m['steady']['s']:.3f} s"
                        f" (load {load:.1f})" + (", verify: 0 differences" if verify else ""),
                        flush=True,
                    )
        if not args.no_profile:
            n = max(args.sizes)
            batch = inspect.signature(ticker.tick).parameters["batch"].default
            db = dbs.create(f"n{n}_split", template=seeded[n])
            extra["lock_query_plan"] = await explain_lock(dbs.url(db), boundary, batch)
            extra["time_split"] = await time_split(dbs.url(db), n, batch, boundary)
            dbs.drop(db)
            db = dbs.create(f"n{n}_prof", template=seeded[n])
            extra["cprofile"] = await profile(dbs.url(db), n, batch, boundary)
            dbs.drop(db)
            print(f"{n:>7} schedules profiled", flush=True)
    finally:
        dbs.drop_all()
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "ticker",
        "date": now_iso(),
        "command": command_line("bench.ticker"),
        "machine": info,
        "source_sha256": source_digests(*SOURCES),
        "params": {
            "sizes": args.sizes,
            "repeat": args.repeat,
            "batches": args.batches,
            "tickers": args.tickers,
            "fk": args.fk,
            "schedule": (
                "cron '* * * * *' UTC, job_type noop, app.domain.schedule.DEFAULTS otherwise"
            ),
            "boundary": boundary.isoformat(),
        },
        "target": "100k schedules in under 2 s per boundary; per-schedule cost flat or falling",
        "seed_s": seeding,
        "summary": summarise(raw, args.sizes),
        "raw": raw,
        **extra,
    }


def report(payload: dict[str, Any]) -> str:
    summary = payload["summary"]
    rows = [
        [
            r["tick"],
            f"{r['schedules']:,}",
            r["batch"],
            r["tickers"],
            r["fk"],
            r["s_median"],
            r["s_min"],
            f"{r['runs_per_s']:,}",
            r["us_per_schedule"],
            r["server_cpu_s"],
            r["client_cpu_s"],
            r["per_schedule_vs_smallest"],
        ]
        for r in summary
    ]
    lines = [
        f"{payload['command']}   ({payload['date']}, PostgreSQL "
        f"{payload['machine']['server_version']}, {payload['machine']['cpus']} CPUs, "
        f"{payload['params']['repeat']} repeats)",
        "",
        table(
            [
                "tick",
                "schedules",
                "batch",
                "tickers",
                "run FK",
                "s (median)",
                "s (min)",
                "runs/s",
                "us/schedule",
                "server CPU s",
                "client CPU s",
                "per-schedule cost vs smallest",
            ],
            rows,
        ),
    ]
    if split := payload.get("time_split"):
        lines += [
            "",
            f"Where the time goes: first tick, {split['schedules']:,} schedules, batch "
            f"{split['batch']}: {split['tick_s']} s wall = {split['client_cpu_s']} s client CPU"
            f" + {split['waiting_for_server_s']} s waiting for the server"
            f" (GC pauses {split['gc_pauses_s']} s, inside the client CPU)",
            "",
            table(
                [
                    "part",
                    "calls",
                    "wall s",
                    "client CPU s",
                    "server wait s",
                    "first calls ms",
                    "last calls ms",
                ],
                [
                    [
                        p["part"],
                        p["calls"],
                        p["wall_s"],
                        p["client_cpu_s"],
                        "-" if p["server_wait_s"] is None else p["server_wait_s"],
                        " ".join(str(t) for t in p["first_calls_ms"]) or "-",
                        " ".join(str(t) for t in p["last_calls_ms"]) or "-",
                    ]
                    for p in split["parts"]
                ],
            ),
        ]
    if plan := payload.get("lock_query_plan"):
        lines += ["", "EXPLAIN ANALYZE, first lock_due_groups of the largest size:", ""]
        lines += [f"    {line}" for line in plan]
    if prof := payload.get("cprofile"):
        lines += [
            "",
            f"cProfile, same tick ({prof['tick_s_under_cprofile']} s under the profiler); "
            "cumulative time of the named functions:",
            "",
            table(
                ["function", "ncalls", "tottime s", "cumtime s"],
                [
                    [w["function"], w["ncalls"], w["tottime_s"], w["cumtime_s"]]
                    for w in prof["watched_by_cumtime"]
                ],
            ),
        ]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ticker",
        description="Materialise one minute boundary for N every-minute schedules.",
    )
    p.add_argument(
        "--sizes", type=_ints, default=[1000, 10_000, 100_000], help="schedule counts, a,b,c"
    )
    p.add_argument("--repeat", type=int, default=3, help="fresh databases per size and batch")
    p.add_argument("--batches", type=_ints, default=[1000, 5000], help="ticker batch sizes")
    p.add_argument(
        "--tickers",
        type=_ints,
        default=[1, 2],
        help="connections ticking at once (app.ticker.tick_together), a,b",
    )
    p.add_argument(
        "--fk",
        type=lambda text: text.split(","),
        default=["keep"],
        help="keep,drop: also measure without the run -> schedule foreign key (what-if)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the largest size's profile")
    args = p.parse_args(argv)
    args.sizes = sorted(args.sizes)
    payload = asyncio.run(run(args))
    path = write_results("ticker.json", payload)
    print()
    print(report(payload))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
