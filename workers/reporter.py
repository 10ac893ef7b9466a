"""The reporter: a worker's attempt results, recorded in batches on a connection of its own.

A job that ends hands its result to `Reporter.report` and waits until it is committed. The
reporter sends whatever has gathered as one `complete_attempts` statement and, while that one
commits, the next batch gathers (group commit, ADR 0019). Idle, a result goes out at once, so
nothing waits for a timer; busy, one transaction and one WAL flush serve many runs. PgQueuer's
status buffer and River's batch completer do the same.

Errors:
- a broken connection (`OperationalError`) is retried with backoff on a new connection. Safe:
  the statement is fenced, and a result whose COMMIT went through before the break is
  recognised on the retry (`applied`), not counted twice nor taken for a zombie's;
- any other error in a batch (from the database, or a result that cannot be encoded) is retried
  one report at a time, so one bad result cannot sink the others;
- a result that cannot be recorded raises `ReportFailed` in its job's task; its lease will
  expire and rescue puts the run back (the at-least-once path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import psycopg

from app.clock import Clock
from app.db import store
from app.db.store import Report, Row
from otel import runs as telemetry
from workers.session import DedicatedConnection, first_line

log = logging.getLogger("pgsched.worker")

_RETRIES = 5


class ReportFailed(RuntimeError):
    """A result could not be recorded."""


class Reporter:
    def __init__(
        self, url: str, *, clock: Clock, actor: Callable[[], str], max_batch: int = 500
    ) -> None:
        self.clock = clock
        self.actor = actor
        self.max_batch = max_batch
        self.batches = 0  # statements sent, for tests and the benchmark's account
        self._db = DedicatedConnection(url)
        self._pending: list[tuple[Report, asyncio.Future[Row | None]]] = []
        self._wake = asyncio.Event()

    async def report(self, report: Report) -> Row | None:
        """Record one result; the run as it now is, or None when the attempt was fenced."""
        future: asyncio.Future[Row | None] = asyncio.get_running_loop().create_future()
        self._pending.append((report, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send batches until cancelled; what is still pending then fails with ReportFailed."""
        batch: list[tuple[Report, asyncio.Future[Row | None]]] = []
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch = self._pending[: self.max_batch]
                    del self._pending[: len(batch)]
                    await self._flush(batch)
                    batch = []
        finally:
            # Stopped while sending (its outcome unknown: the leases decide) or before.
            for _, future in [*batch, *self._pending]:
                if not future.done():
                    future.set_exception(ReportFailed("the worker stopped before reporting"))
            self._pending.clear()
            await self._db.close()

    async def _flush(self, batch: Sequence[tuple[Report, asyncio.Future[Row | None]]]) -> None:
        reports = [report for report, _ in batch]
        try:
            results: Sequence[Row | BaseException | None] = await self._send(reports)
        except ReportFailed as exc:
            results = [exc] * len(batch)
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
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its task was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _send(self, reports: Sequence[Report]) -> list[Row | None]:
        for attempt in range(_RETRIES):
            try:
                async with self._db.connection() as conn:
                    with telemetry.reporting([report.lease for report in reports]):
                        return await store.complete_attempts(
                            conn, reports, actor=self.actor(), now=self.clock.db_now()
                        )
            except psycopg.OperationalError as exc:
                log.warning(
                    "reporting %d results failed (%s), retrying", len(reports), first_line(exc)
                )
                await self.clock.sleep(0.2 * 2**attempt)
        raise ReportFailed(f"no database after {_RETRIES} tries")
