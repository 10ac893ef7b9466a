"""Benchmark (issue 4): drain throughput of pgsched, PgQueuer and procrastinate, side by side.

    python -m bench.drain [--runs 20000] [--concurrency 32,128] [--processes 2] [--repeat 1]
                          [--systems pgsched,pgqueuer,procrastinate] [--profile] [--fast]

Target (issue 4): pgsched drains at least 1.5x as fast as the fastest peer, while writing every
state change to its event log.

One run, one server: a private PostgreSQL cluster from the installed binaries
(`app.localpg.throwaway`: durable settings, fsync and synchronous_commit on, unless `--fast`),
restarted once with max_connections = 300 and pg_stat_statements loaded, the same for all three
systems, and stopped and deleted at the end. Every measurement gets its own fresh database on it
and the same job: a no-op. The server settings are recorded in the results.

Per system and concurrency C (in this one Python process and asyncio loop, unless said):

- **pgsched**: `pgsched migrate` (alembic) once into a template database; per measurement a copy
  gets one schedule (job_type noop, through `store.create_schedule`) and N waiting runs through
  the store's real path (`store.insert_runs`, origin 'backfill', 5,000 per statement, due and
  available in the last N ms), so every run has its `run.created` event as in production. Then a
  `workers.worker.Worker` (SystemClock, `slots=C`) runs until no run is waiting or running.
  At the largest C also `--processes P` subprocesses `pgsched worker --slots C/P` (the same
  total slots on P cores). Checked afterwards: N runs succeeded, and the event log holds N
  run.created, N run.claimed and N run.succeeded events; on the first measurement also
  `pgsched verify` (the projections equal the fold of the event log).
- **PgQueuer** (bench/peers/pgqueuer_bench.py): `install()`, N jobs with one batch `enqueue`,
  `QueueManager.run(max_concurrent_tasks=C, batch_size=min(10, C/2))` (10 is its default),
  one asyncpg connection, as its README sets it up.
- **procrastinate** (bench/peers/procrastinate_bench.py): `apply_schema_async()`, N jobs with
  `batch_defer_async`, `run_worker_async(concurrency=C)`, a pool of C + 2 connections.

Every database gets VACUUM ANALYZE after enqueueing, before its worker starts.

Measured:
- **drain s**: from the first job start to the last completion, by the database clock, read
  back from each system's own history (pgsched run.started_at / finished_at, pgqueuer_log,
  procrastinate_events). runs/s and the ratios use it: it is defined the same way for all three
  and leaves out process start-up;
- **wall s**: from starting the worker (or spawning the processes) until a poller on its own
  connection (every 50 ms, one index probe) saw nothing left;
- client CPU (this process, or the worker subprocesses), server CPU (all postgres processes),
  transactions, WAL flushes and WAL bytes per job (pg_stat_database, pg_stat_wal), and the
  server time per statement (pg_stat_statements): where the time goes;
- with `--profile`, one more pgsched drain at the largest C in a `pgsched worker` subprocess
  under py-spy (sampling, 200 Hz), plus EXPLAIN ANALYZE of the claim with the backlog in place;
  the raw samples go to bench/results/tmp/ (git-ignored).

Measurements interleave per repeat (pgsched, PgQueuer, procrastinate at each C, in turn), so a
burst of load from a neighbour on this shared machine hits one of each rather than one system.
Results: bench/results/drain.json, and tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bench._common import RESULTS, command_line, machine, now_iso, table, version_of, write_results
from bench.peers import (
    latency_summary,
    pgqueuer_bench,
    procrastinate_bench,
    scalar_rows,
    wait_until_zero,
)
from pgsched.app import localpg
from pgsched.app.cli import migrate
from pgsched.app.clock import SystemClock
from pgsched.app.db import replay, store
from pgsched.app.db.sql import query
from pgsched.app.db.store import Conn
from pgsched.app.domain import schedule
from pgsched.workers.worker import Worker, WorkerSettings

REPO = Path(__file__).resolve().parent.parent
INSERT_CHUNK = 5000
# 1 while anything is left, 0 once drained: one index probe, whatever the backlog.
PGSCHED_REMAINING = (
    "SELECT count(*) FROM (SELECT 1 FROM pgsched.run WHERE state IN ('waiting', 'running')"
    " LIMIT 1) AS left_"
)
SERVER_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
    "autovacuum",
    "jit",
    "shared_preload_libraries",
)
PEERS = {"pgqueuer": pgqueuer_bench, "procrastinate": procrastinate_bench}
PACKAGES = ("psycopg", "psycopg-pool", "asyncpg", "pgqueuer", "procrastinate", "py-spy")


# -- the shared cluster (bench.lag uses it too) -------------------------------------------------


class Cluster:
    """A running local cluster, its databases, and counters to read around a measurement."""

    def __init__(self, pg: localpg.LocalPostgres) -> None:
        self.pg = pg
        self.admin = pg.dsn("postgres")
        self.created: list[str] = []
        self.statements = False

    def url(self, name: str) -> str:
        return self.pg.dsn(name)

    def create(self, name: str, template: str | None = None) -> str:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(stmt)
        self.created.append(name)
        return self.url(name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        self.created.remove(name)

    def server_info(self) -> dict[str, Any]:
        with psycopg.connect(self.admin, autocommit=True) as c:
            rows = c.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
                [list(SERVER_SETTINGS)],
            ).fetchall()
        return {
            "cluster": "app.localpg.throwaway (installed binaries, private data directory)",
            "settings": {n: f"{s}{' ' + u if u else ''}" for n, s, u in rows},
        }

    def cpu_seconds(self) -> float:
        """CPU seconds of the postmaster and all its children, living and reaped."""
        pid = localpg.postmaster_pid(self.pg.data_dir)
        if pid is None:
            return float("nan")
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        fields = _stat(pid)
        if fields:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                child = _stat(int(entry.name))
                if child and int(child[1]) == pid:
                    total += int(child[11]) + int(child[12])
        return total / ticks

    def counters(self, dbname: str) -> dict[str, float]:
        with psycopg.connect(self.admin, autocommit=True) as c:
            row = c.execute(
                "SELECT d.xact_commit, w.wal_bytes, w.wal_records, w.wal_sync"
                " FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = %s",
                [dbname],
            ).fetchone()
        keys = ("commits", "wal_bytes", "wal_records", "wal_syncs")
        counters = dict(zip(keys, (float(x or 0) for x in row or (0, 0, 0, 0)), strict=True))
        counters["server_cpu_s"] = self.cpu_seconds()
        return counters


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the command name (which may hold spaces): [0] state, [1] ppid,
    # [11] utime, [12] stime, [13] cutime, [14] cstime, in clock ticks (proc(5)).
    return text.rpartition(")")[2].split()


@contextlib.contextmanager
def cluster(fast: bool, statements: bool = True) -> Any:
    """The throwaway cluster, restarted once with the benchmark's settings (configure_server);
    with `statements`, pg_stat_statements is loaded for every system alike, so each measurement
    can say what the server spent per statement."""
    with localpg.throwaway(fast=fast) as pg:
        c = Cluster(pg)
        configure_server(c, fast, statements)
        yield c


async def connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[Conn]:
    conn = await connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def vacuum_analyze(url: str) -> None:
    async with connection(url) as conn:
        await conn.execute("VACUUM ANALYZE")


# -- pgsched -----------------------------------------------------------------------------------


async def create_noop_schedule(conn: Conn, name: str, **fields: Any) -> dict[str, Any]:
    values = {"name": name, "job_type": "noop", "kind": "interval", "interval_seconds": 3600}
    values |= {"enabled": False, **fields}  # no ticker materialises it unless asked
    return await store.create_schedule(conn, schedule.complete(values), actor="bench", now=None)


async def seed_runs(url: str, n: int) -> int:
    """One noop schedule and n waiting runs, due and available in the last n ms (origin
    backfill), through store.insert_runs: each with its run.created event."""
    async with connection(url) as conn:
        schedule = await create_noop_schedule(conn, "bench-drain")
        at = await store.db_now(conn, None)
        occurrences = [
            (schedule["id"], at - timedelta(milliseconds=n - i), at - timedelta(milliseconds=n - i))
            for i in range(n)
        ]
        created = 0
        for i in range(0, n, INSERT_CHUNK):
            async with conn.transaction():
                rows = await store.insert_runs(
                    conn,
                    occurrences[i : i + INSERT_CHUNK],
                    origin="backfill",
                    actor="bench",
                    now=None,
                )
            created += len(rows)
    if created != n:
        raise RuntimeError(f"seeded {created} runs, not {n}")
    return int(schedule["id"])


async def pgsched_drain_inprocess(url: str, n: int, slots: int) -> dict[str, Any]:
    worker = Worker(url, clock=SystemClock(), settings=WorkerSettings(slots=slots))
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(worker.run(stop))

    async def alive() -> None:
        if task.done():
            task.result()
            raise RuntimeError("the pgsched worker stopped early")

    try:
        done = await wait_until_zero(url, PGSCHED_REMAINING, within=600, on_tick=alive)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    return {"wall_s": done - started, "worker_stats": dataclass_dict(worker.stats)}


def dataclass_dict(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


async def pgsched_drain_processes(url: str, n: int, slots: int, processes: int) -> dict[str, Any]:
    argv = ["-m", "pgsched", "--database-url", url, "worker", "--slots", str(slots)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, *argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL
        )
        for _ in range(processes)
    ]

    async def alive() -> None:
        for p in procs:
            if p.returncode is not None:
                raise RuntimeError(f"pgsched worker {p.pid} exited with {p.returncode}")

    try:
        done = await wait_until_zero(url, PGSCHED_REMAINING, within=600, on_tick=alive)
    finally:
        await _stop_all(procs)
    return {"wall_s": done - started, "pids": [p.pid for p in procs]}


async def _stop_all(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGTERM (the worker drains and exits), then wait; SIGKILL after a minute."""
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), 60)
        except TimeoutError:
            p.kill()
            await p.wait()


async def pgsched_span(url: str) -> dict[str, Any]:
    ((first, last),) = await scalar_rows(
        url, "SELECT min(started_at), max(finished_at) FROM pgsched.run"
    )
    return {"first_start": first, "last_done": last, "span_s": (last - first).total_seconds()}


async def pgsched_history(url: str) -> dict[str, int]:
    rows = await scalar_rows(
        url,
        "SELECT type, count(*) FROM pgsched.event WHERE stream = 'run' GROUP BY 1 ORDER BY 1",
    )
    history = {kind: int(count) for kind, count in rows}
    ((succeeded,),) = await scalar_rows(
        url, "SELECT count(*) FROM pgsched.run WHERE state = 'succeeded'"
    )
    history["runs_succeeded"] = int(succeeded)
    return history


async def pgsched_verify(url: str) -> dict[str, Any]:
    """`pgsched verify` on the drained database: the projections equal the fold of events."""
    started = time.perf_counter()
    async with connection(url) as conn:
        differences = await replay.verify(conn)
    return {
        "differences": len(differences),
        "first": [str(d) for d in differences[:5]],
        "s": round(time.perf_counter() - started, 2),
    }


# -- one measurement, any system ---------------------------------------------------------------


class Plan:
    """What to measure: (system, label, settings, coroutine factory taking (url, n))."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, Any], Callable[[str, int], Any]]] = []

    def add(
        self, system: str, label: str, opts: dict[str, Any], run: Callable[[str, int], Any]
    ) -> None:
        self.items.append((system, label, opts, run))


async def prepare(system: str, c: Cluster, dbname: str, n: int, template: str | None) -> str:
    if system == "pgsched":
        url = c.create(dbname, template=template)
        await seed_runs(url, n)
    else:
        url = c.create(dbname)
        peer = PEERS[system]
        await peer.install(url)
        await peer.enqueue_now(url, n)
    await vacuum_analyze(url)
    return url


async def measure(
    c: Cluster,
    *,
    system: str,
    label: str,
    opts: dict[str, Any],
    run: Callable[[str, int], Any],
    n: int,
    dbname: str,
    template: str | None,
    verify: bool = False,
) -> dict[str, Any]:
    url = await prepare(system, c, dbname, n, template)
    await asyncio.sleep(1.0)  # let the enqueueing backends' statistics reach pg_stat_*
    reset_statements(c, dbname)
    before = c.counters(dbname)
    cpu0, children0 = time.process_time(), _children_cpu()
    load = os.getloadavg()[0]
    out = await run(url, n)
    client_cpu = time.process_time() - cpu0 + _children_cpu() - children0
    await asyncio.sleep(1.0)  # the workers' backends exited; their statistics are flushed
    after = c.counters(dbname)
    if system == "pgsched":
        span, history = await pgsched_span(url), await pgsched_history(url)
        ok = (
            history.get("runs_succeeded") == n
            and history.get("run.claimed") == n
            and history.get("run.succeeded") == n
            and history.get("run.created") == n
        )
        recorded = history.get("run.claimed", 0) + history.get("run.succeeded", 0)
    else:
        peer = PEERS[system]
        span, history = await peer.span(url), await peer.history(url)
        if system == "pgqueuer":
            recorded = history.get("picked", 0) + history.get("successful", 0)
        else:
            recorded = history.get("started", 0) + history.get("succeeded", 0)
        ok = recorded == 2 * n
    commits = after["commits"] - before["commits"]
    wal = after["wal_bytes"] - before["wal_bytes"]
    result = {
        "system": system,
        "label": label,
        "settings": opts,
        "jobs": n,
        "drain_s": round(span["span_s"], 3),
        "jobs_per_s": round(n / span["span_s"], 1),
        "wall_s": round(out["wall_s"], 3),
        "jobs_per_s_wall": round(n / out["wall_s"], 1),
        "client_cpu_s": round(client_cpu, 2),
        "server_cpu_s": round(after["server_cpu_s"] - before["server_cpu_s"], 2),
        # Every top-level transaction counts, read-only ones too (a pool's liveness check).
        "xacts_per_job": round(commits / n, 2),
        "wal_bytes_per_job": round(wal / n),
        "wal_flushes_per_job": round((after["wal_syncs"] - before["wal_syncs"]) / n, 3),
        "start_and_done_records": recorded,
        "history": history,
        "history_complete": ok,
        "load1_at_start": round(load, 2),
        **{k: v for k, v in out.items() if k not in ("wall_s",)},
        "statements": statements(c, dbname, span["span_s"], n),
    }
    if verify:
        result["verify"] = await pgsched_verify(url)
    c.drop(dbname)
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- profile -----------------------------------------------------------------------------------

# Functions whose inclusive share of the worker's samples the summary names, whatever their rank.
_WATCH = (
    "_claim_loop",
    "claim_runs",
    "seconds_until_next_run",
    "_execute",
    "execute",
    "_report",
    "succeed_run",
    "_fenced",
    "_rows",
    "_sleep",
    "_start",
    "heartbeat_once",
    "rescue_once",
    "connection",
    "getconn",
    "putconn",
    "fetchall",
    "validate_payload",
    "_finish",
)


MAX_CONNECTIONS = 300  # room for 128-slot pools; PostgreSQL's default is 100


def configure_server(c: Cluster, fast: bool, statements: bool) -> None:
    """Restart the cluster once with the benchmark's settings, the same for every system:
    more connections and, with `statements`, pg_stat_statements (planning time tracked too)."""
    with psycopg.connect(c.admin, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
        if statements:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    localpg.stop(c.pg, mode="fast")
    c.pg = localpg.start(c.pg.data_dir, fast=fast)
    c.admin = c.pg.dsn("postgres")
    if statements:
        with psycopg.connect(c.admin, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
            conn.execute("SELECT pg_reload_conf()")
        c.statements = True


def reset_statements(c: Cluster, dbname: str) -> None:
    if not c.statements:
        return
    with psycopg.connect(c.admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_stat_statements_reset(0, d.oid, 0) FROM pg_database d WHERE datname = %s",
            [dbname],
        )


def statements(
    c: Cluster, dbname: str, drain_s: float, n: int, top: int = 8
) -> list[dict[str, Any]]:
    """What the server spent on each statement of `dbname` (pg_stat_statements), largest first."""
    if not c.statements:
        return []
    with psycopg.connect(c.admin, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT regexp_replace(left(query, 100), '\\s+', ' ', 'g') AS query, calls, rows,"
            " total_exec_time, total_plan_time, wal_bytes"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = %s AND calls > 0"
            " ORDER BY total_exec_time + total_plan_time DESC LIMIT %s",
            [dbname, top],
        ).fetchall()
    return [
        {
            "query": r["query"],
            "calls": r["calls"],
            "calls_per_job": round(r["calls"] / n, 3),
            "rows_per_call": round(r["rows"] / r["calls"], 2),
            "exec_ms_per_call": round(r["total_exec_time"] / r["calls"], 3),
            "plan_ms_per_call": round(r["total_plan_time"] / r["calls"], 3),
            "server_ms_per_job": round((r["total_exec_time"] + r["total_plan_time"]) / n, 3),
            "share_of_drain": round(
                (r["total_exec_time"] + r["total_plan_time"]) / 1000 / drain_s, 3
            ),
            "wal_bytes_per_call": round(float(r["wal_bytes"]) / r["calls"]),
        }
        for r in rows
    ]


def summarise_pyspy(path: Path, rate: int, wall_s: float) -> dict[str, Any]:
    """Leaf (self) and inclusive sample shares from py-spy's raw (collapsed) output."""
    leaf: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        names = [f.split(" (")[0] + " (" + _short(f) + ")" for f in frames]
        leaf[names[-1]] = leaf.get(names[-1], 0) + count
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count

    def share(x: int) -> float:
        return round(x / total, 3) if total else 0.0

    watched = sorted(
        (
            (name, c)
            for name, c in inclusive.items()
            if name.split(" (")[0].split(".")[-1] in _WATCH
            and ("workers/" in name or "app/" in name or "psycopg" in name)
        ),
        key=lambda kv: -kv[1],
    )
    return {
        "samples": total,
        "rate_hz": rate,
        # py-spy samples only threads that are not idle: busy share of one core.
        "busy_share_of_wall": round(total / (rate * wall_s), 3) if wall_s else None,
        "top_self": [
            {"function": k, "self_share": share(v)}
            for k, v in sorted(leaf.items(), key=lambda kv: -kv[1])[:20]
        ],
        "watched_inclusive": [{"function": k, "share": share(v)} for k, v in watched[:25]],
    }


def _short(frame: str) -> str:
    where = frame.rpartition(" (")[2].rstrip(")")
    where = where.split("/site-packages/")[-1].replace(f"{REPO}/", "")
    return where


async def explain_claim(url: str, limit: int) -> list[str]:
    """EXPLAIN ANALYZE of the worker's claim (lock_limits, then claim_runs) with the backlog
    in place, rolled back: nothing is claimed."""
    params = {
        "worker_id": 0,
        "queues": ["default"],
        "limit": limit,
        "lease_seconds": 30.0,
        "actor": "bench",
        "now": None,
    }
    async with connection(url) as conn:
        try:
            async with conn.transaction():
                cur = await conn.execute(query("lock_limits"), params)
                locked = await cur.fetchone() or {}
                cur = await conn.execute(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) " + query("claim_runs"),
                    {**params, **locked},
                )
                plan = [row["QUERY PLAN"] for row in await cur.fetchall()]
                raise psycopg.Rollback
        except (psycopg.Error, KeyError) as exc:  # the statement changed under us: say so
            return [f"could not explain the claim: {exc}"]
    return plan


async def profile_pgsched(c: Cluster, n: int, slots: int, template: str) -> dict[str, Any]:
    """One more pgsched drain, in a `pgsched worker` subprocess under py-spy (sampling, not
    pausing it), with pg_stat_statements: where the worker's CPU goes, what the server spends
    per statement, and the claim's plan with the backlog in place."""
    dbname = "bench_profile"
    url = await prepare("pgsched", c, dbname, n, template)
    plan = await explain_claim(url, slots // 2)
    reset_statements(c, dbname)
    (RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "tmp" / "drain_pgsched.pyspy.txt"
    raw.unlink(missing_ok=True)
    rate = 200
    pyspy = Path(sys.executable).parent / "py-spy"
    argv = [sys.executable, "-m", "pgsched", "--database-url", url, "worker"]
    argv += ["--slots", str(slots)]
    if pyspy.exists():
        argv = [str(pyspy), "record", "--rate", str(rate), "--format", "raw", "-o", str(raw),
                "--nonblocking", "--", *argv]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = await wait_until_zero(url, PGSCHED_REMAINING, within=600)
    finally:
        # py-spy runs the worker as its child: stop the worker, py-spy then writes and exits.
        target = _child_of(proc.pid) if pyspy.exists() else proc.pid
        if target and proc.returncode is None:
            os.kill(target, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    span = await pgsched_span(url)
    result: dict[str, Any] = {
        "runs": n,
        "slots": slots,
        "how": "1 `pgsched worker` subprocess under py-spy --nonblocking (200 Hz)",
        "drain_s": round(span["span_s"], 2),
        "jobs_per_s": round(n / span["span_s"], 1),
        "statements": statements(c, dbname, span["span_s"], n, top=10),
        "claim_plan_with_backlog": plan,
    }
    if raw.exists():
        result["pyspy"] = summarise_pyspy(raw, rate, done - started)
        result["pyspy_file"] = str(raw.relative_to(REPO))
    c.drop(dbname)
    return result


def _child_of(pid: int) -> int | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = _stat(int(entry.name))
                if fields and int(fields[1]) == pid:
                    return int(entry.name)
        time.sleep(0.05)
    return None


# -- the run -----------------------------------------------------------------------------------


def build_plan(args: argparse.Namespace) -> Plan:
    plan = Plan()
    for conc in args.concurrency:
        if "pgsched" in args.systems:
            plan.add(
                "pgsched",
                f"1 in-process worker, slots {conc}",
                {"slots": conc, "processes": 1, "where": "in-process"},
                lambda url, n, conc=conc: pgsched_drain_inprocess(url, n, conc),
            )
            if args.processes and conc == max(args.concurrency):
                # The same total concurrency, split over P processes (P cores' worth of Python).
                each = max(1, conc // args.processes)
                plan.add(
                    "pgsched",
                    f"{args.processes} x `pgsched worker --slots {each}`",
                    {
                        "slots": each,
                        "processes": args.processes,
                        "total_slots": each * args.processes,
                        "where": "subprocesses",
                    },
                    lambda url, n, each=each: pgsched_drain_processes(url, n, each, args.processes),
                )
        if "pgqueuer" in args.systems:
            plan.add(
                "pgqueuer",
                f"1 in-process QueueManager, max_concurrent_tasks {conc}",
                pgqueuer_bench.settings(conc),
                lambda url, n, conc=conc: _wall(pgqueuer_bench.drain(url, n, conc)),
            )
        if "procrastinate" in args.systems:
            plan.add(
                "procrastinate",
                f"1 in-process worker, concurrency {conc}",
                procrastinate_bench.settings(conc),
                lambda url, n, conc=conc: _wall(procrastinate_bench.drain(url, n, conc)),
            )
    return plan


async def _wall(coro: Any) -> dict[str, Any]:
    return {"wall_s": await coro}


def summarise(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per (system, label)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in raw:
        groups.setdefault((r["system"], r["label"]), []).append(r)
    rows = []
    for (system, label), unsorted in groups.items():
        rs = sorted(unsorted, key=lambda r: r["drain_s"])
        mid = rs[len(rs) // 2]
        rows.append(
            {
                "system": system,
                "label": label,
                "settings": mid["settings"],
                "repeats": len(rs),
                "drain_s_median": mid["drain_s"],
                "jobs_per_s_median": mid["jobs_per_s"],
                "jobs_per_s_all": [r["jobs_per_s"] for r in rs],
                "wall_s_median": mid["wall_s"],
                "client_cpu_s": mid["client_cpu_s"],
                "server_cpu_s": mid["server_cpu_s"],
                "xacts_per_job": mid["xacts_per_job"],
                "wal_flushes_per_job": mid["wal_flushes_per_job"],
                "wal_bytes_per_job": mid["wal_bytes_per_job"],
                "history_complete": all(r["history_complete"] for r in rs),
            }
        )
    return rows


def ratios(summary: list[dict[str, Any]], target: float) -> dict[str, Any]:
    def best(system: str, conc: int | None = None) -> dict[str, Any] | None:
        rows = [
            r
            for r in summary
            if r["system"] == system
            and (conc is None or _conc(r) == conc)
            and r["history_complete"]
        ]
        return max(rows, key=lambda r: r["jobs_per_s_median"], default=None)

    out: dict[str, Any] = {"target": f"pgsched >= {target}x the fastest peer"}
    ours, peers = best("pgsched"), [p for p in (best(s) for s in PEERS) if p]
    if ours and peers:
        fastest = max(peers, key=lambda r: r["jobs_per_s_median"])
        ratio = ours["jobs_per_s_median"] / fastest["jobs_per_s_median"]
        out["best_vs_best"] = {
            "pgsched": f"{ours['label']}: {ours['jobs_per_s_median']} jobs/s",
            "fastest_peer": f"{fastest['system']} ({fastest['label']}): "
            f"{fastest['jobs_per_s_median']} jobs/s",
            "ratio": round(ratio, 2),
            "meets_target": ratio >= target,
        }
    per_conc = []
    for conc in sorted({_conc(r) for r in summary}):
        ours_c = best("pgsched", conc)
        peers_c = [p for p in (best(s, conc) for s in PEERS) if p]
        if ours_c and peers_c:
            fastest = max(peers_c, key=lambda r: r["jobs_per_s_median"])
            per_conc.append(
                {
                    "concurrency": conc,
                    "pgsched_jobs_per_s": ours_c["jobs_per_s_median"],
                    "pgsched_config": ours_c["label"],
                    "fastest_peer": fastest["system"],
                    "fastest_peer_jobs_per_s": fastest["jobs_per_s_median"],
                    "ratio": round(ours_c["jobs_per_s_median"] / fastest["jobs_per_s_median"], 2),
                    "vs_each": {
                        p["system"]: round(ours_c["jobs_per_s_median"] / p["jobs_per_s_median"], 2)
                        for p in peers_c
                    },
                }
            )
    out["same_concurrency"] = per_conc
    return out


def _conc(row: dict[str, Any]) -> int:
    s = row["settings"]
    return int(
        s.get("total_slots") or s.get("slots") or s.get("max_concurrent_tasks") or s["concurrency"]
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    raw: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with cluster(args.fast, statements=not args.no_statements) as c:
        info |= c.server_info()
        info["pg_stat_statements"] = c.statements
        template = None
        if "pgsched" in args.systems:
            template = "pgsched_template"
            url = c.create(template)
            started = time.perf_counter()
            migrate(url)
            extra["pgsched_migrate_s"] = round(time.perf_counter() - started, 2)
        plan = build_plan(args)
        for repeat in range(args.repeat):
            for i, (system, label, opts, runner) in enumerate(plan.items):
                verify = system == "pgsched" and repeat == 0 and i == 0
                row = await measure(
                    c,
                    system=system,
                    label=label,
                    opts=opts,
                    run=runner,
                    n=args.runs,
                    dbname=f"bench_{system}_{i}_{repeat}",
                    template=template,
                    verify=verify,
                )
                row["repeat"] = repeat
                raw.append(row)
                print(
                    f"{system:>13} | {label:<50} | drain {row['drain_s']:7.2f} s "
                    f"{row['jobs_per_s']:8.0f}/s | wall {row['wall_s']:6.2f} s | "
                    f"client CPU {row['client_cpu_s']:5.1f} s, server CPU "
                    f"{row['server_cpu_s']:5.1f} s | "
                    f"{row['wal_flushes_per_job']} WAL flushes/job | "
                    f"history {'ok' if row['history_complete'] else 'INCOMPLETE'}"
                    + (
                        f" | verify: {row['verify']['differences']} differences"
                        if "verify" in row
                        else ""
                    ),
                    flush=True,
                )
        if "pgsched" in args.systems and args.profile and template:
            extra["pgsched_profile"] = await profile_pgsched(
                c, args.runs, max(args.concurrency), template
            )
            print("pgsched profiled", flush=True)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(raw)
    return {
        "benchmark": "drain",
        "date": now_iso(),
        "command": command_line("bench.drain"),
        "machine": info,
        "packages": {p: version_of(p) for p in ("pgsched", *PACKAGES)},
        "params": {
            "jobs": args.runs,
            "concurrency": args.concurrency,
            "processes": args.processes,
            "repeat": args.repeat,
            "systems": args.systems,
            "durability": "fsync off (--fast)" if args.fast else "durable (fsync on)",
            "job": "no-op (pgsched job_type noop; an empty async function for the peers)",
        },
        "target": "pgsched drains >= 1.5x as fast as the fastest peer, writing every state "
        "change to its event log",
        "summary": summary,
        "ratios": ratios(summary, 1.5),
        "raw": raw,
        **extra,
    }


def report(payload: dict[str, Any]) -> str:
    rows = [
        [
            r["system"],
            r["label"],
            r["repeats"],
            r["drain_s_median"],
            f"{r['jobs_per_s_median']:,.0f}",
            r["wall_s_median"],
            r["client_cpu_s"],
            r["server_cpu_s"],
            r["xacts_per_job"],
            r["wal_flushes_per_job"],
            r["wal_bytes_per_job"],
            "yes" if r["history_complete"] else "NO",
        ]
        for r in payload["summary"]
    ]
    settings = payload["machine"]["settings"]
    lines = [
        f"{payload['command']}   ({payload['date']}, PostgreSQL {settings.get('server_version')},"
        f" fsync {settings.get('fsync')}, synchronous_commit "
        f"{settings.get('synchronous_commit')}, {payload['machine']['cpus']} CPUs)",
        "",
        table(
            [
                "system",
                "configuration",
                "runs",
                "drain s",
                "jobs/s",
                "wall s",
                "client CPU s",
                "server CPU s",
                "xacts/job",
                "WAL flushes/job",
                "WAL B/job",
                "every start+end recorded",
            ],
            rows,
        ),
    ]
    r = payload["ratios"]
    if best := r.get("best_vs_best"):
        lines += [
            "",
            f"best vs best: {best['pgsched']} / {best['fastest_peer']} = {best['ratio']}x "
            f"(target 1.5x: {'met' if best['meets_target'] else 'NOT met'})",
        ]
    for row in r.get("same_concurrency", []):
        lines.append(
            f"concurrency {row['concurrency']}: pgsched / fastest peer ({row['fastest_peer']}) = "
            f"{row['ratio']}x; vs each: {row['vs_each']}"
        )
    statement_rows = [
        [
            r["system"],
            r["label"],
            st["query"][:60],
            st["calls_per_job"],
            st["rows_per_call"],
            st["exec_ms_per_call"],
            st["plan_ms_per_call"],
            st["server_ms_per_job"],
        ]
        for r in payload["raw"]
        if r.get("repeat", 0) == 0
        for st in r.get("statements", [])[:3]
    ]
    if statement_rows:
        lines += [
            "",
            "Server time by statement (pg_stat_statements, top 3 per measurement, first repeat):",
            "",
            table(
                [
                    "system",
                    "configuration",
                    "statement",
                    "calls/job",
                    "rows/call",
                    "exec ms/call",
                    "plan ms/call",
                    "server ms/job",
                ],
                statement_rows,
            ),
        ]
    if prof := payload.get("pgsched_profile"):
        lines += [
            "",
            f"Profile: {prof['how']}, slots {prof['slots']}: drain {prof['drain_s']} s "
            f"({prof['jobs_per_s']:,.0f} jobs/s)",
        ]
        if spy := prof.get("pyspy"):
            lines += [
                "",
                f"py-spy: the worker process was busy {spy['busy_share_of_wall']:.0%} of the "
                "time (start-up included); inclusive share of its busy samples:",
                "",
                table(
                    ["function", "share"],
                    [[w["function"], w["share"]] for w in spy["watched_inclusive"][:15]],
                ),
            ]
        plan = prof.get("claim_plan_with_backlog") or []
        lines += [
            "",
            "The claim's `open` CTE (the unlimited, common path) with the backlog in place"
            " (EXPLAIN ANALYZE, rolled back):",
            "",
        ]
        lines += [f"    {line}" for line in _open_cte(plan)]
    return "\n".join(lines)


def _open_cte(plan: Sequence[str]) -> list[str]:
    """The `CTE open` part of the claim's plan, and its planning and execution times."""
    out: list[str] = []
    inside = False
    for line in plan:
        if line.strip().startswith("CTE "):
            inside = line.strip() == "CTE open"
        if inside or "Time:" in line:
            out.append(line)
    return out


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - {"pgsched", *PEERS}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown systems: {sorted(unknown)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20_000, help="jobs to drain per measurement")
    p.add_argument("--concurrency", type=_ints, default=[32, 128], help="slots / concurrency")
    p.add_argument(
        "--processes", type=int, default=2, help="also pgsched with P worker subprocesses (0: no)"
    )
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--systems", type=_names, default=["pgsched", *PEERS])
    p.add_argument("--fast", action="store_true", help="fsync off (default: durable settings)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="one more pgsched drain under py-spy, with the claim's plan (adds one drain's time)",
    )
    p.add_argument("--no-statements", action="store_true", help="do not load pg_stat_statements")
    p.add_argument("--out", default="drain.json", help="results file name in bench/results/")
    args = p.parse_args(argv)
    payload = asyncio.run(run(args))
    path = write_results(args.out, payload)
    print()
    print(report(payload))
    print(f"\nresults: {path}")
    return 0


__all__ = ["Cluster", "cluster", "connection", "create_noop_schedule", "latency_summary"]

if __name__ == "__main__":
    raise SystemExit(main())
