"""Benchmark (issue 7): the claim and the run listing with 10 million runs of history.

    python -m bench.history [--runs 10000000] [--schedules 1000] [--backlog 5000]
                            [--rounds 5] [--samples 40] [--chunk 250000]

Target (issue 7): with 10 million historical runs and their events, the worker's claim and the
API's run listing stay within 10% of their cost on an empty history (ratio of medians <= 1.10).

One server: a private PostgreSQL cluster from the installed binaries (`app.localpg.throwaway`),
loaded with durability off (fsync, synchronous_commit, full_page_writes off; max_wal_size 8 GB),
then restarted with durable settings (all three on) before anything is measured. Three
databases live on it:

- a template: `pgsched migrate` (alembic), then `--schedules` every-minute noop schedules with
  their `schedule.created` events (`bench.ticker.seed`);
- `fresh`: a copy of the template, as a fresh install has it (this month and 3 ahead);
- `empty`: a copy after the previous month's partitions were added, as any installation older
  than a month has them: the same partitions as `history`, no history;
- `history`: a copy of that plus `--runs` finished runs and their events, generated set-based with
  generate_series in chunks of `--chunk` runs (`GENERATE_HISTORY` below), spread evenly from the
  start of the previous month (UTC) to one hour ago, over the schedules round-robin, so they sit
  in monthly partitions inside the default retention (a maintenance pass afterwards must retire
  nothing; checked). Shapes: 96% succeeded (4% of those on a second attempt), 3% dead after 3
  attempts, 1% cancelled while waiting; events as the store writes them (run.created, one
  run.claimed per attempt, run.retry_scheduled between attempts, the final run.succeeded /
  run.dead / run.cancelled): 3.1 events per run on average. Each chunk is one transaction, so
  a chunk's events share one tx_id.

Then, in all three alike, the live work: `--backlog` waiting runs through the store's real
path (`store.insert_runs`, with their run.created events), due over the last 10 minutes; then
VACUUM ANALYZE and CHECKPOINT.

Measured in all three, interleaved sample by sample (the order of the databases rotates and
reverses), after one warm-up round:

- `claim 10 of the backlog`: `app.db.store.claim` as a worker sends it while nothing is
  limited (one statement, claim_open_runs; ADR 0019) for 10 runs of queue `default`, and
  `claim 10, limits checked`: the two-statement claim (lock_limits then claim_runs) that a worker
  sends once per poll interval or while limits are in play; each timed up to the COMMIT (the
  commit's WAL flush is
  the same in both databases and the noisiest part on a shared disk, so it is left out); then,
  untimed, each claimed run succeeds through `tests.support.store.succeed_run`, as a worker's
  would, so the next sample claims the next runs (a rolled-back claim would re-claim the same
  rows and pile dead versions onto them, which a real queue never does);
- `claim, nothing due`: the same call for a queue without runs (a worker's idle poll);
- `GET /v1/runs`: a real HTTP request (httpx, keep-alive) to `pgsched api` (a uvicorn process per
  database) with a viewer token, the first page of 50 (what a dashboard opens); all return the
  newest 50 backlog runs;
- `GET /v1/runs?status=waiting`: the same, filtered by state.

Reported per operation: median and p95 in ms per database, history/empty for both (the effect
of the rows: the target, met when the ratio of medians is <= 1.10), and history/fresh (the
effect of rows plus one more partition, which grows the claim's planning time). Also, per
operation, `EXPLAIN (ANALYZE, BUFFERS)` of its statement in each database, with its buffers and
planning time (buffers touched measure work that load on the machine does not blur).
Results: bench/results/history.json, and tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bench._common import (
    command_line,
    machine,
    now_iso,
    source_digests,
    table,
    version_of,
    write_results,
)
from bench.ticker import seed as seed_schedules
from pgsched.app import localpg, maintenance
from pgsched.app.cli import migrate
from pgsched.app.db import store
from pgsched.app.db.sql import query
from pgsched.app.db.store import Conn
from pgsched.app.services import tokens
from tests.support import store as test_store

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.10
# fresh: as migrated; empty: the same partitions as history (last month's too), no history.
NAMES = ("fresh", "empty", "history")
PAGE = 50
CLAIM = 10
SOURCES = ("app/db/queries", "app/db/store", "app/api", "alembic/versions")
SERVER_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "shared_buffers",
    "work_mem",
    "max_wal_size",
    "autovacuum",
    "jit",
    "random_page_cost",
)

# Finished runs i = lo..hi and their events, in one statement. Everything derives from i: the
# due time (evenly spaced), the schedule (round-robin), and a pseudo-random roll in [0, 1000)
# that picks the state, attempts, delays and durations. Written as the owner of the data would
# have: the run row as it ends, and the events the store appends on the way there.
GENERATE_HISTORY = """
WITH g AS (
    SELECT i,
           %(first)s::timestamptz + (i - 1) * %(step)s::interval AS due_at,
           1 + mod(i, %(schedules)s::bigint) AS schedule_id,
           mod(i * 7919, 1000) AS roll
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
), shaped AS (
    SELECT g.*,
           CASE WHEN roll < 960 THEN 'succeeded' WHEN roll < 990 THEN 'dead'
                ELSE 'cancelled' END AS state,
           CASE WHEN roll < 960 THEN 1 + (mod(roll, 25) = 0)::integer
                WHEN roll < 990 THEN 3 ELSE 0 END AS attempt,
           make_interval(secs => 0.005 + mod(roll, 50) / 1000.0) AS lag,
           make_interval(secs => 0.05 + mod(i * 31, 3000) / 1000.0) AS took
    FROM g
), finished AS (
    SELECT s.*,
           CASE WHEN attempt > 0 THEN due_at + lag + (attempt - 1) * interval '10 seconds'
           END AS started_at,
           CASE WHEN attempt > 0 THEN due_at + lag + (attempt - 1) * interval '10 seconds' + took
                ELSE due_at + lag END AS finished_at,
           CASE WHEN attempt > 0 THEN 1 + mod(i, 8) END AS worker_id
    FROM shaped s
), r AS (
    INSERT INTO pgsched.run (schedule_id, due_at, adhoc, origin, state, queue, priority,
                             available_at, attempt, max_attempts, worker_id, started_at,
                             finished_at, outcome, created_at)
    SELECT f.schedule_id, f.due_at, false, 'schedule', f.state, 'default', 0, f.due_at,
           f.attempt, 3, f.worker_id, f.started_at, f.finished_at,
           CASE f.state
               WHEN 'succeeded' THEN jsonb_build_object(
                   'status', 'succeeded', 'retryable', false, 'error', NULL, 'exit_code', 0,
                   'http_status', NULL, 'output', NULL,
                   'duration_ms', round(extract(epoch FROM f.took) * 1000, 3))
               WHEN 'dead' THEN jsonb_build_object(
                   'status', 'failed', 'retryable', true,
                   'error', 'exit status 1: connection refused by upstream', 'exit_code', 1,
                   'http_status', NULL, 'output', 'ERROR connecting to 10.0.0.7:5432',
                   'duration_ms', round(extract(epoch FROM f.took) * 1000, 3))
               ELSE jsonb_build_object('status', 'cancelled', 'reason', 'cancelled by operator')
           END,
           f.due_at - interval '1 second'
    FROM finished f
    ORDER BY f.i
    RETURNING *
)
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)
SELECT e.at, 'run', r.id, e.type, e.actor, e.data
FROM r
CROSS JOIN LATERAL (
    SELECT 0 AS seq, r.created_at AS at, 'run.created' AS type, 'ticker' AS actor,
           jsonb_build_object('schedule_id', r.schedule_id, 'due_at', r.due_at,
                              'origin', r.origin, 'state', 'waiting', 'queue', r.queue,
                              'priority', r.priority, 'available_at', r.available_at,
                              'attempt', 0, 'max_attempts', r.max_attempts,
                              'created_at', r.created_at) AS data
    UNION ALL
    SELECT 2 * k - 1, r.due_at + (k - 1) * interval '10 seconds' + interval '5 ms', 'run.claimed',
           'worker-' || r.worker_id,
           jsonb_build_object('state', 'running', 'attempt', k, 'lease_token', gen_random_uuid(),
                              'lease_expires_at', r.due_at + (k - 1) * interval '10 seconds'
                                                  + interval '60 seconds',
                              'worker_id', r.worker_id,
                              'started_at', r.due_at + (k - 1) * interval '10 seconds')
    FROM generate_series(1, r.attempt) AS k
    UNION ALL
    SELECT 2 * k, r.due_at + (k - 1) * interval '10 seconds' + interval '1 second',
           'run.retry_scheduled', 'worker-' || r.worker_id,
           jsonb_build_object('state', 'waiting', 'attempt', k, 'lease_expires_at', NULL,
                              'available_at', r.due_at + k * interval '10 seconds',
                              'outcome', r.outcome)
    FROM generate_series(1, r.attempt - 1) AS k
    UNION ALL
    SELECT 99, r.finished_at, 'run.' || r.state,
           CASE WHEN r.state = 'cancelled' THEN 'api:ops' ELSE 'worker-' || r.worker_id END,
           jsonb_build_object('state', r.state, 'finished_at', r.finished_at,
                              'lease_expires_at', NULL, 'outcome', r.outcome)
) AS e
ORDER BY r.id, e.seq
"""


# -- the cluster and its databases ----------------------------------------------------------


async def connect(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[Conn]:
    conn = await connect(url)
    try:
        yield conn
    finally:
        await conn.close()


def admin_execute(dsn: str, statement: sql.Composable | str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(statement if isinstance(statement, sql.Composable) else sql.SQL(statement))


def create_database(admin: str, name: str, template: str | None = None) -> None:
    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
    admin_execute(admin, stmt)


def server_settings(admin: str) -> dict[str, str]:
    with psycopg.connect(admin, autocommit=True) as c:
        rows = c.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            [list(SERVER_SETTINGS)],
        ).fetchall()
    return {n: f"{s}{' ' + u if u else ''}" for n, s, u in rows}


def month_start(at: datetime, plus: int = 0) -> datetime:
    y, m = divmod(at.month - 1 + plus, 12)
    return datetime(at.year + y, m + 1, 1, tzinfo=UTC)


# -- loading ---------------------------------------------------------------------------------


async def generate_history(url: str, runs: int, schedules: int, chunk: int) -> dict[str, Any]:
    """`runs` finished runs with their events, from the start of last month to an hour ago."""
    async with connection(url) as conn:
        now = await store.db_now(conn, None)
        first = month_start(now, -1) + timedelta(hours=1)
        last = now - timedelta(hours=1)
        step = (last - first) / max(runs, 1)
        started = time.monotonic()
        for lo in range(1, runs + 1, chunk):
            hi = min(lo + chunk - 1, runs)
            await conn.execute(
                GENERATE_HISTORY,
                {"first": first, "step": step, "schedules": schedules, "lo": lo, "hi": hi},
            )
            done = time.monotonic() - started
            print(f"  history: {hi:,} / {runs:,} runs ({done:.0f} s)", flush=True)
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM pgsched.run) AS runs,"
            " (SELECT count(*) FROM pgsched.event WHERE stream = 'run') AS run_events"
        )
        counts = await cur.fetchone() or {}
        cur = await conn.execute("SELECT state, count(*) AS n FROM pgsched.run GROUP BY 1")
        states = {r["state"]: r["n"] for r in await cur.fetchall()}
    if counts.get("runs") != runs:
        raise RuntimeError(f"generated {counts} runs, not {runs}")
    return {
        "seconds": round(time.monotonic() - started, 1),
        "first_due_at": first,
        "last_due_at": first + step * (runs - 1),
        "runs": counts["runs"],
        "run_events": counts["run_events"],
        "events_per_run": round(counts["run_events"] / max(runs, 1), 3),
        "states": states,
    }


async def add_last_month(url: str) -> None:
    """The previous month's partitions, which any installation older than a month has."""
    async with connection(url) as conn:
        now = await store.db_now(conn, None)
        await conn.execute("SET ROLE pgsched_owner")
        for table_name in ("pgsched.run", "pgsched.event"):
            await conn.execute(
                "SELECT pgsched.create_month_partition_v1(%s::regclass, %s::date)",
                [table_name, month_start(now, -1).date()],
            )
        await conn.execute("RESET ROLE")


async def add_backlog(url: str, n: int, schedules: int) -> None:
    """n waiting runs due over the last 10 minutes, through the store's real insert."""
    async with connection(url) as conn:
        at = await store.db_now(conn, None)
        triples = []
        for k in range(n):
            due = at - timedelta(seconds=600) + timedelta(seconds=600 * k / n)
            triples.append((1 + k % schedules, due, due))
        async with conn.transaction():
            rows = await store.insert_runs(
                conn, triples, origin="backfill", actor="bench", now=None
            )
    if len(rows) != n:
        raise RuntimeError(f"backlog: {len(rows)} runs, not {n}")


async def retention_check(url: str) -> list[dict[str, Any]]:
    """A maintenance pass with the default retention: the history must be inside it."""
    async with connection(url) as conn:
        done = await maintenance.maintain(conn, maintenance.Retention(), now=None)
    retired = [r for r in done if r["action"] in ("retired", "kept")]
    if retired:
        raise RuntimeError(f"history is not inside the default retention: {retired}")
    return done


async def relation_sizes(url: str) -> dict[str, Any]:
    async with connection(url) as conn:
        cur = await conn.execute(
            "SELECT t::text AS table_name, count(*) AS partitions,"
            " sum(pg_total_relation_size(i.inhrelid)) AS bytes"
            " FROM unnest(ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass]) AS t"
            " JOIN pg_inherits i ON i.inhparent = t GROUP BY t"
        )
        return {
            r["table_name"]: {"partitions": r["partitions"], "bytes": int(r["bytes"] or 0)}
            for r in await cur.fetchall()
        }


# -- the API processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def start_api(url: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pgsched",
        "--database-url",
        url,
        "api",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(600):
            if proc.returncode is not None:
                raise RuntimeError(f"pgsched api exited with {proc.returncode}")
            try:
                await client.get("/health")
                return proc, base
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError("pgsched api did not come up")


async def viewer_token(url: str) -> str:
    async with connection(url) as conn:
        _, token = await tokens.create_token(
            conn, name="bench", role="viewer", actor="bench", now=None
        )
    return token


# -- operations ----------------------------------------------------------------------------------


class Target:
    """One database under measurement: a connection for claims, an HTTP client for the API."""

    def __init__(self, name: str, url: str, conn: Conn, client: httpx.AsyncClient) -> None:
        self.name, self.url, self.conn, self.client = name, url, conn, client

    async def claim(self, queue: str, expect: int, *, limits: bool = False) -> float:
        """The worker's claim, committed; the claimed runs then succeed (untimed), as a worker's
        would, so every sample claims the next runs of the backlog. Without `limits` it is the
        claim a worker sends while nothing is limited (claim_open_runs, ADR 0019); with, the
        two-statement claim that honours limits (lock_limits, claim_runs)."""
        async with self.conn.transaction():
            started = time.perf_counter()
            taken = await store.claim(
                self.conn,
                worker_id=1,
                queues=[queue],
                limit=CLAIM,
                lease_seconds=60,
                actor="bench",
                now=None,
                limits=limits,
            )
            took = time.perf_counter() - started
        rows = taken.rows
        if len(rows) != expect:
            raise RuntimeError(f"{self.name}: claimed {len(rows)} runs of {queue}, not {expect}")
        for row in rows:
            done = await test_store.succeed_run(
                self.conn, store.Lease.of(row), OUTCOME, actor="bench", now=None
            )
            if done is None:
                raise RuntimeError(f"{self.name}: run {row['id']} lost its lease")
        return took

    async def list_runs(self, params: dict[str, str]) -> float:
        started = time.perf_counter()
        response = await self.client.get("/v1/runs", params=params)
        took = time.perf_counter() - started
        response.raise_for_status()
        items = response.json()["items"]
        if len(items) != PAGE or any(i["state"] != "waiting" for i in items):
            raise RuntimeError(f"{self.name}: the first page is not the newest {PAGE} waiting runs")
        return took


OUTCOME = {
    "status": "succeeded",
    "retryable": False,
    "error": None,
    "exit_code": None,
    "http_status": None,
    "output": None,
    "duration_ms": 0.1,
}

OPERATIONS: dict[str, Callable[[Target], Awaitable[float]]] = {
    f"claim {CLAIM} of the backlog": lambda t: t.claim("default", CLAIM),
    f"claim {CLAIM}, limits checked": lambda t: t.claim("default", CLAIM, limits=True),
    "claim, nothing due": lambda t: t.claim("idle", 0),
    f"GET /v1/runs?limit={PAGE}": lambda t: t.list_runs({"limit": str(PAGE)}),
    f"GET /v1/runs?status=waiting&limit={PAGE}": lambda t: t.list_runs(
        {"limit": str(PAGE), "status": "waiting"}
    ),
}


async def explain(target: Target) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements behind the operations, rolled back."""
    out: dict[str, Any] = {}
    conn = target.conn
    params = {
        "worker_id": 1,
        "limit": CLAIM,
        "lease_seconds": 60,
        "actor": "bench",
        "now": None,
    }
    for label, queue in (("claim_runs (backlog)", "default"), ("claim_runs (idle)", "idle")):
        async with conn.transaction(force_rollback=True):
            p = {**params, "queues": [queue]}
            cur = await conn.execute(query("lock_limits"), p)
            locked = await cur.fetchone() or {}
            p |= {"schedule_ids": locked["schedule_ids"], "queue_names": locked["queue_names"]}
            out[label] = await _plan(conn, query("claim_runs"), p)
    async with conn.transaction(force_rollback=True):
        out["claim_open_runs (backlog)"] = await _plan(
            conn, query("claim_open_runs"), {**params, "queues": ["default"]}
        )
    page = {
        "limit": PAGE + 1,
        "before_due_at": None,
        "before_id": None,
        "schedule_id": None,
        "queue": None,
        "since": None,
        "until": None,
    }
    out["page_runs"] = await _plan(conn, query("page_runs"), {**page, "states": None})
    out["page_runs (status=waiting)"] = await _plan(
        conn, query("page_runs"), {**page, "states": ["waiting"]}
    )
    return out


async def _plan(conn: Conn, statement: str, params: dict[str, Any]) -> dict[str, Any]:
    cur = await conn.execute("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + statement, params)  # type: ignore[operator]
    lines = [next(iter(r.values())) for r in await cur.fetchall()]
    # The top node's buffers include everything below it.
    buffers = 0
    top = next((ln for ln in lines if "Buffers:" in ln), "")
    for part in top.split("Buffers:", 1)[-1].replace(",", " ").split():
        if "=" in part:
            buffers += int(part.split("=", 1)[1])
    return {"plan": lines, "top_buffers": buffers}


async def measure(targets: Sequence[Target], rounds: int, samples: int) -> dict[str, Any]:
    raw: dict[str, dict[str, list[float]]] = {
        op: {t.name: [] for t in targets} for op in OPERATIONS
    }
    for rnd in range(rounds + 1):  # round 0 warms caches and plan caches up; not kept
        for op, call in OPERATIONS.items():
            for s in range(samples):
                k = (rnd * samples + s) % len(targets)
                order = [*targets[k:], *targets[:k]]
                order = order if s % 2 == 0 else order[::-1]
                for t in order:
                    took = await call(t)
                    if rnd > 0:
                        raw[op][t.name].append(took * 1000)
        if rnd > 0:
            print(f"  round {rnd}/{rounds} done (load {os.getloadavg()[0]:.1f})", flush=True)
    return raw


def p95(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def summarise(raw: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for op, per in raw.items():
        med = {n: statistics.median(v) for n, v in per.items()}
        tail = {n: p95(v) for n, v in per.items()}
        rows.append(
            {
                "operation": op,
                "samples": len(per["empty"]),
                **{f"{n}_median_ms": round(med[n], 3) for n in NAMES},
                **{f"{n}_p95_ms": round(tail[n], 3) for n in NAMES},
                "ratio_median": round(med["history"] / med["empty"], 3),
                "ratio_p95": round(tail["history"] / tail["empty"], 3),
                "ratio_median_vs_fresh": round(med["history"] / med["fresh"], 3),
                "target_met": med["history"] / med["empty"] <= TARGET,
            }
        )
    return rows


# -- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "benchmark": "history",
        "command": command_line("bench.history"),
        "started": now_iso(),
        "machine": machine(),
        "sources": source_digests(*SOURCES),
        "packages": {p: version_of(p) for p in ("psycopg", "litestar", "uvicorn", "httpx")},
        "parameters": {
            "runs": args.runs,
            "schedules": args.schedules,
            "backlog": args.backlog,
            "rounds": args.rounds,
            "samples_per_round": args.samples,
            "chunk": args.chunk,
            "claim_limit": CLAIM,
            "page": PAGE,
            "target_ratio": TARGET,
        },
    }
    with localpg.throwaway(fast=True) as loading:
        payload["disk_free_gb_at_start"] = round(shutil.disk_usage(loading.data_dir).free / 1e9, 1)
        await load(loading, args, payload)
        print("restarting the cluster with durable settings", flush=True)
        localpg.stop(loading, mode="fast")
        pg = localpg.start(loading.data_dir, fast=False)
        payload["server_measure"] = server_settings(pg.dsn("postgres"))
        await measure_all(pg, args, payload)
        payload["finished"] = now_iso()
        payload["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return payload


async def load(
    pg: localpg.LocalPostgres, args: argparse.Namespace, payload: dict[str, Any]
) -> None:
    """The three databases, with durability off (the data load only)."""
    admin = pg.dsn("postgres")
    for setting in ("max_wal_size = '8GB'", "checkpoint_timeout = '30min'"):
        admin_execute(admin, f"ALTER SYSTEM SET {setting}")
    admin_execute(admin, "SELECT pg_reload_conf()")
    payload["server_load"] = server_settings(admin)

    print("migrating the template and seeding schedules", flush=True)
    template = "pgsched_tmpl"
    create_database(admin, template)
    await asyncio.to_thread(migrate, pg.dsn(template))
    await seed_schedules(pg.dsn(template), args.schedules, datetime.now(UTC))
    create_database(admin, "fresh", template)
    await add_last_month(pg.dsn(template))
    for name in ("empty", "history"):
        create_database(admin, name, template)
    urls = {name: pg.dsn(name) for name in NAMES}

    print(f"generating {args.runs:,} runs of history", flush=True)
    payload["history"] = await generate_history(
        urls["history"], args.runs, args.schedules, args.chunk
    )
    for name, url in urls.items():
        await add_backlog(url, args.backlog, args.schedules)
        async with connection(url) as conn:
            await conn.execute("VACUUM ANALYZE")
        payload.setdefault("retention_check", {})[name] = [
            dict(r) for r in await retention_check(url)
        ]
        payload.setdefault("sizes", {})[name] = await relation_sizes(url)
    admin_execute(admin, "CHECKPOINT")


async def measure_all(
    pg: localpg.LocalPostgres, args: argparse.Namespace, payload: dict[str, Any]
) -> None:
    """An API process and a connection per database; the interleaved samples; the plans."""
    procs = []
    targets = []
    try:
        for name in NAMES:
            url = pg.dsn(name)
            token = await viewer_token(url)
            proc, base = await start_api(url)
            procs.append(proc)
            client = httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            targets.append(Target(name, url, await connect(url), client))
        print("measuring", flush=True)
        raw = await measure(targets, args.rounds, args.samples)
        payload["plans"] = {t.name: await explain(t) for t in targets}
    finally:
        for t in targets:
            await t.client.aclose()
            await t.conn.close()
        for proc in procs:
            proc.terminate()
            await proc.wait()
    payload["raw_ms"] = raw
    payload["summary"] = summarise(raw)


def report(payload: dict[str, Any]) -> str:
    rows = [
        [
            r["operation"],
            r["empty_median_ms"],
            r["history_median_ms"],
            f"{r['ratio_median']:.2f}",
            r["empty_p95_ms"],
            r["history_p95_ms"],
            f"{r['ratio_p95']:.2f}",
            "yes" if r["target_met"] else "NO",
            r["fresh_median_ms"],
            f"{r['ratio_median_vs_fresh']:.2f}",
        ]
        for r in payload["summary"]
    ]
    headers = [
        "operation",
        "empty ms (median)",
        "history ms (median)",
        "ratio",
        "empty ms (p95)",
        "history ms (p95)",
        "ratio p95",
        "<= 1.10",
        "fresh ms (median)",
        "history/fresh",
    ]
    plans = payload["plans"]
    buffers = [
        [
            label,
            *(plans[n][label]["top_buffers"] for n in NAMES),
            *(
                next(
                    (ln.split(": ")[1] for ln in plans[n][label]["plan"] if "Planning Time" in ln),
                    "",
                )
                for n in NAMES
            ),
        ]
        for label in plans["empty"]
    ]
    h = payload["history"]
    sizes = payload["sizes"]["history"]
    head = (
        f"history: {h['runs']:,} runs, {h['run_events']:,} run events "
        f"({h['events_per_run']} per run), due {h['first_due_at']:%Y-%m-%d} to "
        f"{h['last_due_at']:%Y-%m-%d}; run {sizes['pgsched.run']['bytes'] / 1e9:.1f} GB in "
        f"{sizes['pgsched.run']['partitions']} partitions, event "
        f"{sizes['pgsched.event']['bytes'] / 1e9:.1f} GB in "
        f"{sizes['pgsched.event']['partitions']} partitions; generated in {h['seconds']} s"
    )
    return "\n\n".join(
        [
            head,
            table(headers, rows),
            table(
                [
                    "statement (EXPLAIN ANALYZE)",
                    *(f"buffers, {n}" for n in NAMES),
                    *(f"planning, {n}" for n in NAMES),
                ],
                buffers,
            ),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10_000_000, help="historical runs (10,000,000)")
    ap.add_argument("--schedules", type=int, default=1000, help="schedules (1000)")
    ap.add_argument("--backlog", type=int, default=5000, help="waiting runs in both (5000)")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    ap.add_argument("--samples", type=int, default=40, help="samples per round (40)")
    ap.add_argument("--chunk", type=int, default=250_000, help="runs per insert (250,000)")
    args = ap.parse_args(argv)
    claims = (args.rounds + 1) * args.samples * CLAIM
    if args.runs < 1 or args.schedules < 1 or args.backlog < claims + PAGE:
        ap.error(f"--runs and --schedules must be >= 1 and --backlog >= {claims + PAGE}")
    payload = asyncio.run(run(args))
    path = write_results("history.json", payload)
    print(report(payload))
    print(f"results: {path.relative_to(REPO)}")
    return 0 if all(r["target_met"] for r in payload["summary"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
