"""Background loops, and the supervisor that notices when one dies (ADR 0024).

Every long-running process has work that repeats: the ticker, the worker's heartbeat, lease
watch, rescue, listener and reporter, the metrics sampler. Each is a `Loop`: `run_once` is one
pass, the loop sleeps `period_seconds` on the injected `Clock` between passes, and a database
outage (`psycopg.OperationalError`) is retried with capped backoff and jitter as everywhere
else (app.db.outage, ADR 0022). A pass's ordinary failures are the loop's own business: it
catches, logs and retries what it expects inside `run_once`. Anything that escapes `run_once`
ends the loop; that is a bug, and the `Supervisor` running it logs it once, with the exception
and the task's name, and tells its owner, which decides what the process does (ADR 0024).

`Signals` let tests wait for "the next pass is done" or "the loop failed" instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import psycopg

from pgsched.app.clock import Clock
from pgsched.app.db.outage import Backoff, first_line

log = logging.getLogger("pgsched.background")


class Signals:
    """What a loop reports as it goes, for tests to await: `await signals.next()` returns after
    the next pass; `await signals.until(predicate)` once the predicate holds (checked now and
    after every pass). `passes` counts passes; `failure` is the exception that ended the loop."""

    def __init__(self) -> None:
        self.passes = 0
        self.failure: BaseException | None = None
        self._changed = asyncio.Event()

    def passed(self) -> None:
        self.passes += 1
        self._notify()

    def failed(self, exc: BaseException) -> None:
        self.failure = exc
        self._notify()

    def _notify(self) -> None:
        # A fresh event per change: whoever waited on the old one wakes, later waiters wait
        # for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def next(self) -> None:
        """Until the pass after the current one is done (or the loop failed)."""
        await self._changed.wait()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self.failure is not None:
                raise RuntimeError("the loop failed") from self.failure
            await self._changed.wait()


class Loop:
    """One background loop: `run_once` every `period_seconds` on `clock`, until cancelled.

    `delay_first`: sleep a period before the first pass (a heartbeat right after the claim
    that made the lease is wasted). `transient`: what is retried with backoff instead of a
    period later (a database outage). `closed()` runs however the loop ends.
    """

    transient: ClassVar[tuple[type[BaseException], ...]] = (psycopg.OperationalError,)

    def __init__(
        self, name: str, clock: Clock, period_seconds: float, *, delay_first: bool = False
    ) -> None:
        self.name = name
        self.clock = clock
        self.period_seconds = period_seconds
        self.delay_first = delay_first
        self.signals = Signals()
        self._task: asyncio.Task[None] | None = None
        self._ran = False  # run() began: its `finally` calls closed()

    async def run_once(self) -> None:
        raise NotImplementedError

    async def closed(self) -> None:
        """Release what the loop holds; called once, however it ended."""

    async def run(self) -> None:
        self._ran = True
        try:
            if self.delay_first:
                await self.clock.sleep(self.period_seconds)
            backoff = Backoff()
            while True:
                try:
                    await self.run_once()
                except self.transient as exc:  # the database is away: app.db.outage logs it
                    log.debug("%s failed (%s); retrying", self.name, first_line(exc))
                    self.signals.passed()
                    await self.clock.sleep(backoff.next())
                    continue
                backoff.reset()
                self.signals.passed()
                await self.clock.sleep(self.period_seconds)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.signals.failed(exc)
            raise
        finally:
            await self.closed()

    def start(self, supervisor: Supervisor) -> asyncio.Task[None]:
        self._task = supervisor.start(self.name, self.run())
        return self._task

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended (its `closed()` ran)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not self._ran:  # cancelled before its first step: run()'s `finally` never ran
            self._ran = True
            await self.closed()


class Died(RuntimeError):
    """A supervised task ended unexpectedly; `task` names it, `__cause__` is why."""

    def __init__(self, task: str, exc: BaseException | None) -> None:
        super().__init__(f"{task} stopped unexpectedly")
        self.task = task
        self.__cause__ = exc


class Supervisor:
    """Named tasks, watched: the first that ends unexpectedly is logged (once, with its
    exception), recorded in `failure`, sets `failed`, and is passed to `on_death`.

    Cancellation is an expected end. So is returning once `returns_on` (given at `start`) is
    set: a service stops itself when asked. Anything else, an exception or a return, is a
    death. The owner decides what a death means for the process (ADR 0024).
    """

    def __init__(self, on_death: Callable[[Died], None] | None = None) -> None:
        self.on_death = on_death
        self.failure: Died | None = None
        self.failed = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self,
        name: str,
        coro: Coroutine[Any, Any, None],
        *,
        returns_on: asyncio.Event | None = None,
    ) -> asyncio.Task[None]:
        if name in self.tasks and not self.tasks[name].done():
            coro.close()
            # Under one name, the first task would no longer be stopped or waited for.
            raise ValueError(f"a task named {name!r} is already running")
        task = asyncio.create_task(coro, name=name)
        self.tasks[name] = task

        def ended(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None and returns_on is not None and returns_on.is_set():
                return
            self._died(Died(name, exc))

        task.add_done_callback(ended)
        return task

    def _died(self, died: Died) -> None:
        if isinstance(died.__cause__, Died):
            # A service that stopped because a task of its own died, already logged with the
            # traceback where it happened: once is enough.
            log.error("%s stopped: %s", died.task, died.__cause__, extra={"task": died.task})
        elif died.__cause__ is not None:
            log.error("%s died", died.task, exc_info=died.__cause__, extra={"task": died.task})
        else:
            log.error("%s ended unexpectedly", died.task, extra={"task": died.task})
        if self.failure is None:
            self.failure = died
            self.failed.set()
        if self.on_death is not None:
            self.on_death(died)

    async def stop(self) -> None:
        """Cancel every task still running and wait for all of them."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop` is set or a task died (then `failure` says which)."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.failed.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
