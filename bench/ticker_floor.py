"""Benchmark (issue 3): the write floor of one minute boundary, next to the real ticker.

    python -m bench.ticker_floor [--sizes 10000,100000] [--repeat 3] [--batch 5000]

Question: is "100k every-minute schedules materialised in under 2 s" (issue 3) reachable on this
machine at all? ADR 0015 says the ticker is bound by PostgreSQL writing, per schedule, a run row,
its `run.created` event, the schedule's new row version and a `schedule.advanced` event. This
benchmark measures what that write set costs when nothing else is done (no Python, no planning,
no overlap checks, as few statements and commits as possible), side by side with the real tick.

One server: a private cluster from the installed binaries (`app.localpg.throwaway`) with durable
settings (fsync, synchronous_commit, full_page_writes on), `autovacuum = off` as on the server
`bench.ticker` ran against (nothing vacuums or analyses a copy mid-measurement). A template
database migrated to head with alembic (`app.cli.migrate`), copied per size and seeded by
`bench.ticker.seed` (N schedules `* * * * *` UTC, job type noop, app.domain.schedule.DEFAULTS,
due at the boundary B, with their `schedule.created` events; VACUUM ANALYZE).

Variants, each on a fresh copy of the seeded database (CREATE DATABASE … TEMPLATE, then a
CHECKPOINT so every variant starts from the same clean state), autocommit connections opened
before the clock starts, wall-clock seconds including the COMMIT (the WAL flush):

- `real tick x1` / `x2`: `app.ticker.tick_together` on 1 or 2 connections, through
  `bench.ticker.timed_tick` (what `bench.ticker --tickers 1,2` times; asserts N runs, 0
  duplicates, 0 missed), batch = the ticker's default;
- `floor 1: runs`: one INSERT … SELECT of the N run rows into `pgsched.run` (the partitioned
  table, all its indexes, its foreign key to schedule), ON CONFLICT DO NOTHING on the occurrence
  key, the same columns and values `materialise_batch` writes; no events, no schedule update;
- `floor 2: + run.created`: the same plus the N `run.created` events (`to_jsonb` of the run, as
  `materialise_batch` writes them) in the same statement (CTE);
- `floor 3: whole write set`: one statement: UPDATE of the N schedules' next_due_at (+1 min, the
  next occurrence of `* * * * *`, computed in SQL), the N runs from its RETURNING, their
  `run.created` events and the N `schedule.advanced` events: the ticker's whole required write
  set, one transaction, one connection, no Python planning;
- `floor 1 x2` / `floor 3 x2`: floor 1 or 3 split by id range across 2 connections at once
  (the machine has 2 cores);
- `floor 3 batched x1` / `x2`: floor 3 in transactions of `--batch` schedules (locked with
  FOR UPDATE SKIP LOCKED, as several tickers share work), on 1 or 2 connections: what the
  issue's "short transactions, in batches, several tickers" adds to the floor.

Each floor statement runs in its own transaction (BEGIN, statement, COMMIT), so its result also
says how much of the time the COMMIT (the WAL flush) took.

Interleaving: every repeat runs every (size, variant) once, in an order rotated per repeat, so a
neighbour's burst of load lands on one repeat of each. Per measurement also: the 1-minute load
average before it, the server backends' CPU seconds, and WAL bytes / full-page images written
(pg_stat_wal; the cluster is private, so only this measurement writes). After each: the counts
of runs, `run.created` and `schedule.advanced` events are checked.

Once, on a fresh copy of the largest size: EXPLAIN (ANALYZE, BUFFERS, WAL) of floor 3, rolled
back (the time per write node and the foreign-key trigger; no commit in it, and EXPLAIN's
per-row clock reads inflate it).

Results: bench/results/ticker_floor.json and a Markdown table on stdout. The cluster is stopped
and deleted at the end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import signal
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import psycopg

from bench._common import command_line, machine, now_iso, source_digests, table, write_results
from bench.ticker import (
    MINUTE,
    SOURCES,
    Databases,
    _backend_pids,
    _cpu_s,
    connection,
    seed,
    timed_tick,
)
from pgsched.app import localpg, ticker
from pgsched.app.cli import migrate
from pgsched.app.db.store import Conn
from pgsched.otel.runs import trace_context_json

SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "wal_sync_method",
    "wal_buffers",
    "shared_buffers",
    "work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "jit",
)

# The columns and values of materialise_batch's run insert (app/db/queries/ticker.sql) for an
# every-minute schedule due at its next_due_at: jitter 0, so available_at = due_at.
_RUN_COLUMNS = (
    "schedule_id, due_at, adhoc, origin, state, queue, priority, available_at, max_attempts,"
    " trace_context, created_at"
)
_DUE = (
    "s.enabled AND s.deleted_at IS NULL AND s.next_due_at <= %(horizon)s::timestamptz"
    " AND s.id BETWEEN %(lo)s AND %(hi)s"
)

FLOOR_RUNS = f"""
WITH r AS (
    INSERT INTO pgsched.run ({_RUN_COLUMNS})
    SELECT s.id, s.next_due_at, false, 'schedule', 'waiting', s.queue, s.priority,
           s.next_due_at, s.max_attempts, %(trace_context)s::jsonb,
           coalesce(%(now)s::timestamptz, now())
    FROM pgsched.schedule s
    WHERE {_DUE}
    ON CONFLICT (schedule_id, due_at, occurrence) DO NOTHING
    RETURNING id
)
SELECT (SELECT count(*) FROM r) AS runs, 0 AS run_events, 0 AS advanced
"""

FLOOR_RUNS_EVENTS = f"""
WITH r AS (
    INSERT INTO pgsched.run ({_RUN_COLUMNS})
    SELECT s.id, s.next_due_at, false, 'schedule', 'waiting', s.queue, s.priority,
           s.next_due_at, s.max_attempts, %(trace_context)s::jsonb,
           coalesce(%(now)s::timestamptz, now())
    FROM pgsched.schedule s
    WHERE {_DUE}
    ON CONFLICT (schedule_id, due_at, occurrence) DO NOTHING
    RETURNING *
), created AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r), r.trace_context ->> 'trace_id'
    FROM r
    RETURNING 1
)
SELECT (SELECT count(*) FROM r) AS runs, (SELECT count(*) FROM created) AS run_events,
       0 AS advanced
"""

# The whole write set. `{due}` is either the plain due test (one statement for all) or a
# batch locked with SKIP LOCKED (the batched variant).
_FLOOR_ALL = """
WITH {lock}advanced AS (
    UPDATE pgsched.schedule s
    SET next_due_at = s.next_due_at + interval '1 minute'  -- next occurrence of * * * * *
    {from_}WHERE {due}
    RETURNING s.id, s.next_due_at - interval '1 minute' AS due_at, s.next_due_at,
              s.queue, s.priority, s.max_attempts
), r AS (
    INSERT INTO pgsched.run ({columns})
    SELECT a.id, a.due_at, false, 'schedule', 'waiting', a.queue, a.priority, a.due_at,
           a.max_attempts, %(trace_context)s::jsonb, coalesce(%(now)s::timestamptz, now())
    FROM advanced a
    ON CONFLICT (schedule_id, due_at, occurrence) DO NOTHING
    RETURNING *
), created AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, trace_id)
    SELECT coalesce(%(now)s::timestamptz, now()), 'run', r.id, 'run.created', %(actor)s,
           to_jsonb(r), r.trace_context ->> 'trace_id'
    FROM r
    RETURNING 1
), advanced_events AS (
    INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
    SELECT coalesce(%(now)s::timestamptz, now()), 'schedule', a.id, 'schedule.advanced',
           %(actor)s, jsonb_build_object('next_due_at', a.next_due_at)
    FROM advanced a
    RETURNING 1
)
-- Read in this order, as materialise_batch does: run events before schedule events.
SELECT (SELECT count(*) FROM r) AS runs, (SELECT count(*) FROM created) AS run_events,
       (SELECT count(*) FROM advanced_events) AS advanced
"""

FLOOR_ALL = _FLOOR_ALL.format(lock="", from_="", due=_DUE, columns=_RUN_COLUMNS)

FLOOR_ALL_BATCH = _FLOOR_ALL.format(
    lock="""locked AS (
    SELECT s.id FROM pgsched.schedule s
    WHERE s.enabled AND s.deleted_at IS NULL AND s.next_due_at <= %(horizon)s::timestamptz
    ORDER BY s.next_due_at, s.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), """,
    from_="FROM locked l\n    ",
    due="s.id = l.id",
    columns=_RUN_COLUMNS,
)

COUNTS = """
SELECT (SELECT count(*) FROM pgsched.run) AS runs,
       (SELECT count(*) FROM pgsched.event WHERE type = 'run.created') AS run_events,
       (SELECT count(*) FROM pgsched.event WHERE type = 'schedule.advanced') AS advanced
"""

# WAL position (exact) and pg_stat_wal's counters (full-page images, syncs), cluster-wide: the
# cluster is private, so only the measurement writes. Backends report their pg_stat_wal counts
# at most once a second unless asked (flush_stats), so each measured connection is asked first.
WAL = (
    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS bytes,"
    " wal_fpi AS fpi, wal_sync AS syncs FROM pg_stat_wal"
)


# -- the variants ------------------------------------------------------------------------------

Runner = Callable[[Sequence[Conn], "Context"], Awaitable[dict[str, float]]]


class Context:
    """What every variant needs to know about the measured database."""

    def __init__(self, n: int, boundary: datetime, batch: int, lo: int, hi: int) -> None:
        self.n, self.boundary, self.batch, self.lo, self.hi = n, boundary, batch, lo, hi

    def params(self, lo: int | None = None, hi: int | None = None) -> dict[str, Any]:
        return {
            "horizon": self.boundary + ticker.DEFAULT_LOOKAHEAD,
            "now": self.boundary,
            "lo": self.lo if lo is None else lo,
            "hi": self.hi if hi is None else hi,
            "limit": self.batch,
            "trace_context": trace_context_json(),
            "actor": "ticker",
        }

    def halves(self) -> list[tuple[int, int]]:
        mid = (self.lo + self.hi) // 2
        return [(self.lo, mid), (mid + 1, self.hi)]


async def _one(conn: Conn, statement: str, params: dict[str, Any]) -> dict[str, float]:
    """One statement in its own transaction; the statement's and the COMMIT's seconds apart."""
    started = time.perf_counter()
    async with conn.transaction():
        cur = await conn.execute(statement, params)
        row = await cur.fetchone()
        statement_s = time.perf_counter() - started
    commit_s = time.perf_counter() - started - statement_s
    if row is None:
        raise RuntimeError("the floor statement returned no row")
    return {k: int(v) for k, v in row.items()} | {
        "statement_s": statement_s,
        "commit_s": commit_s,
    }


def _add(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    return {k: total.get(k, 0) + v for k, v in part.items()}


async def real_tick(conns: Sequence[Conn], ctx: Context) -> dict[str, float]:
    tick = await timed_tick(conns, ctx.n, ctx.boundary, ctx.batch)  # asserts N, 0 dup, 0 missed
    return {"batches": int(tick["batches"])}


def single(statement: str) -> Runner:
    async def run(conns: Sequence[Conn], ctx: Context) -> dict[str, float]:
        return await _one(conns[0], statement, ctx.params())

    return run


def split(statement: str) -> Runner:
    """`statement` on 2 connections at once, each for one half of the schedule ids."""

    async def run(conns: Sequence[Conn], ctx: Context) -> dict[str, float]:
        parts = await asyncio.gather(
            *(
                _one(conn, statement, ctx.params(lo, hi))
                for conn, (lo, hi) in zip(conns, ctx.halves(), strict=True)
            )
        )
        total: dict[str, float] = {}
        for part in parts:
            total = _add(total, part)
        return total

    return run


async def _batches(conn: Conn, ctx: Context) -> dict[str, float]:
    total: dict[str, float] = {"batches": 0}
    while True:  # autocommit: one statement, one short transaction
        part = await _one(conn, FLOOR_ALL_BATCH, ctx.params())
        if part["advanced"]:
            total = _add(total, part | {"batches": 1})
        if part["advanced"] < ctx.batch:
            return total


async def floor_all_batched(conns: Sequence[Conn], ctx: Context) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in await asyncio.gather(*(_batches(conn, ctx) for conn in conns)):
        total = _add(total, part)
    return total


# name -> (connections, runner, expected (runs, run.created, schedule.advanced) as multiples of N)
VARIANTS: dict[str, tuple[int, Runner, tuple[int, int, int]]] = {
    "real tick x1": (1, real_tick, (1, 1, 1)),
    "real tick x2": (2, real_tick, (1, 1, 1)),
    "floor 1: runs": (1, single(FLOOR_RUNS), (1, 0, 0)),
    "floor 1 x2 (id halves)": (2, split(FLOOR_RUNS), (1, 0, 0)),
    "floor 2: + run.created": (1, single(FLOOR_RUNS_EVENTS), (1, 1, 0)),
    "floor 3: whole write set": (1, single(FLOOR_ALL), (1, 1, 1)),
    "floor 3 x2 (id halves)": (2, split(FLOOR_ALL), (1, 1, 1)),
    "floor 3 batched x1": (1, floor_all_batched, (1, 1, 1)),
    "floor 3 batched x2": (2, floor_all_batched, (1, 1, 1)),
}
BASELINES = ("real tick x1", "real tick x2")


# -- measuring ---------------------------------------------------------------------------------


async def flush_stats(conns: Sequence[Conn]) -> None:
    for conn in conns:
        await conn.execute("SELECT pg_stat_force_next_flush()")


def admin_row(admin: str, statement: str) -> dict[str, Any]:
    with psycopg.connect(admin, autocommit=True) as c, c.cursor() as cur:
        cur.execute(statement)
        row = cur.fetchone() if cur.description else None
        names = [d.name for d in cur.description or []]
    return dict(zip(names, row or (), strict=False))


async def measure(
    dbs: Databases, seeded: str, variant: str, ctx: Context, label: str
) -> dict[str, Any]:
    tickers, runner, expected = VARIANTS[variant]
    db = dbs.create(label, template=seeded)
    try:
        url = dbs.url(db)
        admin_row(dbs.admin, "CHECKPOINT")  # every variant starts after a checkpoint
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(connection(url)) for _ in range(tickers)]
            pids = await _backend_pids(conns)
            await flush_stats(conns)
            load = os.getloadavg()[0]
            wal = admin_row(dbs.admin, WAL)
            cpu = _cpu_s(pids)
            started = time.perf_counter()
            out = await runner(conns, ctx)
            elapsed = time.perf_counter() - started
            cpu = _cpu_s(pids) - cpu
            await flush_stats(conns)
            wal_after = admin_row(dbs.admin, WAL)
            cur = await conns[0].execute(COUNTS)
            counts = dict(await cur.fetchone() or {})
        keys = ("runs", "run_events", "advanced")
        want = {k: e * ctx.n for k, e in zip(keys, expected, strict=True)}
        if counts != want:
            raise AssertionError(f"{variant}, N={ctx.n}: wrote {counts}, expected {want}")
    finally:
        dbs.drop(db)
    return {
        "variant": variant,
        "schedules": ctx.n,
        "tickers": tickers,
        "s": elapsed,
        "server_cpu_s": round(cpu, 3),
        "wal_bytes": int(wal_after["bytes"]) - int(wal["bytes"]),
        "wal_fpi": int(wal_after["fpi"]) - int(wal["fpi"]),
        "wal_syncs": int(wal_after["syncs"]) - int(wal["syncs"]),
        "load1": round(load, 2),
        "result": out,
        "counts": counts,
    }


async def explain_floor(dbs: Databases, seeded: str, ctx: Context) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS, WAL) of floor 3 on a fresh copy, rolled back."""
    db = dbs.create("explain", template=seeded)
    try:
        admin_row(dbs.admin, "CHECKPOINT")
        async with connection(dbs.url(db)) as conn, conn.transaction():
            cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, WAL) " + FLOOR_ALL, ctx.params())
            plan = [row["QUERY PLAN"] for row in await cur.fetchall()]
            raise psycopg.Rollback
    finally:
        dbs.drop(db)
    return plan


async def id_range(url: str) -> tuple[int, int]:
    async with connection(url) as conn:
        cur = await conn.execute("SELECT min(id) AS lo, max(id) AS hi FROM pgsched.schedule")
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("no schedules")
    return int(row["lo"]), int(row["hi"])


def server_settings(admin: str) -> dict[str, str]:
    with psycopg.connect(admin, autocommit=True) as c:
        rows = c.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            [list(SETTINGS)],
        ).fetchall()
    return {n: f"{s}{' ' + u if u else ''}" for n, s, u in rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    started_at = now_iso()
    boundary = datetime.now(UTC).replace(second=0, microsecond=0) + 2 * MINUTE
    batch = args.batch or inspect.signature(ticker.tick).parameters["batch"].default
    raw: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    variants = [v for v in VARIANTS if not args.only or v in args.only]
    with localpg.throwaway(fast=False) as pg:
        dbs = Databases(pg.dsn("postgres"))
        try:
            admin_row(dbs.admin, "ALTER SYSTEM SET autovacuum = off")
            admin_row(dbs.admin, "SELECT pg_reload_conf()")
            info["server"] = server_settings(dbs.admin)
            info["cluster"] = "app.localpg.throwaway (installed binaries, private data directory)"
            base = dbs.create("base")
            started = time.perf_counter()
            await asyncio.to_thread(migrate, dbs.url(base))
            extra["migrate_s"] = round(time.perf_counter() - started, 2)
            seeded: dict[int, str] = {}
            contexts: dict[int, Context] = {}
            extra["seed_s"] = {}
            for n in args.sizes:
                seeded[n] = dbs.create(f"n{n}", template=base)
                extra["seed_s"][n] = round(await seed(dbs.url(seeded[n]), n, boundary), 2)
                lo, hi = await id_range(dbs.url(seeded[n]))
                contexts[n] = Context(n, boundary, batch, lo, hi)
                print(f"{n:>7} schedules seeded in {extra['seed_s'][n]} s", flush=True)
            for repeat in range(args.repeat):
                # Rotate the order per repeat: no variant always follows the same one.
                shift = repeat % len(variants)
                order = variants[shift:] + variants[:shift]
                for n in args.sizes:
                    for i, variant in enumerate(order):
                        m = await measure(
                            dbs, seeded[n], variant, contexts[n], f"n{n}_r{repeat}_v{i}"
                        )
                        raw.append(m | {"repeat": repeat})
                        print(
                            f"{n:>7} r{repeat} {variant:<26} {m['s']:7.3f} s"
                            f"  server CPU {m['server_cpu_s']:6.2f} s"
                            f"  WAL {m['wal_bytes'] / 1e6:7.1f} MB  load {m['load1']:.1f}",
                            flush=True,
                        )
            if not args.no_explain:
                n = max(args.sizes)
                extra["explain_floor3"] = {
                    "schedules": n,
                    "plan": await explain_floor(dbs, seeded[n], contexts[n]),
                }
        finally:
            dbs.drop_all()
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "benchmark": "ticker_floor",
        "date": started_at,
        "finished": now_iso(),
        "command": command_line("bench.ticker_floor"),
        "machine": info,
        "source_sha256": source_digests(*SOURCES, "bench/ticker.py", "bench/ticker_floor.py"),
        "params": {
            "sizes": args.sizes,
            "repeat": args.repeat,
            "batch": batch,
            "variants": variants,
            "schedule": (
                "cron '* * * * *' UTC, job_type noop, app.domain.schedule.DEFAULTS otherwise"
            ),
            "boundary": boundary.isoformat(),
        },
        "statements": {
            "floor 1": FLOOR_RUNS,
            "floor 2": FLOOR_RUNS_EVENTS,
            "floor 3": FLOOR_ALL,
            "floor 3 batched": FLOOR_ALL_BATCH,
        },
        "target": "100k schedules in under 2 s per boundary (issue 3)",
        "summary": summarise(raw),
        "raw": raw,
        **extra,
    }


def summarise(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for m in raw:
        groups[(m["variant"], m["schedules"])].append(m)
    medians = {key: statistics.median(m["s"] for m in ms) for key, ms in groups.items()}
    sizes = sorted({n for _, n in groups})
    rows = []
    for n in sizes:
        for variant in VARIANTS:
            ms = groups.get((variant, n))
            if not ms:
                continue
            median = medians[(variant, n)]
            row: dict[str, Any] = {
                "variant": variant,
                "schedules": n,
                "repeats": len(ms),
                "s_median": round(median, 3),
                "s_min": round(min(m["s"] for m in ms), 3),
                "us_per_schedule": round(median / n * 1e6, 1),
                "server_cpu_s": round(statistics.median(m["server_cpu_s"] for m in ms), 2),
                "wal_mb": round(statistics.median(m["wal_bytes"] for m in ms) / 1e6, 1),
                "wal_bytes_per_schedule": round(statistics.median(m["wal_bytes"] for m in ms) / n),
                "load1_median": round(statistics.median(m["load1"] for m in ms), 2),
            }
            if all("commit_s" in m["result"] for m in ms):  # summed over connections/batches
                commits = [m["result"]["commit_s"] for m in ms]
                row["commit_s_median"] = round(statistics.median(commits), 4)
            for base in BASELINES:
                if (base, n) in medians:
                    row[f"vs {base}"] = round(median / medians[(base, n)], 3)
            smallest = medians.get((variant, sizes[0]))
            if smallest:  # 1.0: linear; above 1: each schedule dearer at this size
                row["per_schedule_vs_smallest"] = round((median / n) / (smallest / sizes[0]), 2)
            rows.append(row)
    return rows


def report(payload: dict[str, Any]) -> str:
    rows = [
        [
            r["variant"],
            f"{r['schedules']:,}",
            r["s_median"],
            r["s_min"],
            r["us_per_schedule"],
            r.get("vs real tick x1", "-"),
            r.get("vs real tick x2", "-"),
            r["server_cpu_s"],
            r["wal_mb"],
            r.get("commit_s_median", "-"),
            r.get("per_schedule_vs_smallest", "-"),
        ]
        for r in payload["summary"]
    ]
    m = payload["machine"]
    lines = [
        f"{payload['command']}   ({payload['date']}, PostgreSQL {m['server']['server_version']},"
        f" fsync {m['server']['fsync']}, synchronous_commit {m['server']['synchronous_commit']},"
        f" {m['cpus']} CPUs, {payload['params']['repeat']} repeats, load average"
        f" {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end)",
        "",
        table(
            [
                "variant",
                "N",
                "s median",
                "s min",
                "µs/schedule",
                "ratio vs real tick x1",
                "ratio vs real tick x2",
                "server CPU s",
                "WAL MB",
                "COMMIT s",
                "per-schedule vs smallest N",
            ],
            rows,
        ),
    ]
    if explain := payload.get("explain_floor3"):
        lines += [
            "",
            f"EXPLAIN (ANALYZE, BUFFERS, WAL) of floor 3, {explain['schedules']:,} schedules,"
            " rolled back:",
            "",
        ]
        lines += [f"    {line}" for line in explain["plan"]]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the cluster's cleanup


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ticker_floor",
        description="The write floor of one minute boundary, next to the real ticker.",
    )
    p.add_argument("--sizes", type=_ints, default=[10_000, 100_000], help="schedule counts")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of every variant")
    p.add_argument("--batch", type=int, default=0, help="batch size (0: the ticker's default)")
    p.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=[],
        help="comma-separated variant names (default: all)",
    )
    p.add_argument("--no-explain", action="store_true", help="skip the EXPLAIN of floor 3")
    args = p.parse_args(argv)
    args.sizes = sorted(args.sizes)
    signal.signal(signal.SIGTERM, _interrupt)
    payload = asyncio.run(run(args))
    path = write_results("ticker_floor.json", payload)
    print()
    print(report(payload))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
