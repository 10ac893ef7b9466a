"""PgQueuer (janbjorge/pgqueuer) driven through its documented API, for bench.drain and bench.lag.

Setup as its README shows: one asyncpg connection, `AsyncpgDriver`, `Queries.install()` (the
default durability, `durable`: every table logged), a `QueueManager` with one entrypoint, and
`QueueManager.run(batch_size=…, max_concurrent_tasks=…)`. Jobs are enqueued with the batch form
of `Queries.enqueue` (lists), which is one statement. PgQueuer records every transition
(queued, picked, successful) in `pgqueuer_log`, and deletes a finished job from `pgqueuer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

from bench.peers import scalar_rows, wait_until_zero

DISTRIBUTION = "pgqueuer"
ENTRYPOINT = "noop"
ENQUEUE_CHUNK = 5000
# 1 while any job is left (queued or picked: a finished job is deleted), 0 once drained.
REMAINING = "SELECT count(*) FROM (SELECT 1 FROM pgqueuer LIMIT 1) AS left_"


async def install(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def _enqueue(url: str, offsets: list[timedelta | None]) -> None:
    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        for i in range(0, len(offsets), ENQUEUE_CHUNK):
            chunk = offsets[i : i + ENQUEUE_CHUNK]
            await queries.enqueue(
                [ENTRYPOINT] * len(chunk), [None] * len(chunk), [0] * len(chunk), chunk
            )
    finally:
        await conn.close()


async def enqueue_now(url: str, n: int) -> None:
    await _enqueue(url, [None] * n)


def settings(concurrency: int, batch_size: int | None = None) -> dict[str, Any]:
    # max_concurrent_tasks must be at least twice the batch size (QueueManager.run checks it).
    batch = batch_size or min(10, max(1, concurrency // 2))
    return {"max_concurrent_tasks": concurrency, "batch_size": batch}


@contextlib.asynccontextmanager
async def _worker(url: str, concurrency: int, batch_size: int | None, handler: Any) -> Any:
    conn = await asyncpg.connect(url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    qm.entrypoint(ENTRYPOINT)(handler)
    opts = settings(concurrency, batch_size)
    task = asyncio.create_task(
        qm.run(
            batch_size=opts["batch_size"],
            max_concurrent_tasks=opts["max_concurrent_tasks"],
            dequeue_timeout=timedelta(seconds=1),
        )
    )
    try:
        yield task
    finally:
        qm.shutdown.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            if not conn.is_closed():
                await conn.close()


async def drain(url: str, n: int, concurrency: int, batch_size: int | None = None) -> float:
    async def noop(job: Job) -> None:
        return None

    started = time.monotonic()
    async with _worker(url, concurrency, batch_size, noop) as task:

        async def alive() -> None:
            if task.done():
                task.result()  # raises what the worker died of
                raise RuntimeError("the PgQueuer worker stopped early")

        done = await wait_until_zero(url, REMAINING, within=600, on_tick=alive)
    return done - started


async def span(url: str) -> dict[str, Any]:
    ((first, last),) = await scalar_rows(
        url,
        "SELECT (SELECT min(created) FROM pgqueuer_log WHERE status = 'picked'),"
        " (SELECT max(created) FROM pgqueuer_log WHERE status = 'successful')",
    )
    return {"first_start": first, "last_done": last, "span_s": (last - first).total_seconds()}


async def history(url: str) -> dict[str, int]:
    rows = await scalar_rows(
        url, "SELECT status::text, count(*) FROM pgqueuer_log GROUP BY 1 ORDER BY 1"
    )
    return {status: int(count) for status, count in rows}


async def lag(
    url: str, n: int, *, rate: float, lead: float, concurrency: int, batch_size: int | None = None
) -> dict[str, Any]:
    """n jobs, execute_after spaced 1/rate apart from now + lead (by the database clock)."""
    await _enqueue(url, [timedelta(seconds=lead + i / rate) for i in range(n)])
    seen: dict[int, tuple[datetime, datetime]] = {}

    async def noop(job: Job) -> None:
        seen[int(job.id)] = (job.execute_after, datetime.now(UTC))

    async with _worker(url, concurrency, batch_size, noop) as task:

        async def alive() -> None:
            if task.done():
                task.result()
                raise RuntimeError("the PgQueuer worker stopped early")

        await wait_until_zero(url, REMAINING, within=lead + n / rate + 120, on_tick=alive)
    # The pick is logged in the dequeue's own statement: its created is the claim's now().
    picked = dict(
        await scalar_rows(
            url, "SELECT job_id, min(created) FROM pgqueuer_log WHERE status = 'picked' GROUP BY 1"
        )
    )
    return {
        "claim_s": [(picked[i] - due).total_seconds() for i, (due, _) in seen.items()],
        "handler_s": [(at - due).total_seconds() for due, at in seen.values()],
        "jobs": len(seen),
    }
