"""The reporter: a worker's attempt results, recorded in batches on a connection of its own.

A job that ends hands its result to `Reporter.report` and waits until it is committed. The
reporter sends whatever has gathered as one `complete_attempts` statement and, while that one
commits, the next batch gathers (group commit, ADR 0019). Idle, a result goes out at once, so
nothing waits for a timer; busy, one transaction and one WAL flush serve many runs. PgQueuer's
status buffer and River's batch completer do the same.

Errors:
- a broken connection (`OperationalError`) is retried on a new connection, with capped backoff
  and jitter (app.db.outage), for as long as the result's lease can still be valid: the local
  time the lease was last renewed (claim or heartbeat) plus its length bounds it. Giving up
  earlier would throw away a finished job that the next attempt then runs again; after that
  the run is another attempt's anyway (ADR 0022). Safe: the statement is fenced, and a result
  whose COMMIT went through before the break is recognised on the retry (`applied`), not
  counted twice nor taken for a zombie's;
- any other error in a batch (from the database, or a result that cannot be encoded) is retried
  one report at a time, so one bad result cannot sink the others;
- a result that cannot be recorded raises `ReportFailed` in its job's task, which logs it once
  (naming the run and attempt; counted as `unreported` in pgsched.jobs.processed); its lease
  will expire and rescue puts the run back (the at-least-once path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from pgsched.app.background import Loop
from pgsched.app.clock import Clock
from pgsched.app.db import store
from pgsched.app.db.outage import Backoff, first_line
from pgsched.app.db.store import Report, Row
from pgsched.otel import runs as telemetry
from pgsched.workers.session import DedicatedConnection

log = logging.getLogger("pgsched.worker")


class ReportFailed(RuntimeError):
    """A result could not be recorded."""


@dataclass(slots=True)
class _Pending:
    report: Report
    future: asyncio.Future[Row | None]
    # Until when (the clock's monotonic seconds) the report's lease can still be valid.
    valid_until: Callable[[], float]


class Reporter(Loop):
    """A `Loop` (app.background) whose pass sends what has gathered: the worker supervises it
    like its other helpers, and a reporter that died fails what waits for it (ADR 0024)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        actor: Callable[[], str],
        max_batch: int = 500,
        lease_seconds: float = 30.0,
    ) -> None:
        super().__init__("reporter", clock, period_seconds=0.0)
        self.lease_seconds = lease_seconds
        self.actor = actor
        self.max_batch = max_batch
        self.batches = 0  # statements sent, for tests and the benchmark's account
        self._db = DedicatedConnection(url)
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._batch: list[_Pending] = []  # being sent
        self._closed = False

    async def report(
        self, report: Report, *, valid_until: Callable[[], float] | None = None
    ) -> Row | None:
        """Record one result; the run as it now is, or None when the attempt was fenced.

        `valid_until`: until when (`clock.monotonic()`) the lease can still be valid, asked
        afresh at each retry (a heartbeat may renew it meanwhile); by default `lease_seconds`
        from now, as if the lease had just been renewed.
        """
        if valid_until is None:
            until = self.clock.monotonic() + self.lease_seconds
            valid_until = lambda: until  # noqa: E731
        if self._closed:
            raise ReportFailed("the reporter has stopped")
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(report, future, valid_until))
        self._wake.set()
        return await future

    async def run_once(self) -> None:
        """Wait for results, then send what has gathered, batch after batch, until none is
        left (`run`, from app.background, repeats this until cancelled)."""
        await self._wake.wait()
        self._wake.clear()
        while self._pending:
            self._batch = self._pending[: self.max_batch]
            del self._pending[: len(self._batch)]
            await self._flush(self._batch)
            self._batch = []

    async def closed(self) -> None:
        """Stopped, or died, while sending (its outcome unknown: the leases decide) or before:
        what is still waiting fails with ReportFailed, and so does any later report."""
        self._closed = True
        for pending in [*self._batch, *self._pending]:
            if not pending.future.done():
                pending.future.set_exception(ReportFailed("the worker stopped before reporting"))
        self._batch = []
        self._pending.clear()
        await self._db.close()

    async def _flush(self, batch: Sequence[_Pending]) -> None:
        backoff = Backoff()
        while True:
            batch = [p for p in batch if not p.future.done()]  # tasks cancelled meanwhile
            if not batch:
                return
            try:
                results: Sequence[Row | BaseException | None] = await self._send(
                    [p.report for p in batch]
                )
            except psycopg.OperationalError as exc:
                log.debug("reporting %d results failed (%s)", len(batch), first_line(exc))
                if not self._keep_while_valid(batch, exc):
                    return
                await self.clock.sleep(backoff.next())
                continue
            except Exception as exc:  # noqa: BLE001 - a database error, or a result it cannot encode
                # Whatever one result did, the reporter must go on serving the others.
                if len(batch) == 1:
                    results = [ReportFailed(first_line(exc))]
                else:
                    log.warning(
                        "a batch of %d reports failed (%s); one by one", len(batch), first_line(exc)
                    )
                    for one in batch:
                        await self._flush([one])
                    return
            break
        self.batches += 1
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():  # its task was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _keep_while_valid(self, batch: Sequence[_Pending], exc: BaseException) -> bool:
        """The database is away (app.db.outage logs that once): keep each result while its
        lease can be valid, then give it up to the lease and rescue. Whether any is kept."""
        now = self.clock.monotonic()
        for pending in batch:
            if not pending.future.done() and pending.valid_until() <= now:
                pending.future.set_exception(
                    ReportFailed(
                        f"its lease expired while the database was unavailable ({first_line(exc)})"
                    )
                )
        return not all(p.future.done() for p in batch)

    async def _send(self, reports: Sequence[Report]) -> list[Row | None]:
        async with self._db.connection() as conn:
            with telemetry.reporting([report.lease for report in reports]):
                return await store.complete_attempts(
                    conn, reports, actor=self.actor(), now=self.clock.db_now()
                )
