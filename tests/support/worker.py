"""A worker running in the test's event loop, and waits on conditions instead of sleeps.

`running_worker` is the one way tests start an in-process worker: short leases and polls so
that rescue and renewal happen within a test, settings overridable, no environment unless
given. It stops the worker on the way out (a graceful stop, bounded) and fails the test if
the worker died (app.background.Died) unless the test expected that (`expect_death=True`,
then `RunningWorker.died` holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from pgsched.app.background import Died
from pgsched.app.clock import Clock, SystemClock
from pgsched.app.db.store import Conn
from pgsched.workers.worker import Executor, Worker, WorkerSettings
from tests.support import store as test_store

T = TypeVar("T")

DEFAULTS: Mapping[str, Any] = {
    "slots": 4,
    "lease_seconds": 3.0,
    "poll_seconds": 0.2,
    "grace_seconds": 5.0,
    "rescue_every_seconds": 0.3,
}


@dataclass
class RunningWorker:
    worker: Worker
    stop: asyncio.Event
    hard_stop: asyncio.Event
    task: asyncio.Task[None]

    async def ended(self, within: float = 30.0) -> BaseException | None:
        """Until `run` has returned; what it raised, if anything."""
        async with asyncio.timeout(within):
            await asyncio.wait([self.task])
        return self.task.exception()


@contextlib.asynccontextmanager
async def started_worker(
    dsn: str,
    *,
    environ: Mapping[str, str] | None = None,
    executor: Executor | None = None,
    clock: Clock | None = None,
    expect_death: bool = False,
    **settings: Any,
) -> AsyncIterator[RunningWorker]:
    """`running_worker`, yielding its handle (stop events, task) and not only the worker."""
    worker = Worker(
        dsn,
        clock=clock or SystemClock(),
        settings=WorkerSettings(**{**DEFAULTS, **settings}),
        environ=dict(environ or {}),
        **({"executor": executor} if executor is not None else {}),
    )
    stop, hard = asyncio.Event(), asyncio.Event()
    running = RunningWorker(worker, stop, hard, asyncio.create_task(worker.run(stop, hard)))
    try:
        yield running
    except BaseException:
        hard.set()  # the test failed: no grace period for its jobs
        raise
    finally:
        stop.set()
        exc = await running.ended()
        if exc is not None and not (expect_death and isinstance(exc, Died)):
            raise exc


@contextlib.asynccontextmanager
async def running_worker(
    dsn: str,
    *,
    environ: Mapping[str, str] | None = None,
    executor: Executor | None = None,
    **settings: Any,
) -> AsyncIterator[Worker]:
    """A worker on `dsn` (settings: DEFAULTS, overridden by `settings`) until the block ends."""
    async with started_worker(dsn, environ=environ, executor=executor, **settings) as running:
        yield running.worker


async def eventually(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    *,
    within: float = 20.0,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """`await check()` until it returns something truthy, which is returned; fail naming `what`
    after `within` seconds, or as soon as `alive()` returns a reason why waiting is futile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await check()
        if value:
            return value
        if alive is not None and (reason := alive()) is not None:
            pytest.fail(f"{reason} while waiting: {what}")
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within} s waiting: {what}")
        await asyncio.sleep(0.05)  # a poll interval, not a wait for something


async def wait_state(
    conn: Conn, run_id: int, states: set[str], within: float = 15
) -> dict[str, Any]:
    """The run once its state is one of `states`."""

    async def reached() -> dict[str, Any] | None:
        run = await test_store.get_run(conn, run_id)
        assert run is not None
        return run if run["state"] in states else None

    return await eventually(f"run {run_id} becomes one of {states}", reached, within=within)


async def signalled(wait: Awaitable[object], what: str, *, within: float = 10.0) -> None:
    """Await a loop's signal (e.g. `worker.heartbeat.signals.next()`), failing after `within`."""
    try:
        async with asyncio.timeout(within):
            await wait
    except TimeoutError:
        pytest.fail(f"timed out after {within} s waiting: {what}")
