"""The event guard's cost on the worker's hot path (migration 0016, ADR 0021).

    PGSCHED_BENCH_DSN=postgresql://postgres@127.0.0.1:5432/postgres \\
        python -m bench.event_guard [--batch 50] [--batches 20] [--rounds 12]

On a fresh database (created, migrated, dropped afterwards; the DSN must be a superuser's), a
connection acting as pgsched_worker claims `batch` runs in one claim and completes them in one
batched completion (store.complete_attempts), `batches` times per round. Rounds alternate the
guard's trigger enabled and disabled (ALTER TABLE ... DISABLE TRIGGER event_guard, between
rounds), so both sides see the same table sizes and the same neighbours' load. Reported: the
median per-run time of the claim and of the completion with and without the guard, and the
median over round pairs of their ratio (with / without).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from bench._common import command_line, machine, now_iso, source_digests, table, write_results
from pgsched.app.db import store
from pgsched.app.domain import schedule
from pgsched.app.settings import with_database
from tests.support import store as test_store


def _migrate(dsn: str) -> None:
    from tests.conftest import migrate

    migrate(dsn)


async def _runs(conn: store.Conn, schedule_id: int, count: int) -> None:
    at = datetime.now(UTC)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        # Waiting runs only, without their run.created events: the benchmark times claims and
        # completions, not this setup.
        await conn.execute(
            "INSERT INTO pgsched.run (schedule_id, due_at, adhoc, origin, state, queue, priority,"
            " available_at, max_attempts, created_at)"
            " SELECT %s, %s::timestamptz + make_interval(secs => g), false, 'schedule', 'waiting',"
            " 'default', 0, now() - interval '1 hour', 3, now()"
            " FROM generate_series(%s::int, %s::int) g",
            [schedule_id, at, start, start + n - 1],
        )


async def _round(worker: store.Conn, batch: int, batches: int) -> tuple[list[float], list[float]]:
    claims, completions = [], []
    for _ in range(batches):
        t0 = time.perf_counter()
        rows = await test_store.claim_runs(
            worker,
            worker_id=1,
            queues=["default"],
            limit=batch,
            lease_seconds=30,
            actor="w",
            now=None,
        )
        t1 = time.perf_counter()
        if len(rows) != batch:
            raise RuntimeError(f"claimed {len(rows)} runs, wanted {batch}")
        reports = [store.Report(store.Lease.of(r), "succeeded", {"status": "ok"}) for r in rows]
        done = await store.complete_attempts(worker, reports, actor="w", now=None)
        t2 = time.perf_counter()
        if any(d is None for d in done):
            raise RuntimeError("a completion was fenced")
        claims.append((t1 - t0) / batch * 1e6)
        completions.append((t2 - t1) / batch * 1e6)
    return claims, completions


async def main(args: argparse.Namespace) -> None:
    admin_dsn = os.environ["PGSCHED_BENCH_DSN"]
    name = f"pgsched_bench_guard_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = with_database(admin_dsn, name)
    try:
        await asyncio.to_thread(_migrate, dsn)
        admin = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        worker = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        await worker.execute("SET ROLE pgsched_worker")
        fields = schedule.complete(
            {"name": "bench", "job_type": "noop", "kind": "interval", "interval_seconds": 3600}
        )
        s = await store.create_schedule(admin, fields, actor="b", now=None)
        total = args.batch * args.batches * args.rounds + args.batch * args.batches
        await _runs(admin, s["id"], total)
        await admin.execute("ANALYZE pgsched.run")
        await _round(worker, args.batch, args.batches)  # warm-up, guard on
        raw: list[dict[str, Any]] = []
        for r in range(args.rounds):
            on = r % 2 == 0
            state = "ENABLE" if on else "DISABLE"
            await admin.execute(
                sql.SQL("ALTER TABLE pgsched.event {} TRIGGER event_guard").format(sql.SQL(state))
            )
            claims, completions = await _round(worker, args.batch, args.batches)
            raw.append({"guard": on, "claim_us": claims, "complete_us": completions})
        await admin.execute("ALTER TABLE pgsched.event ENABLE TRIGGER event_guard")
        await admin.close()
        await worker.close()
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def med(guard: bool, key: str) -> float:
        return statistics.median(v for x in raw if x["guard"] is guard for v in x[key])

    ratios: dict[str, float] = {}
    for key in ("claim_us", "complete_us"):
        pairs = [
            statistics.median(raw[i][key]) / statistics.median(raw[i + 1][key])
            for i in range(0, len(raw) - 1, 2)
        ]
        ratios[key] = statistics.median(pairs)
    rows = [
        [
            key.removesuffix("_us"),
            f"{med(True, key):.1f}",
            f"{med(False, key):.1f}",
            f"{ratios[key]:.3f}",
        ]
        for key in ("claim_us", "complete_us")
    ]
    print(f"batch {args.batch}, {args.batches} batches per round, {args.rounds} rounds")
    print(table(["step (per run)", "guard µs", "no guard µs", "ratio (median of pairs)"], rows))
    write_results(
        "event_guard.json",
        {
            "command": command_line("bench.event_guard"),
            "date": now_iso(),
            "machine": machine(),
            "sources": source_digests(
                "alembic/versions/0016_job_role_and_event_guard.py", "app/db/queries/runs.sql"
            ),
            "settings": vars(args),
            "ratios": ratios,
            "raw": raw,
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=12)
    asyncio.run(main(parser.parse_args()))
