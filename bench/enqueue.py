"""Benchmark: enqueue throughput of pgsched, PgQueuer and procrastinate, single and bulk.

    python -m bench.enqueue [--n 1500] [--concurrency 1,8,32] [--batches 100,1000]
                            [--rounds 3] [--systems pgsched,pgqueuer,procrastinate]

Target (the enqueue issue): single enqueue >= 1.0x PgQueuer's enqueues/s, bulk >= 1.0x its jobs/s
(before ADR 0027, when the only path was the trigger, 0.34x and 0.51x).

One server for everything: a private PostgreSQL cluster from the installed binaries (bench.drain's
`cluster`: durable, fsync and synchronous_commit on, pg_stat_statements loaded, the same for all
three systems), stopped and deleted at the end. Per round, one fresh database per system
(pgsched migrated from a template, with one job definition of type python; the peers' schemas
installed by their own calls); the measurements of one round interleave the systems point by
point (each concurrency or batch size: every configuration of every system in turn, the order of
the systems rotating per round), so a neighbour's burst of load hits one of each.

Measured moment, the same for every system: the enqueue call returning after its commit (each
call on an autocommit connection, or a pooled one that commits when returned: its own
transaction, as an application request would make it).

- **single**: N enqueues from C concurrent clients (asyncio tasks in this process; threads for
  the sync client), each client N/C calls in sequence; enqueues/s = N / wall seconds from the
  first call to the last return. Every client warms up first (WARMUP calls: connections open,
  pgsched's cached definition read, psycopg's statements prepared after 5 executions), untimed.
  Each job carries a small argument of its own (n = its index): pgsched payload
  `{"kwargs": {"n": i}}` merged over the definition's `{"target": ...}`, PgQueuer payload bytes
  `{"n": i}`, procrastinate task kwargs `n=i`.
- **bulk**: B jobs per call, calls in sequence from one client (max(10, 5000 / B) calls);
  jobs/s = jobs / wall seconds.

Configurations (knobs swept; the best of each system per point is compared):
- pgsched: `AsyncClient.enqueue` over its own connection per client (psycopg prepares after 5
  executions, the default; or never, prepare_threshold None), over a shared pool of C
  (`AsyncClient.from_pool`, autocommit connections, or transactional ones: committed when
  returned); the sync `Client.enqueue`, a connection per thread or a pool of C; bulk
  `enqueue_many` async and sync.
- PgQueuer 1.6.0: `Queries.enqueue` with `AsyncpgDriver` (a connection per client; asyncpg's
  statement cache on, its default, or off), `AsyncpgPoolDriver` (a pool of C), `PsycopgDriver`
  (a connection per client, autocommit as it requires); bulk `enqueue` with lists.
- procrastinate 3.10.0: `Task.defer_async` through `PsycopgConnector` with a pool of C, or its
  default pool; bulk `Task.batch_defer_async`.

Also recorded per measurement: client CPU (this process) and server CPU (all postgres
processes) over the timed part, transactions, WAL flushes and WAL bytes per job (whole
measurement, warm-up included), and the server time per statement (pg_stat_statements).

Where pgsched's time goes (last round, its databases still there): EXPLAIN ANALYZE of one
enqueue_runs (rolled back); an ablation of that statement (`--ablate` calls per variant, one
item each, sent raw through one sync psycopg connection, variants interleaved in chunks of 100:
as is, without the run.created event, without pg_notify, returning the id only, the run row
alone; and the whole sync `Client.enqueue` beside them), with pg_stat_statements' time and WAL
per variant; and a cProfile of this process for 1000 single enqueues and one bulk series, pgsched
against PgQueuer/asyncpg (bench/results/tmp/*.prof). The ablation edits the statement's text
here, for diagnosis; app/ is not touched.

Results: bench/results/enqueue-<date>.json (or --out), and tables on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import re
import resource
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, PsycopgDriver, Queries
from procrastinate import App, PsycopgConnector
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from bench._common import (
    RESULTS,
    command_line,
    machine,
    now_iso,
    source_digests,
    table,
    version_of,
    write_results,
)
from bench.drain import Cluster, cluster, reset_statements, statements
from pgsched.app.cli import migrate
from pgsched.app.client import AsyncClient, Client, Item

JOB = "bench-enqueue"
WARMUP = 6  # psycopg prepares a statement on its 6th execution (prepare_threshold 5)
PACKAGES = ("psycopg", "psycopg-pool", "asyncpg", "pgqueuer", "procrastinate")
SYSTEMS = ("pgsched", "pgqueuer", "procrastinate")
SOURCES = (
    "app/client.py",
    "app/services/runs.py",
    "app/db/store/enqueue.py",
    "app/db/queries/enqueue.sql",
    "app/domain/jobs.py",
    "bench/enqueue.py",
)


def noop(**kwargs: object) -> None:
    """The job definition's target (never run here: nothing claims)."""


# -- configurations -------------------------------------------------------------------------------

Enq = Callable[[int], Awaitable[None]]
BulkEnq = Callable[[int, int], Awaitable[None]]  # (first index, B)
Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Config:
    system: str
    label: str
    knobs: dict[str, Any]
    # single: opens C clients -> (one enqueue callable per client, close); sync ones get threads
    open_single: Callable[[str, int], Awaitable[tuple[list[Any], Closer]]] | None = None
    sync: bool = False
    # bulk: opens one client -> (enqueue B jobs, close)
    open_bulk: Callable[[str], Awaitable[tuple[Any, Closer]]] | None = None


def _payload(i: int) -> dict[str, Any]:
    return {"kwargs": {"n": i}}


async def _pgs_own(url: str, c: int, prepare: int | None = 5) -> tuple[list[Any], Closer]:
    clients = []
    for _ in range(c):
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, prepare_threshold=prepare
        )
        clients.append(AsyncClient(conn, actor="bench", owns=True))

    def enq(client: AsyncClient) -> Enq:
        async def go(i: int) -> None:
            await client.enqueue(JOB, _payload(i))

        return go

    async def close() -> None:
        for cl in clients:
            await cl.close()

    return [enq(cl) for cl in clients], close


async def _pgs_pool(url: str, c: int, autocommit: bool) -> tuple[list[Any], Closer]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=c, max_size=c, kwargs={"autocommit": autocommit}, open=False
    )
    await pool.open(wait=True)
    client = AsyncClient.from_pool(pool, actor="bench")

    async def go(i: int) -> None:
        await client.enqueue(JOB, _payload(i))

    return [go] * c, pool.close


async def _pgs_sync_own(url: str, c: int) -> tuple[list[Any], Closer]:
    clients = [Client.connect(url, actor="bench") for _ in range(c)]

    def enq(client: Client) -> Callable[[int], None]:
        return lambda i: (client.enqueue(JOB, _payload(i)), None)[1]

    async def close() -> None:
        for cl in clients:
            cl.close()

    return [enq(cl) for cl in clients], close


async def _pgs_sync_pool(url: str, c: int) -> tuple[list[Any], Closer]:
    pool: ConnectionPool[Any] = ConnectionPool(
        url, min_size=c, max_size=c, kwargs={"autocommit": True}, open=False
    )
    pool.open(wait=True)
    client = Client.from_pool(pool, actor="bench")

    def go(i: int) -> None:
        client.enqueue(JOB, _payload(i))

    async def close() -> None:
        pool.close()

    return [go] * c, close


async def _pgs_bulk(url: str) -> tuple[Any, Closer]:
    client = await AsyncClient.connect(url, actor="bench")

    async def go(first: int, b: int) -> None:
        await client.enqueue_many(JOB, [Item(_payload(first + j)) for j in range(b)])

    return go, client.close


async def _pgs_bulk_sync(url: str) -> tuple[Any, Closer]:
    client = Client.connect(url, actor="bench")

    async def go(first: int, b: int) -> None:
        client.enqueue_many(JOB, [Item(_payload(first + j)) for j in range(b)])

    async def close() -> None:
        client.close()

    return go, close


def _pgq_payload(i: int) -> bytes:
    return json.dumps({"n": i}).encode()


def _pgq_enq(queries: Queries) -> Enq:
    async def go(i: int) -> None:
        await queries.enqueue("noop", _pgq_payload(i), 0)

    return go


async def _pgq_asyncpg(url: str, c: int, cache: bool = True) -> tuple[list[Any], Closer]:
    conns = [
        await asyncpg.connect(url, **({} if cache else {"statement_cache_size": 0}))
        for _ in range(c)
    ]

    async def close() -> None:
        for conn in conns:
            await conn.close()

    return [_pgq_enq(Queries(AsyncpgDriver(conn))) for conn in conns], close


async def _pgq_asyncpg_pool(url: str, c: int) -> tuple[list[Any], Closer]:
    pool = await asyncpg.create_pool(url, min_size=c, max_size=c)
    return [_pgq_enq(Queries(AsyncpgPoolDriver(pool)))] * c, pool.close


async def _pgq_psycopg(url: str, c: int) -> tuple[list[Any], Closer]:
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(c)]

    async def close() -> None:
        for conn in conns:
            await conn.close()

    return [_pgq_enq(Queries(PsycopgDriver(conn))) for conn in conns], close


def _pgq_bulk_of(queries: Queries) -> Any:
    async def go(first: int, b: int) -> None:
        await queries.enqueue(["noop"] * b, [_pgq_payload(first + j) for j in range(b)], [0] * b)

    return go


async def _pgq_bulk_asyncpg(url: str) -> tuple[Any, Closer]:
    conn = await asyncpg.connect(url)
    return _pgq_bulk_of(Queries(AsyncpgDriver(conn))), conn.close


async def _pgq_bulk_psycopg(url: str) -> tuple[Any, Closer]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return _pgq_bulk_of(Queries(PsycopgDriver(conn))), conn.close


def _proc_app(url: str, pool: int | None) -> App:
    sizes = {} if pool is None else {"min_size": pool, "max_size": pool}
    app = App(connector=PsycopgConnector(conninfo=url, **sizes))

    async def task(n: int) -> None:
        return None

    app.task(name="noop")(task)
    return app


async def _proc_open(url: str, pool: int | None) -> tuple[App, Closer]:
    app = _proc_app(url, pool)
    await app.open_async()
    return app, app.close_async


async def _proc_single(url: str, c: int, pool: int | None) -> tuple[list[Any], Closer]:
    app, close = await _proc_open(url, pool)
    task = app.tasks["noop"]

    async def go(i: int) -> None:
        await task.defer_async(n=i)

    return [go] * c, close


async def _proc_bulk(url: str) -> tuple[Any, Closer]:
    app, close = await _proc_open(url, 2)
    task = app.tasks["noop"]

    async def go(first: int, b: int) -> None:
        await task.batch_defer_async(*({"n": first + j} for j in range(b)))

    return go, close


CONFIGS = [
    Config(
        "pgsched",
        "AsyncClient.enqueue, own connection per client",
        {"api": "async", "connection": "own", "prepare_threshold": 5},
        open_single=_pgs_own,
    ),
    Config(
        "pgsched",
        "AsyncClient.enqueue, own connection, never prepared",
        {"api": "async", "connection": "own", "prepare_threshold": None},
        open_single=lambda u, c: _pgs_own(u, c, None),
    ),
    Config(
        "pgsched",
        "AsyncClient.from_pool(C), autocommit",
        {"api": "async", "connection": "pool of C", "autocommit": True},
        open_single=lambda u, c: _pgs_pool(u, c, True),
    ),
    Config(
        "pgsched",
        "AsyncClient.from_pool(C), commit on return",
        {"api": "async", "connection": "pool of C", "autocommit": False},
        open_single=lambda u, c: _pgs_pool(u, c, False),
    ),
    Config(
        "pgsched-sync",
        "Client.enqueue, own connection per thread",
        {"api": "sync", "connection": "own"},
        open_single=_pgs_sync_own,
        sync=True,
    ),
    Config(
        "pgsched-sync",
        "Client.from_pool(C), autocommit",
        {"api": "sync", "connection": "pool of C", "autocommit": True},
        open_single=_pgs_sync_pool,
        sync=True,
    ),
    Config(
        "pgqueuer",
        "Queries.enqueue, AsyncpgDriver per client",
        {"driver": "asyncpg", "connection": "own", "statement_cache": True},
        open_single=_pgq_asyncpg,
    ),
    Config(
        "pgqueuer",
        "Queries.enqueue, AsyncpgDriver, no statement cache",
        {"driver": "asyncpg", "connection": "own", "statement_cache": False},
        open_single=lambda u, c: _pgq_asyncpg(u, c, False),
    ),
    Config(
        "pgqueuer",
        "Queries.enqueue, AsyncpgPoolDriver(C)",
        {"driver": "asyncpg pool", "connection": "pool of C"},
        open_single=_pgq_asyncpg_pool,
    ),
    Config(
        "pgqueuer",
        "Queries.enqueue, PsycopgDriver per client",
        {"driver": "psycopg", "connection": "own"},
        open_single=_pgq_psycopg,
    ),
    Config(
        "procrastinate",
        "defer_async, PsycopgConnector pool of C",
        {"connector": "psycopg", "pool": "C"},
        open_single=lambda u, c: _proc_single(u, c, c),
    ),
    Config(
        "procrastinate",
        "defer_async, PsycopgConnector default pool",
        {"connector": "psycopg", "pool": "default"},
        open_single=lambda u, c: _proc_single(u, c, None),
    ),
    Config("pgsched", "AsyncClient.enqueue_many", {"api": "async"}, open_bulk=_pgs_bulk),
    Config("pgsched-sync", "Client.enqueue_many", {"api": "sync"}, open_bulk=_pgs_bulk_sync),
    Config(
        "pgqueuer",
        "Queries.enqueue(lists), AsyncpgDriver",
        {"driver": "asyncpg"},
        open_bulk=_pgq_bulk_asyncpg,
    ),
    Config(
        "pgqueuer",
        "Queries.enqueue(lists), PsycopgDriver",
        {"driver": "psycopg"},
        open_bulk=_pgq_bulk_psycopg,
    ),
    Config(
        "procrastinate", "Task.batch_defer_async", {"connector": "psycopg"}, open_bulk=_proc_bulk
    ),
]


def _db_of(system: str) -> str:
    return "pgsched" if system.startswith("pgsched") else system


# -- set-up ---------------------------------------------------------------------------------------


async def prepare(c: Cluster, system: str, dbname: str, template: str) -> str:
    if system == "pgsched":
        url = c.create(dbname, template=template)
        client = Client.connect(url, actor="bench")
        with client:
            client.define_job(JOB, "python", {"target": "bench.enqueue:noop"}, max_attempts=1)
    elif system == "pgqueuer":
        url = c.create(dbname)
        conn = await asyncpg.connect(url)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()
    else:
        url = c.create(dbname)
        app = _proc_app(url, 2)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    return url


# -- measurement ----------------------------------------------------------------------------------


class Counter:
    """Distinct job indexes across measurements (PgQueuer and procrastinate need none, but every
    job gets its own argument)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, k: int) -> int:
        first = self.next
        self.next += k
        return first


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure_single(  # noqa: PLR0917
    c: Cluster, cfg: Config, url: str, dbname: str, n: int, conc: int, ids: Counter
) -> dict[str, Any]:
    if cfg.open_single is None:
        raise ValueError(cfg.label)
    before = c.counters(dbname)
    clients, close = await cfg.open_single(url, conc)
    per = n // conc
    try:
        base = ids.take(conc * WARMUP)
        if cfg.sync:
            with ThreadPoolExecutor(max_workers=conc) as ex:
                list(
                    ex.map(
                        lambda k: [clients[k](base + k * WARMUP + j) for j in range(WARMUP)],
                        range(conc),
                    )
                )
        else:
            await asyncio.gather(
                *(_loop(clients[k], base + k * WARMUP, WARMUP) for k in range(conc))
            )
        reset_statements(c, dbname)
        cpu0, server0 = _cpu(), c.cpu_seconds()
        first = ids.take(per * conc)
        if cfg.sync:
            barrier = threading.Barrier(conc + 1)

            def work(k: int) -> None:
                barrier.wait()
                f = clients[k]
                for j in range(per):
                    f(first + k * per + j)

            with ThreadPoolExecutor(max_workers=conc) as ex:
                futures = [ex.submit(work, k) for k in range(conc)]
                barrier.wait()
                t0 = time.perf_counter()
                for fut in futures:
                    fut.result()
                wall = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            await asyncio.gather(*(_loop(clients[k], first + k * per, per) for k in range(conc)))
            wall = time.perf_counter() - t0
        cpu, server = _cpu() - cpu0, c.cpu_seconds() - server0
    finally:
        await close()
    after = await _settled_counters(c, dbname)
    jobs = per * conc
    timing = (wall, cpu, server)
    return _row(
        c, cfg, dbname, ("single", conc), (jobs, jobs + conc * WARMUP), timing, before, after
    )


async def _loop(f: Enq, first: int, k: int) -> None:
    for j in range(k):
        await f(first + j)


async def measure_bulk(  # noqa: PLR0917
    c: Cluster, cfg: Config, url: str, dbname: str, b: int, ids: Counter
) -> dict[str, Any]:
    if cfg.open_bulk is None:
        raise ValueError(cfg.label)
    before = c.counters(dbname)
    go, close = await cfg.open_bulk(url)
    calls = max(10, 5000 // b)
    try:
        await go(ids.take(b), b)  # warm-up: connection, definition, statement
        reset_statements(c, dbname)
        cpu0, server0 = _cpu(), c.cpu_seconds()
        first = ids.take(calls * b)
        t0 = time.perf_counter()
        for k in range(calls):
            await go(first + k * b, b)
        wall = time.perf_counter() - t0
        cpu, server = _cpu() - cpu0, c.cpu_seconds() - server0
    finally:
        await close()
    after = await _settled_counters(c, dbname)
    timing = (wall, cpu, server)
    return _row(c, cfg, dbname, ("bulk", b), (calls * b, (calls + 1) * b), timing, before, after)


async def _settled_counters(c: Cluster, dbname: str) -> dict[str, float]:
    """pg_stat_database and pg_stat_wal once the measurement's backends have exited (a backend
    reports its counters at exit, or at most every second while busy)."""
    await asyncio.sleep(0.5)
    return c.counters(dbname)


def _row(  # noqa: PLR0917
    c: Cluster,
    cfg: Config,
    dbname: str,
    at: tuple[str, int],
    counts: tuple[int, int],
    timing: tuple[float, float, float],
    before: dict[str, float],
    after: dict[str, float],
) -> dict[str, Any]:
    """One measurement. `counts`: jobs timed, and jobs the counters saw (warm-up included);
    `timing`: wall, client CPU and server CPU seconds of the timed part."""
    mode, point = at
    jobs, counted = counts
    wall, cpu, server = timing
    d = {k: after[k] - before[k] for k in after}
    return {
        "mode": mode,
        "point": point,
        "system": cfg.system,
        "label": cfg.label,
        "knobs": cfg.knobs,
        "jobs": jobs,
        "wall_s": round(wall, 4),
        "jobs_per_s": round(jobs / wall, 1),
        "client_cpu_us_per_job": round(cpu / jobs * 1e6, 1),
        "server_cpu_us_per_job": round(server / jobs * 1e6, 1),
        # over the whole measurement, connecting and warm-up included (the counters' own
        # reads add a transaction or two)
        "xacts_per_job": round(d["commits"] / counted, 3),
        "wal_flushes_per_job": round(d["wal_syncs"] / counted, 3),
        "wal_bytes_per_job": round(d["wal_bytes"] / counted),
        "statements": statements(c, dbname, wall, jobs, top=5),
        "load1": round(os.getloadavg()[0], 2),
    }


# -- where the time goes -------------------------------------------------------------------------


async def explain(urls: dict[str, str]) -> dict[str, list[str]]:
    """EXPLAIN ANALYZE of each system's single-job enqueue statement, rolled back: the
    statement each call sends, as pg_stat_statements recorded it, with this call's values."""
    from pgsched.app.db.sql import query

    out: dict[str, list[str]] = {}
    with psycopg.connect(urls["pgsched"]) as conn:
        (sid, version) = conn.execute(
            "SELECT id, version FROM pgsched.schedule WHERE name = %s", [JOB]
        ).fetchone() or (0, 0)
        items = json.dumps([{"n": 0, "payload": {"kwargs": {"n": 1}}}])
        plan = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, SUMMARY) " + query("enqueue_runs"),
            {
                "schedule_id": sid,
                "version": version,
                "items": items,
                "now": None,
                "trace_context": None,
                "actor": "bench",
                "meta": "{}",
            },
        ).fetchall()
        conn.rollback()
        out["pgsched enqueue_runs"] = [r[0] for r in plan]
    return out


async def profile_clients(urls: dict[str, str], n: int, b: int) -> dict[str, Any]:
    """Where this process's time goes in one client's enqueues (C = 1) and one bulk call
    series: cProfile of pgsched AsyncClient.enqueue / enqueue_many and PgQueuer's asyncpg
    enqueue, the same counts. cProfile inflates Python; read shares, not absolute times. The
    raw profiles go to bench/results/tmp/ (git-ignored)."""
    out: dict[str, Any] = {}
    cases: list[tuple[str, Callable[[str], Awaitable[tuple[Any, Closer]]], bool]] = [
        ("pgsched single", lambda u: _first_client(_pgs_own(u, 1)), False),
        ("pgqueuer single", lambda u: _first_client(_pgq_asyncpg(u, 1)), False),
        ("pgsched bulk", _pgs_bulk, True),
        ("pgqueuer bulk", _pgq_bulk_asyncpg, True),
    ]
    tmp = RESULTS / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, opener, bulk in cases:
        url = urls[name.split()[0]]
        go, close = await opener(url)
        try:
            calls = max(10, 5000 // b) if bulk else n
            for j in range(WARMUP):
                await (go(j, b) if bulk else go(j))
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            for j in range(calls):
                await (go(j * b, b) if bulk else go(j))
            prof.disable()
            wall = time.perf_counter() - t0
        finally:
            await close()
        path = tmp / f"enqueue_{name.replace(' ', '_')}.prof"
        prof.dump_stats(path)
        st = pstats.Stats(prof)
        total = st.total_tt  # type: ignore[attr-defined]
        jobs = calls * (b if bulk else 1)
        entries = []
        for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            entries.append(
                {
                    "function": f"{_short_path(file)}:{line}({func})",
                    "calls_per_job": round(nc / jobs, 3),
                    "own_share": round(tt / total, 3),
                    "cumulative_share": round(ct / total, 3),
                }
            )
        out[name] = {
            "jobs": jobs,
            "wall_s_profiled": round(wall, 3),
            "profiled_us_per_job": round(total / jobs * 1e6, 1),
            "top_cumulative": sorted(entries, key=lambda e: -e["cumulative_share"])[:30],
            "top_own": sorted(entries, key=lambda e: -e["own_share"])[:15],
            "file": str(path.relative_to(RESULTS.parent.parent)),
        }
    return out


async def _first_client(opened: Awaitable[tuple[list[Any], Closer]]) -> tuple[Any, Closer]:
    clients, close = await opened
    return clients[0], close


def _short_path(file: str) -> str:
    for marker in ("site-packages/", "/benchq/", "/lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _variants() -> dict[str, str]:
    """enqueue_runs and what it costs without each of its parts (for diagnosis only: the text
    is edited here, never in app/). A part whose text is not found is left out."""
    from pgsched.app.db.sql import query

    full = str(query("enqueue_runs"))
    ev = re.compile(r"\), ev AS \(.*?\n\), wake AS \(", re.S)
    wake = re.compile(r"\), wake AS \(\n.*?\n\)\nSELECT", re.S)

    def no_event(t: str) -> str:
        return ev.sub("), wake AS (", t)

    def no_notify(t: str) -> str:
        return wake.sub(")\nSELECT", t).replace("(SELECT count(*) FROM wake)", "0::bigint")

    def id_only(t: str) -> str:
        return t.replace(
            "r.id, r.due_at, r.created_at, r.idempotency_key\nFROM (SELECT 1) one",
            "r.id\nFROM (SELECT 1) one",
        )

    out = {
        "as is": full,
        "without the run.created event": no_event(full),
        "without pg_notify": no_notify(full),
        "returning the id only": id_only(full),
        "run row only (no event, no notify, id only)": id_only(no_notify(no_event(full))),
    }
    kept = {k: v for k, v in out.items() if k == "as is" or v != full}
    # A tag per variant: pg_stat_statements keeps the text as first sent, comment included.
    return {k: f"-- variant {i}\n{v}" for i, (k, v) in enumerate(kept.items())}


async def ablate(c: Cluster, url: str, dbname: str, n: int, chunk: int = 100) -> dict[str, Any]:
    """Server-side cost of enqueue_runs' parts: each variant sent n times, one item, on one
    autocommit psycopg connection (prepared after its 5th call, as the client's), variants
    interleaved in chunks so a neighbour's load hits all alike. Reported per variant: median
    ms per call (the round trip and commit included), and pg_stat_statements' execution and
    planning ms and WAL bytes per call."""
    variants = _variants()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id, version FROM pgsched.schedule WHERE name = %s", [JOB]
        ).fetchone()
    if row is None:
        raise RuntimeError("no job definition to enqueue to")
    sid, version = row
    whole = "sync Client.enqueue (the whole client, same statement)"
    times: dict[str, list[float]] = {k: [] for k in [*variants, whole]}
    reset_statements(c, dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        client = Client(conn, actor="bench")
        for i in range(n // chunk + 1):  # the first pass warms up (statements prepared)
            t0 = time.perf_counter()
            for j in range(chunk):
                client.enqueue(JOB, _payload(i * chunk + j))
            if i:
                times[whole].append((time.perf_counter() - t0) / chunk * 1000)
            for name, text in variants.items():
                t0 = time.perf_counter()
                for j in range(chunk):
                    items = json.dumps([{"n": 0, "payload": {"kwargs": {"n": i * chunk + j}}}])
                    conn.execute(
                        text,  # type: ignore[arg-type]
                        {
                            "schedule_id": sid,
                            "version": version,
                            "items": items,
                            "now": None,
                            "trace_context": None,
                            "actor": "bench",
                            "meta": "{}",
                        },
                    )
                if i:
                    times[name].append((time.perf_counter() - t0) / chunk * 1000)
    stats = {s["query"][:14]: s for s in statements(c, dbname, 1.0, 1, top=20)}
    out: dict[str, Any] = {}
    for name, text in variants.items():
        # "as is" shares its query id with the whole client's statement (comments do not
        # count), so its entry holds both, under the text seen first.
        st = stats.get(re.sub(r"\s+", " ", text)[:14]) or stats.get("WITH def AS MA", {})
        calls = st.get("calls", 0) or 1
        out[name] = {
            "ms_per_call_median": round(statistics.median(times[name]), 3),
            "exec_ms_per_call": st.get("exec_ms_per_call"),
            "plan_ms_per_call": st.get("plan_ms_per_call"),
            "wal_bytes_per_call": st.get("wal_bytes_per_call"),
            "calls": calls,
        }
    out[whole] = {"ms_per_call_median": round(statistics.median(times[whole]), 3)}
    return out


async def diagnose(
    c: Cluster, urls: dict[str, str], dbname: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Where pgsched's time goes, on the last round's databases: the plan, the statement's
    parts, and the client's Python."""
    out: dict[str, Any] = {"explain": await explain(urls)}
    if args.ablate:
        out["ablation"] = await ablate(c, urls["pgsched"], dbname, args.ablate)
    if not args.no_profile and "pgqueuer" in urls:
        out["client_profile"] = await profile_clients(urls, 1000, max(args.batches))
    return out


# -- summary --------------------------------------------------------------------------------------


def summarise(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str, str], list[dict[str, Any]]] = {}
    for r in raw:
        groups.setdefault((r["mode"], r["point"], r["system"], r["label"]), []).append(r)
    out = []
    for (mode, point, system, label), rows in groups.items():
        rates = [r["jobs_per_s"] for r in rows]
        out.append(
            {
                "mode": mode,
                "point": point,
                "system": system,
                "label": label,
                "knobs": rows[0]["knobs"],
                "rounds": len(rows),
                "median_jobs_per_s": round(statistics.median(rates), 1),
                "min_jobs_per_s": min(rates),
                "max_jobs_per_s": max(rates),
                "client_cpu_us_per_job": statistics.median(
                    r["client_cpu_us_per_job"] for r in rows
                ),
                "server_cpu_us_per_job": statistics.median(
                    r["server_cpu_us_per_job"] for r in rows
                ),
                "wal_flushes_per_job": statistics.median(r["wal_flushes_per_job"] for r in rows),
                "wal_bytes_per_job": statistics.median(r["wal_bytes_per_job"] for r in rows),
            }
        )
    return out


def best(summary: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per mode:point, per system, its best configuration by median jobs/s."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in summary:
        key = f"{s['mode']}:{s['point']}"
        cur = out.setdefault(key, {}).get(s["system"])
        if cur is None or s["median_jobs_per_s"] > cur["median_jobs_per_s"]:
            out[key][s["system"]] = s
    return out


def ratios(bests: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for key, systems in bests.items():
        mode, point = key.split(":")
        for ours in ("pgsched", "pgsched-sync"):
            if ours not in systems:
                continue
            row: dict[str, Any] = {
                "mode": mode,
                "point": int(point),
                "ours": ours,
                "ours_jobs_per_s": systems[ours]["median_jobs_per_s"],
                "ours_config": systems[ours]["label"],
            }
            for peer in ("pgqueuer", "procrastinate"):
                if peer in systems:
                    row[f"{peer}_jobs_per_s"] = systems[peer]["median_jobs_per_s"]
                    row[f"{peer}_config"] = systems[peer]["label"]
                    row[f"vs_{peer}"] = round(
                        systems[ours]["median_jobs_per_s"] / systems[peer]["median_jobs_per_s"], 2
                    )
            # per round: the best of each system in that round, then the ratio
            rows.append(row)
    return rows


def per_round_ratios(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pgsched best / PgQueuer best within each round (a spread, beside the medians)."""
    best_of: dict[tuple[str, int, int, str], float] = {}
    for r in raw:
        k = (r["mode"], r["point"], r["round"], r["system"])
        best_of[k] = max(best_of.get(k, 0.0), r["jobs_per_s"])
    out = []
    for (mode, point, rnd, system), v in sorted(best_of.items()):
        if system != "pgsched":
            continue
        peer = best_of.get((mode, point, rnd, "pgqueuer"))
        if peer:
            out.append(
                {"mode": mode, "point": point, "round": rnd, "vs_pgqueuer": round(v / peer, 2)}
            )
    return out


# -- run ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    info["uptime_at_start"] = _uptime()
    raw: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    started = time.monotonic()
    configs = [cfg for cfg in CONFIGS if _db_of(cfg.system) in args.systems]
    with cluster(fast=False, statements=True) as c:
        info |= c.server_info()
        template = "pgsched_template"
        migrate(c.create(template))
        ids = Counter()
        for rnd in range(args.rounds):
            order = [args.systems[(i + rnd) % len(args.systems)] for i in range(len(args.systems))]
            urls = {}
            for system in order:
                urls[system] = await prepare(c, system, f"enq_{system}_{rnd}", template)
            points: list[tuple[str, int]] = [("single", k) for k in args.concurrency]
            points += [("bulk", b) for b in args.batches]
            for mode, point in points:
                for system in order:
                    for cfg in configs:
                        if _db_of(cfg.system) != system:
                            continue
                        if (cfg.open_single is None) == (mode == "single"):
                            continue
                        dbname = f"enq_{system}_{rnd}"
                        row = await (
                            measure_single(c, cfg, urls[system], dbname, args.n, point, ids)
                            if mode == "single"
                            else measure_bulk(c, cfg, urls[system], dbname, point, ids)
                        )
                        row["round"] = rnd
                        raw.append(row)
                        print(
                            f"r{rnd} {mode:>6} {point:>5} | {cfg.system:>13} | {cfg.label:<55}"
                            f" | {row['jobs_per_s']:9.1f}/s | client "
                            f"{row['client_cpu_us_per_job']:7.1f} us/job, server "
                            f"{row['server_cpu_us_per_job']:7.1f} us/job | load {row['load1']}",
                            flush=True,
                        )
            if rnd == args.rounds - 1 and "pgsched" in urls:
                extra |= await diagnose(c, urls, f"enq_pgsched_{rnd}", args)
            for system in order:
                c.drop(f"enq_{system}_{rnd}")
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["uptime_at_end"] = _uptime()
    summary = summarise(raw)
    bests = best(summary)
    return {
        "benchmark": "enqueue",
        "date": now_iso(),
        "command": command_line("bench.enqueue"),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": info,
        "packages": {p: version_of(p) for p in ("pgsched", *PACKAGES)},
        "sources": source_digests(*SOURCES),
        "params": {
            "n_single": args.n,
            "concurrency": args.concurrency,
            "batches": args.batches,
            "bulk_calls": "max(10, 5000 // B)",
            "rounds": args.rounds,
            "warmup_calls_per_client": WARMUP,
            "systems": args.systems,
            "durability": "durable (fsync on, synchronous_commit on)",
            "measured": "the enqueue call returning after its commit",
        },
        "target": "single enqueue >= 1.0x PgQueuer's enqueues/s; bulk >= 1.0x its jobs/s "
        "(before ADR 0027: 0.34x and 0.51x)",
        "summary": summary,
        "best": bests,
        "ratios": ratios(bests),
        "per_round_vs_pgqueuer": per_round_ratios(raw),
        "raw": raw,
        **extra,
    }


def _uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


def report(payload: dict[str, Any]) -> str:
    parts = []
    rows = [
        [
            s["mode"],
            s["point"],
            s["system"],
            s["label"],
            f"{s['median_jobs_per_s']:,.0f}",
            f"{s['min_jobs_per_s']:,.0f}-{s['max_jobs_per_s']:,.0f}",
            s["client_cpu_us_per_job"],
            s["server_cpu_us_per_job"],
            s["wal_flushes_per_job"],
        ]
        for s in payload["summary"]
    ]
    parts.append(
        table(
            [
                "mode",
                "C / B",
                "system",
                "configuration",
                "jobs/s (median)",
                "range",
                "client us/job",
                "server us/job",
                "WAL flushes/job",
            ],
            rows,
        )
    )
    rrows = [
        [
            r["mode"],
            r["point"],
            r["ours"],
            f"{r['ours_jobs_per_s']:,.0f}",
            f"{r.get('pgqueuer_jobs_per_s', 0):,.0f}",
            f"**{r.get('vs_pgqueuer', '-')}x**",
            f"{r.get('procrastinate_jobs_per_s', 0):,.0f}",
            f"{r.get('vs_procrastinate', '-')}x",
        ]
        for r in payload["ratios"]
    ]
    parts.append(
        table(
            [
                "mode",
                "C / B",
                "ours",
                "ours jobs/s",
                "PgQueuer",
                "/ PgQueuer",
                "procrastinate",
                "/ procrastinate",
            ],
            rrows,
        )
    )
    return "\n\n".join(parts)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown systems: {', '.join(sorted(unknown))}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.enqueue", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1500, help="single enqueues per measurement")
    p.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="concurrent clients")
    p.add_argument("--batches", type=_ints, default=[100, 1000], help="bulk sizes B")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--systems", type=_names, default=list(SYSTEMS))
    p.add_argument(
        "--ablate",
        type=int,
        default=1000,
        help="calls per variant of the enqueue statement's ablation (0: skip)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the client cProfile")
    p.add_argument("--out", default=None, help="results file name in bench/results/")
    args = p.parse_args(argv)
    # procrastinate warns that its App lives in __main__; it does, on purpose.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    payload = asyncio.run(run(args))
    out = args.out or f"enqueue-{datetime.now(UTC).date().isoformat()}.json"
    path = write_results(out, payload)
    print()
    print(report(payload))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
