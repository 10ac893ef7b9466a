"""The long-running service: the processes of pgsched in one asyncio program.

`pgsched run` (app.cli) migrates the database and installs the built-in maintenance schedule,
then serves two ticker loops plus two services with their own shutdown: a worker (which runs
that schedule like any job) and the API. `pgsched ticker` serves the ticker loops alone. While the
database is away a loop retries with capped backoff and jitter, so it resumes within a second or
two of the database coming back, and the process logs the outage once (app.db.outage, ADR
0022); any other failure is logged and retried after its period. A loop never takes the others
down. SIGTERM or SIGINT stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgsched import otel
from pgsched.app import ticker
from pgsched.app.clock import Clock
from pgsched.app.db import outage
from pgsched.app.db.outage import Backoff, first_line
from pgsched.app.db.store import Conn
from pgsched.otel import runs

log = logging.getLogger("pgsched.service")

# A long-running part with its own shutdown: it runs until the event it is given is set.
Service = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Loop:
    name: str
    period_seconds: float
    step: Callable[[Conn], Awaitable[object]]


async def _run_loop(pool: AsyncConnectionPool[Conn], loop: Loop, clock: Clock) -> None:
    backoff = Backoff()
    while True:
        try:
            async with pool.connection() as conn:
                await loop.step(conn)
        except psycopg.OperationalError as exc:  # the database is away: outage logs it once
            log.debug("%s failed (%s); retrying", loop.name, first_line(exc))
            await clock.sleep(backoff.next())
            continue
        except Exception:  # keep the service up; the next period retries
            log.exception("%s failed; retrying in %ss", loop.name, loop.period_seconds)
        backoff.reset()
        await clock.sleep(loop.period_seconds)


def default_loops(clock: Clock, *, tickers: int = 2) -> list[Loop]:
    async def materialise(conn: Conn) -> object:
        with runs.ticking() as tick:  # the tick's span and metrics (otel.runs)
            result = await ticker.tick(conn, now=clock.db_now(), actor="ticker")
            tick.done(result)
        return result

    # The ticker runs twice a second with a 1 s look-ahead, so runs exist before they are due.
    # Two of them, each on its own connection: they share a busy boundary through SKIP LOCKED,
    # which spreads the server's work over two backends (ADR 0011); on a quiet one the second
    # finds nothing to do. Partition maintenance is not a loop: it is the built-in schedule
    # pgsched.maintenance.
    return [Loop(f"ticker-{n}", 0.5, materialise) for n in range(1, tickers + 1)]


async def serve(
    url: str,
    clock: Clock,
    stop: asyncio.Event,
    loops: list[Loop],
    services: Sequence[Service] = (),
) -> None:
    """Run `loops` against `url`, and `services` (each given `stop`), until `stop` is set.

    Services own their shutdown (a worker drains its jobs); loops are simply cancelled. Started
    while the database is down, it waits for it (a refused DSN raises `outage.DatabaseRefused`).
    """
    if not await outage.wait_until_available(url, stop, sleep=clock.sleep):
        return
    pool = outage.pool(url, min_size=1, max_size=max(2, len(loops) + 1), name="service")
    await pool.open(wait=False)
    otel.current().watch_pool("service", pool)
    try:
        tasks = [
            asyncio.create_task(_run_loop(pool, loop, clock), name=loop.name) for loop in loops
        ]
        running: list[asyncio.Task[None]] = [
            asyncio.create_task(service(stop)) for service in services
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Services stop themselves on `stop` (the worker drains); report any that failed.
        for result in await asyncio.gather(*running, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("a service failed", exc_info=result)
    finally:
        await pool.close()
