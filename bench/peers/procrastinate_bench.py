"""procrastinate driven through its documented API, for bench.drain and bench.lag.

Setup as its quickstart shows: `App(connector=PsycopgConnector(...))`, `apply_schema_async()`,
one async task, `Task.batch_defer_async` to enqueue (one statement), and
`App.run_worker_async(concurrency=…)` in this process (listen/notify on, the default). The
connector's pool (psycopg_pool) gets `concurrency + 2` connections, like pgsched's worker pool
(slots + 3), so the pool is not what limits it. procrastinate records every transition
(deferred, started, succeeded) in `procrastinate_events`, by trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from procrastinate import App, JobContext, PsycopgConnector

from bench.peers import scalar_rows, wait_until_zero

DISTRIBUTION = "procrastinate"
TASK = "noop"
ENQUEUE_CHUNK = 5000
# 1 while any job is left to do or being done, 0 once drained.
REMAINING = (
    "SELECT count(*) FROM (SELECT 1 FROM procrastinate_jobs"
    " WHERE status IN ('todo', 'doing') LIMIT 1) AS left_"
)


def _app(url: str, pool_size: int, handler: Callable[..., Awaitable[None]] | None = None) -> App:
    app = App(connector=PsycopgConnector(conninfo=url, min_size=1, max_size=pool_size))

    async def noop(context: JobContext) -> None:
        if handler is not None:
            await handler(context)

    app.task(name=TASK, pass_context=True)(noop)
    return app


async def install(url: str) -> None:
    app = _app(url, 2)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue_now(url: str, n: int) -> None:
    app = _app(url, 2)
    async with app.open_async():
        task = app.tasks[TASK]
        for i in range(0, n, ENQUEUE_CHUNK):
            await task.batch_defer_async(*({} for _ in range(min(ENQUEUE_CHUNK, n - i))))


def settings(concurrency: int, polling: float | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {"concurrency": concurrency, "pool_max_size": concurrency + 2}
    if polling is not None:
        opts["fetch_job_polling_interval"] = polling
    return opts


@contextlib.asynccontextmanager
async def _worker(app: App, concurrency: int, polling: float | None) -> AsyncIterator[Any]:
    kwargs: dict[str, Any] = {
        "concurrency": concurrency,
        "wait": True,
        "install_signal_handlers": False,
    }
    if polling is not None:
        kwargs["fetch_job_polling_interval"] = polling
    task = asyncio.create_task(app.run_worker_async(**kwargs))
    try:
        yield task
    finally:
        task.cancel()  # documented: cancelling run_worker_async stops the worker gracefully
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def drain(url: str, n: int, concurrency: int, polling: float | None = None) -> float:
    app = _app(url, concurrency + 2)
    async with app.open_async():
        started = time.monotonic()
        async with _worker(app, concurrency, polling) as task:

            async def alive() -> None:
                if task.done():
                    task.result()
                    raise RuntimeError("the procrastinate worker stopped early")

            done = await wait_until_zero(url, REMAINING, within=600, on_tick=alive)
    return done - started


async def span(url: str) -> dict[str, Any]:
    ((first, last),) = await scalar_rows(
        url,
        "SELECT (SELECT min(at) FROM procrastinate_events WHERE type = 'started'),"
        " (SELECT max(at) FROM procrastinate_events WHERE type = 'succeeded')",
    )
    return {"first_start": first, "last_done": last, "span_s": (last - first).total_seconds()}


async def history(url: str) -> dict[str, int]:
    rows = await scalar_rows(
        url, "SELECT type::text, count(*) FROM procrastinate_events GROUP BY 1 ORDER BY 1"
    )
    return {kind: int(count) for kind, count in rows}


async def lag(
    url: str, n: int, *, rate: float, lead: float, concurrency: int, polling: float | None = None
) -> dict[str, Any]:
    """n jobs with schedule_at spaced 1/rate apart from now + lead (the database's now)."""
    ((db_now,),) = await scalar_rows(url, "SELECT now()")
    seen: dict[int, tuple[datetime, datetime]] = {}

    async def record(context: JobContext) -> None:
        job = context.job
        if job.id is not None and job.scheduled_at is not None:
            seen[job.id] = (job.scheduled_at, datetime.now(UTC))

    app = _app(url, concurrency + 2, record)
    async with app.open_async():
        task = app.tasks[TASK]
        start = db_now + timedelta(seconds=lead)
        jobs = [
            task.configure(schedule_at=start + timedelta(seconds=i / rate)).make_new_job()
            for i in range(n)
        ]
        for i in range(0, n, ENQUEUE_CHUNK):
            await app.job_manager.batch_defer_jobs_async(jobs[i : i + ENQUEUE_CHUNK])
        async with _worker(app, concurrency, polling) as worker:

            async def alive() -> None:
                if worker.done():
                    worker.result()
                    raise RuntimeError("the procrastinate worker stopped early")

            await wait_until_zero(url, REMAINING, within=lead + n / rate + 120, on_tick=alive)
    started = dict(
        await scalar_rows(
            url,
            "SELECT job_id, min(at) FROM procrastinate_events WHERE type = 'started' GROUP BY 1",
        )
    )
    return {
        "claim_s": [(started[i] - due).total_seconds() for i, (due, _) in seen.items()],
        "handler_s": [(at - due).total_seconds() for due, at in seen.values()],
        "jobs": len(seen),
    }
