"""The long-running service: the processes of pgsched in one asyncio program.

`pgsched run` (app.cli) migrates the database and installs the built-in maintenance schedule,
then serves two ticker loops plus two services with their own shutdown: a worker (which runs
that schedule like any job) and the API. `pgsched ticker` serves the ticker loops alone. While the
database is away a loop retries with capped backoff and jitter, so it resumes within a second or
two of the database coming back, and the process logs the outage once (app.db.outage, ADR
0022); any other failure of a pass is logged and retried after its period. A loop or service
that dies (ends or raises outside that guard: a bug) is logged once with its exception and
stops the process, which exits non-zero so that whatever runs it restarts it (app.background,
ADR 0024). SIGTERM or SIGINT stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgsched import otel
from pgsched.app import background, ticker
from pgsched.app.background import Supervisor
from pgsched.app.clock import Clock
from pgsched.app.db import outage, store
from pgsched.app.db.store import Conn
from pgsched.otel import runs

log = logging.getLogger("pgsched.service")

# A long-running part with its own shutdown: it runs until the event it is given is set.
Service = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Periodic:
    """What a ticker loop does: `step` on a pooled connection every `period_seconds`.
    `own_connection`: the same connection every pass, kept out of the pool while the loop
    runs, for a step whose session holds something between passes (the health sweep's lead)."""

    name: str
    period_seconds: float
    step: Callable[[Conn], Awaitable[object]]
    own_connection: bool = False


class PoolLoop(background.Loop):
    """A `Periodic` step on a connection from the service's pool, every period. A step that fails
    for any reason but an outage is logged and retried a period later: one bad pass must not
    stop the ticker. Only what escapes `run_once` kills the loop (ADR 0024)."""

    def __init__(self, pool: AsyncConnectionPool[Conn], loop: Periodic, clock: Clock) -> None:
        super().__init__(loop.name, clock, loop.period_seconds)
        self.pool = pool
        self.step = loop.step
        self.own_connection = loop.own_connection
        self._conn: Conn | None = None  # the loop's own connection, while it has one

    async def run_once(self) -> None:
        try:
            if self.own_connection:
                if self._conn is None:
                    self._conn = await self.pool.getconn()
                await self.step(self._conn)
            else:
                async with self.pool.connection() as conn:
                    await self.step(conn)
        except psycopg.OperationalError:
            await self._release()  # a fresh connection at the next pass
            raise  # the database is away (outage logs it once): retried with backoff
        except Exception:  # keep the service up; the next period retries
            log.exception("%s failed; retrying in %ss", self.name, self.period_seconds)

    async def _release(self) -> None:
        """Close the loop's own connection, ending its session (and whatever the session held,
        such as the sweep's lead: no other user of the pool inherits it), and hand it back."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
            await self.pool.putconn(conn)

    async def closed(self) -> None:
        await self._release()


def default_loops(clock: Clock, *, tickers: int = 2) -> list[Periodic]:
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
    return [Periodic(f"ticker-{n}", 0.5, materialise) for n in range(1, tickers + 1)]


# How often every live schedule's health is judged again (ADR 0032). Runs ending re-judge their
# own schedule at once; the sweep catches what only time changes (overdue, and back), and a
# re-judgement lost to a process dying between a completion and its evaluation.
HEALTH_SWEEP_SECONDS = 15.0


def health_loop(clock: Clock) -> Periodic:
    """The health sweep: judges every live schedule and records changes, in the one process
    whose connection leads the sweep (each `pgsched run` and `pgsched ticker` has this loop;
    one sweep between them is enough). The lead stays with the loop's own connection, so the
    same process sweeps until it stops, and another takes over at its next pass."""

    async def sweep(conn: Conn) -> object:
        if not await store.health.lead_sweep(conn):
            return []
        return await store.health.sweep(conn, now=clock.db_now())

    return Periodic("health", HEALTH_SWEEP_SECONDS, sweep, own_connection=True)


async def serve(
    url: str,
    clock: Clock,
    stop: asyncio.Event,
    loops: list[Periodic],
    services: Mapping[str, Service] | Sequence[Service] = (),
) -> None:
    """Run `loops` against `url`, and `services` (each given `stop`; named in the log by their
    key, or their function's name), until `stop` is set.

    Services own their shutdown (a worker drains its jobs); loops are simply cancelled. When a
    loop or service dies, the others are stopped as if by `stop` and `background.Died` is
    raised (ADR 0024). Started
    while the database is down, it waits for it (a refused DSN raises `outage.DatabaseRefused`).
    """
    if not await outage.wait_until_available(url, stop, sleep=clock.sleep):
        return
    pool = outage.pool(url, min_size=1, max_size=max(2, len(loops) + 1), name="service")
    await pool.open(wait=False)
    otel.current().watch_pool("service", pool)
    supervisor = Supervisor()
    try:
        running = [PoolLoop(pool, loop, clock) for loop in loops]
        for loop in running:
            loop.start(supervisor)
        for name, service in _named(services).items():
            supervisor.start(name, service(stop), returns_on=stop)
        await supervisor.wait(stop)
        if supervisor.failure is not None:
            log.error("stopping: %s died", supervisor.failure.task)
            stop.set()  # the services stop themselves (the worker drains)
        for loop in running:
            await loop.stop()
        await asyncio.gather(*supervisor.tasks.values(), return_exceptions=True)
    finally:
        await supervisor.stop()
        await pool.close()
    if supervisor.failure is not None:
        raise supervisor.failure


def _named(services: Mapping[str, Service] | Sequence[Service]) -> dict[str, Service]:
    """Each service under a name of its own: its qualified name, numbered when it repeats (two
    workers in one process are two tasks, not one)."""
    if isinstance(services, Mapping):
        return dict(services)
    named: dict[str, Service] = {}
    for service in services:
        base = getattr(service, "__qualname__", repr(service))
        name, n = base, 1
        while name in named:
            n += 1
            name = f"{base}-{n}"
        named[name] = service
    return named
