"""The worker: claims runs, executes them, holds their leases, and reports each attempt once.

A worker process is stateless; everything it knows is in PostgreSQL. Its loops:

- **claim**: with free slots, claim up to that many due runs (one short transaction), start each
  job as a task *after* the claim committed, and when nothing is due sleep until the next run
  becomes claimable (by the database clock), a NOTIFY, a freed slot, or the poll interval;
- **listen**: a dedicated connection LISTENs on `pgsched_runs`; notifications are only wake-up
  hints (ADR 0013), so after a reconnect it listens again and wakes the claim loop;
- **heartbeat**: every third of the lease, renew the leases of all in-flight runs in one
  statement; a run whose lease is gone (rescued elsewhere) or whose cancel was requested has its
  task cancelled. Each renewal moves the attempt's local lease deadline (the time before it was
  sent, plus the lease); a **lease watch** cancels any job whose deadline passed without one,
  before the lease can expire, and command jobs' supervisors enforce the same deadline without
  the worker (ADR 0020);
- **rescue**: runs whose lease expired go back to waiting (or dead), and silent workers are
  marked gone. Safe on every worker at once (ADRs 0004 and 0013: SKIP LOCKED and the
  state guard), so there is no leader to elect.

The helpers (listener, heartbeat, lease watch, rescuer, reporter) are `app.background` loops
under a `Supervisor`: one that dies of an unexpected exception is logged with it, the worker
stops claiming, stops its jobs and releases their runs (their leases would no longer be
renewed), and `run` raises `Died`, so the process exits non-zero and is restarted (ADR 0024).

When the database goes away every loop retries with capped backoff and jitter, the process
logs one line when it goes and one when it is back, and a worker started while it is down waits
for it (app.db.outage, ADR 0022).

Every report is fenced by (attempt, lease token): a worker that was paused past its lease cannot
overwrite the next attempt's result. Shutdown: the first stop request ends claiming, lets
in-flight jobs finish within the grace period, then releases the rest without consuming an
attempt; a hard stop skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgsched.app.background import Died, Loop, Signals, Supervisor
from pgsched.app.clock import Clock
from pgsched.app.db import outage, store
from pgsched.app.db.outage import Backoff, first_line
from pgsched.app.db.store import Conn, Lease, Row
from pgsched.otel import runs as telemetry
from pgsched.workers.jobs import JobContext, Outcome, execute
from pgsched.workers.jobs.base import LeaseDeadline, lease_margin
from pgsched.workers.netguard import NetPolicy
from pgsched.workers.reporter import Reporter, ReportFailed
from pgsched.workers.session import DedicatedConnection, configure_session

log = logging.getLogger("pgsched.worker")

Executor = Callable[[str, Mapping[str, object], JobContext], Awaitable[Outcome]]
# The pool serves registration, heartbeats, rescue and stopped jobs; claims and reports have
# connections of their own (workers/session.py), so it does not grow with the slots.
POOL_SIZE = 4


def _version() -> str:
    try:
        return version("pgsched")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """A worker's settings; `pgsched worker` reads them from the environment (app.settings)."""

    queues: tuple[str, ...] = ("default",)
    slots: int = 4
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    grace_seconds: float = 30.0
    rescue_every_seconds: float = 5.0
    gone_after_seconds: float = 90.0
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@dataclass(slots=True)
class _InFlight:
    lease: Lease
    task: asyncio.Task[None]
    # When the attempt must stop unless its lease is renewed first (ADR 0020).
    deadline: LeaseDeadline
    # Why the task was cancelled, which decides what is reported for it.
    stop_reason: str | None = None
    # Set once the job returned: from then on the result is being reported, and cancelling the
    # task would lose it (the run would be rescued and executed again).
    reporting: bool = False
    # When the claim that gave this lease returned (clock.monotonic()): the lease is valid at
    # most `lease_seconds` after this, or after the last heartbeat that renewed it.
    claimed_at: float = 0.0


@dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    fenced: int = 0
    rescued: int = 0


class Worker:
    """One worker process's loops. `run(stop)` returns once stopped and everything is reported."""

    def __init__(
        self,
        database_url: str,
        *,
        clock: Clock,
        settings: WorkerSettings | None = None,
        environ: Mapping[str, str] | None = None,
        executor: Executor = execute,
    ) -> None:
        self.url = database_url
        self.clock = clock
        self.settings = settings or WorkerSettings()
        # What jobs resolve at execution time (secrets, named DSNs, the allow-list): the
        # environment the caller gives (the CLI: its own), never read here (app.settings).
        self.environ = dict(environ or {})
        self.executor = executor
        self.http_policy = NetPolicy.from_env(self.environ.get("PGSCHED_HTTP_ALLOW"))
        self.named_dsns = {
            key.removeprefix("PGSCHED_SQL_DSN_").lower(): value
            for key, value in self.environ.items()
            if key.startswith("PGSCHED_SQL_DSN_")
        }
        self.stats = WorkerStats()
        self.worker_id: int | None = None
        self._inflight: dict[int, _InFlight] = {}
        self._reporting = 0  # of the runs in flight, those whose job is done (result pending)
        self._wake = asyncio.Event()
        self._pool: AsyncConnectionPool[Conn] | None = None
        # The hot path has connections of its own (ADR 0019); the pool serves the rest.
        self._claim_db = DedicatedConnection(database_url)
        self._report_to: Reporter | None = None
        # When the last heartbeat that renewed every lease in flight returned (monotonic).
        self._renewed_at = float("-inf")
        self.listener = _Listener(self)
        self.heartbeat = _Heartbeat(self)
        self.lease_watch = _LeaseWatch(self)
        self.rescuer = _Rescuer(self)
        # Passed each time the claim loop goes idle (sleeps with nothing to wake it) after a
        # pass that reached the database; `idle_after_listen` is the listener's count of
        # LISTENs when that pass began. Tests wait on it instead of sleeping.
        self.claim_idle = Signals()
        self.idle_after_listen = -1

    @property
    def actor(self) -> str:
        return f"worker:{self.worker_id}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, hard_stop: asyncio.Event | None = None) -> None:
        hard_stop = hard_stop or asyncio.Event()
        s = self.settings
        # Started while the database is down: wait for it (a refused DSN raises DatabaseRefused).
        if not await outage.wait_until_available(self.url, stop, sleep=self.clock.sleep):
            return
        # The pool checks each connection before handing it out (after a restart or
        # pg_terminate_backend, hand out a live one) and reconnects within seconds (ADR 0022).
        self._pool = outage.pool(
            self.url, min_size=2, max_size=POOL_SIZE, configure=configure_session, name="worker"
        )
        await self._pool.open(wait=False)
        telemetry.watch_pool("worker", self._pool)
        try:
            row = await self._retrying(self._register, stop)
            if row is None:
                return
            self.worker_id = int(row["id"])
            log.info(
                "worker %s registered (queues %s, %d slots)", self.worker_id, s.queues, s.slots
            )
            self._report_to = Reporter(
                self.url, clock=self.clock, actor=lambda: self.actor, lease_seconds=s.lease_seconds
            )
            # Every helper is supervised: one that dies ends the worker (ADR 0024).
            helpers = Supervisor(on_death=self._helper_died)
            for loop in self.loops():
                loop.start(helpers)
            try:
                await self._claim_loop(stop, helpers.failed)
                await self._drain(helpers.failed if helpers.failure else hard_stop)
            finally:
                # Every job has reported by now (_drain waits for them); the reporter goes last.
                for loop in self.loops():
                    if loop is not self._report_to:
                        await loop.stop()
                await helpers.stop()
                await self._claim_db.close()
            await self._set_state("stopped")
        finally:
            await self._pool.close()
        if helpers.failure is not None:
            raise helpers.failure

    def loops(self) -> list[Loop]:
        """The worker's background loops, in the order they stop (the reporter last)."""
        return [self.listener, self.heartbeat, self.lease_watch, self.rescuer, self._reporter()]

    def _helper_died(self, died: Died) -> None:
        """A helper died (logged by the supervisor): its work is not done any more. Without
        heartbeats the leases in flight would expire under running jobs, without the lease
        watch nothing would stop them in time, without the reporter their results would be
        lost, without rescue or the listener this worker would be a worse one. None is worth
        running on: stop claiming (the claim loop sees `failed`), stop every job now and
        release its run, and let `run` raise so the process exits non-zero (ADR 0024)."""
        log.error("worker %s stops: %s died", self.worker_id, died.task)
        for flight in list(self._inflight.values()):
            self._stop_job(flight, "shutdown")
        self._wake.set()

    async def _register(self) -> Row:
        s = self.settings
        async with self._db() as conn:
            return await store.register_worker(
                conn,
                name=s.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=_version(),
                queues=s.queues,
                slots=s.slots,
                now=self.clock.db_now(),
            )

    async def _retrying(
        self, step: Callable[[], Awaitable[Row]], stop: asyncio.Event
    ) -> Row | None:
        """`step` until it gets through to the database, or None once `stop` is set."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                return await step()
            except psycopg.OperationalError as exc:  # the database is away: outage logs it
                log.debug("retrying after %s", first_line(exc))
                await self._sleep(backoff.next(), stop)
        return None

    async def _set_state(self, state: str) -> None:
        """Best effort: a worker that cannot say it is stopping still drains, and one that is
        never marked stopped is marked gone by the others' rescue (ADR 0013)."""
        try:
            async with self._db() as conn:
                await store.set_worker_state(conn, self._id(), state, now=self.clock.db_now())
        except psycopg.OperationalError as exc:
            log.info("could not mark the worker %s (%s)", state, first_line(exc))

    async def _drain(self, hard_stop: asyncio.Event) -> None:
        """Stop claiming; let jobs finish within the grace period; release what is left."""
        if self.worker_id is None:
            return
        await self._set_state("stopping")
        tasks = [f.task for f in self._inflight.values()]
        if tasks and not hard_stop.is_set():
            hard = asyncio.create_task(hard_stop.wait())
            grace = asyncio.create_task(self.clock.sleep(self.settings.grace_seconds))
            await asyncio.wait([*tasks, hard, grace], return_when=asyncio.FIRST_COMPLETED)
            while any(not t.done() for t in tasks) and not (hard.done() or grace.done()):
                await asyncio.wait(
                    [*[t for t in tasks if not t.done()], hard, grace],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            hard.cancel()
            grace.cancel()
        for flight in list(self._inflight.values()):
            self._stop_job(flight, "shutdown")
        await asyncio.gather(
            *(f.task for f in list(self._inflight.values())), return_exceptions=True
        )

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event, failed: asyncio.Event) -> None:
        """Claim until `stop` (asked to) or `failed` (a helper died) is set."""
        s = self.settings
        limits_due = 0.0  # when to look for limited schedules and queues again
        backoff = Backoff()
        while not (stop.is_set() or failed.is_set()):
            listens = self.listener.listens
            reached = False
            free = s.slots - (len(self._inflight) - self._reporting)
            claimed: list[Row] = []
            wait = s.poll_seconds
            sent = self.clock.monotonic()  # before the claim: its lease ends after sent + lease
            try:
                if free > 0:
                    async with telemetry.claiming(self._claim_db.connection(), s.queues) as conn:
                        # Limits need a lock first (two statements in a transaction); while the
                        # last look found none, skip it for a poll interval: one round trip per
                        # claim instead of four, and a run limited meanwhile waits at most that
                        # long, never past its limit (ADR 0019).
                        check = self.clock.monotonic() >= limits_due
                        taken = await store.claim(
                            conn,
                            worker_id=self._id(),
                            queues=s.queues,
                            limit=free,
                            lease_seconds=s.lease_seconds,
                            actor=self.actor,
                            now=self.clock.db_now(),
                            limits=check,
                        )
                        if check:
                            limits_due = (
                                0.0 if taken.limited else self.clock.monotonic() + s.poll_seconds
                            )
                        claimed = taken.rows
                        telemetry.claimed(claimed)
                        if len(claimed) < free:
                            until = await store.seconds_until_next_run(
                                conn, s.queues, now=self.clock.db_now()
                            )
                            if until is not None:
                                wait = min(wait, until)
                backoff.reset()
                reached = True
            except psycopg.OperationalError as exc:
                # One line per outage comes from app.db.outage; a retry is not news.
                log.debug("claim failed (%s); retrying", first_line(exc))
                wait = min(wait, backoff.next())
            for row in claimed:
                self._start(row, sent)
            if free > 0 and len(claimed) == free:
                continue  # there may be more due right now
            if reached and not self._wake.is_set():
                self.idle_after_listen = listens
                self.claim_idle.passed()
            await self._sleep(wait, stop, failed)

    async def _sleep(self, seconds: float, *stops: asyncio.Event) -> None:
        """Wait for a NOTIFY, a freed slot, a stop request or `seconds`, whichever is first."""
        if self._wake.is_set():
            self._wake.clear()
            return
        waiters = [
            asyncio.create_task(self._wake.wait()),
            *(asyncio.create_task(stop.wait()) for stop in stops),
            asyncio.create_task(self.clock.sleep(seconds)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self._wake.clear()

    def _start(self, row: Row, claim_sent: float) -> None:
        lease = Lease.of(row)
        self.stats.claimed += 1
        lease_seconds = self.settings.lease_seconds
        deadline = LeaseDeadline(
            claim_sent + lease_seconds, lease_margin(lease_seconds), self.clock.monotonic
        )
        with telemetry.run_scope(row):
            task = asyncio.create_task(self._execute(row, lease), name=f"run {lease.run_id}")
        self._inflight[lease.run_id] = _InFlight(
            lease, task, deadline, claimed_at=self.clock.monotonic()
        )

    # -- executing ---------------------------------------------------------------------------

    async def _execute(self, row: Row, lease: Lease) -> None:
        flight = self._inflight[lease.run_id]
        ctx = JobContext(
            run_id=lease.run_id,
            attempt=lease.attempt,
            schedule_name=row["schedule_name"],
            timeout_seconds=float(row["timeout_seconds"]),
            database_url=self.url,
            named_dsns=self.named_dsns,
            http_policy=self.http_policy,
            environ=self.environ,
            lease=flight.deadline,
        )
        try:
            try:
                outcome = await self.executor(row["job_type"], row["payload"] or {}, ctx)
            except asyncio.CancelledError:
                await self._stopped(flight)
                return
            except Exception as exc:  # an executor bug must still end the attempt
                log.exception("run %s: executor failed", lease.run_id)
                telemetry.failed(lease, exc)
                outcome = Outcome(
                    status="failed",
                    retryable=True,
                    error=f"{type(exc).__name__}: {first_line(exc)}",
                )
            # The job is done: its slot is free while the result waits for the reporter's next
            # batch, so claiming overlaps reporting. The run stays in flight (its lease is
            # renewed, shutdown waits for it) until the result is recorded.
            flight.reporting = True
            self._reporting += 1
            self._wake.set()
            await self._report(lease, outcome, row)
        finally:
            telemetry.ended(lease)
            self._inflight.pop(lease.run_id, None)
            if flight.reporting:
                self._reporting -= 1
            self._wake.set()  # a slot is free

    async def _stopped(self, flight: _InFlight) -> None:
        try:
            await self._record_stop(flight)
        except psycopg.OperationalError as exc:
            # The database is away (app.db.outage logs that once); the lease decides.
            log.warning(
                "run %s attempt %s: could not record its stop (%s, %s); the lease will expire",
                flight.lease.run_id,
                flight.lease.attempt,
                flight.stop_reason,
                first_line(exc),
            )

    async def _record_stop(self, flight: _InFlight) -> None:
        lease, reason = flight.lease, flight.stop_reason
        if reason not in ("shutdown", "cancel_requested"):
            await self._abandoned(lease, reason)
            return
        async with self._db() as conn:
            if reason == "shutdown":
                done = await store.release_run(
                    conn, lease, actor=self.actor, now=self.clock.db_now()
                )
                if done is not None:
                    self.stats.released += 1
            else:
                outcome = Outcome(
                    status="cancelled", retryable=False, error="cancelled by an operator"
                )
                done = await store.cancelled_attempt(
                    conn, lease, outcome.as_json(), actor=self.actor, now=self.clock.db_now()
                )
                if done is not None:
                    self.stats.cancelled += 1
        # A release or cancel the store refused (the lease was lost after the last heartbeat;
        # it kept a run.completion_fenced event) counts like a fenced completion.
        telemetry.stopped(lease, reason, fenced=done is None)
        if done is None:
            self.stats.fenced += 1
            log.warning(
                "run %s attempt %s: %s fenced (lease lost)",
                lease.run_id,
                lease.attempt,
                "release" if reason == "shutdown" else "cancel",
            )

    async def _abandoned(self, lease: Lease, reason: str | None) -> None:
        """Lease lost (a heartbeat found it gone), or not renewed in time (the lease watch
        stopped the job before it could expire): the run belongs, or soon may belong, to
        another attempt. Nothing of ours may count, but the abandoned attempt is evidence
        (logged, counted, recorded if the database answers; ADRs 0013, 0020)."""
        telemetry.stopped(lease, reason, fenced=True)
        self.stats.fenced += 1
        log.warning(
            "run %s attempt %s: lease lost%s while running; attempt abandoned",
            lease.run_id,
            lease.attempt,
            " (not renewed in time)" if reason == "lease_expired" else "",
        )
        try:
            async with self._db() as conn:
                await store.record_fenced(
                    conn, lease, "lease_lost", actor=self.actor, now=self.clock.db_now()
                )
        except psycopg.Error as exc:  # the database may be why the lease was not renewed
            log.warning("run %s: abandonment not recorded (%s)", lease.run_id, first_line(exc))

    async def _report(self, lease: Lease, outcome: Outcome, row: Row) -> None:
        """Record the attempt's result through the reporter (batched with other jobs' results)."""
        result = {
            **outcome.as_json(),
            "worker_id": self.worker_id,
            "schedule_version": row["schedule_version"],
        }
        status = outcome.status if outcome.status in ("succeeded", "cancelled") else "failed"
        report = store.Report(
            lease,
            status,
            result,
            jitter=random.random(),  # noqa: S311 - spread, not secrecy
            final=not outcome.retryable,
        )
        flight = self._inflight.get(lease.run_id)
        claimed_at = flight.claimed_at if flight is not None else self.clock.monotonic()

        def valid_until() -> float:
            # The lease can be valid no longer than its length after it was last renewed.
            return max(claimed_at, self._renewed_at) + self.settings.lease_seconds

        try:
            done = await self._reporter().report(report, valid_until=valid_until)
        except ReportFailed as exc:
            log.error(
                "run %s attempt %s: result abandoned, could not report it (%s); the lease "
                "will expire and rescue the run",
                lease.run_id,
                lease.attempt,
                exc,
            )
            return
        telemetry.reported(lease, outcome.status, outcome.error, done)
        if done is None:
            self.stats.fenced += 1
            log.warning(
                "run %s attempt %s: completion fenced (lease lost)", lease.run_id, lease.attempt
            )
        elif outcome.status == "succeeded":
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1

    def _stop_job(self, flight: _InFlight, reason: str) -> None:
        if flight.stop_reason is None and not flight.reporting and not flight.task.done():
            flight.stop_reason = reason
            flight.task.cancel()

    # -- background loops (classes below) ---------------------------------------------

    async def heartbeat_once(self) -> None:
        flights = list(self._inflight.values())
        # Before anything is sent: the database's now() for the renewal is later than this.
        sent = self.clock.monotonic()
        async with self._db() as conn:
            now = self.clock.db_now()
            await store.heartbeat_worker(conn, self._id(), now=now)
            held = await store.renew_leases(
                conn,
                [f.lease.lease_token for f in flights],
                lease_seconds=self.settings.lease_seconds,
                now=now,
            )
        telemetry.heartbeat()
        by_token = {r["lease_token"]: r for r in held}
        for flight in flights:
            renewed = by_token.get(flight.lease.lease_token)
            if renewed is None:
                self._stop_job(flight, "lease_lost")
                continue
            flight.deadline.renewed(sent + self.settings.lease_seconds)
            if renewed["cancel_requested"]:
                self._stop_job(flight, "cancel_requested")

    async def rescue_once(self) -> int:
        async with self._db() as conn:
            now = self.clock.db_now()
            rescued = await store.rescue_expired(conn, limit=100, actor=self.actor, now=now)
            await store.mark_gone_workers(
                conn, after_seconds=self.settings.gone_after_seconds, actor=self.actor, now=now
            )
        self.stats.rescued += len(rescued)
        telemetry.rescued(rescued)
        if rescued:
            self._wake.set()
        return len(rescued)

    # -- helpers -----------------------------------------------------------------------------

    def _id(self) -> int:
        if self.worker_id is None:
            raise RuntimeError("the worker is not registered")
        return self.worker_id

    def _reporter(self) -> Reporter:
        if self._report_to is None:
            raise RuntimeError("the worker is not running")
        return self._report_to

    def _db(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        if self._pool is None:
            raise RuntimeError("the worker is not running")
        return self._pool.connection()


class _Listener(Loop):
    """LISTEN on `pgsched_runs` on a connection of its own; every NOTIFY wakes the claim loop.
    Notifications are only hints (ADR 0013): after a reconnect it wakes the claim loop anyway,
    since some may have been missed. One pass lasts as long as its connection."""

    transient = (psycopg.Error,)

    def __init__(self, worker: Worker) -> None:
        super().__init__("listener", worker.clock, period_seconds=outage.BASE_SECONDS)
        self.worker = worker
        self.listens = 0  # LISTENs that went through, for the claim loop's idle signal

    async def run_once(self) -> None:
        conn = await outage.Connection.connect(self.worker.url, autocommit=True)
        try:
            await store.listen_for_runs(conn)
            self.listens += 1
            self.worker._wake.set()  # notifications may have been missed: look now
            self.signals.passed()
            try:
                async for _ in conn.notifies():
                    self.worker._wake.set()
            except psycopg.Error as exc:
                # The connection broke after LISTEN went through: this pass did its work, so
                # the reconnect starts again from the shortest wait, not a growing backoff.
                log.debug("listener lost (%s); reconnecting", first_line(exc))
        finally:
            await conn.close()


class _Heartbeat(Loop):
    """Every third of the lease, renew the leases in flight (`Worker.heartbeat_once`). A
    heartbeat that cannot reach the database is retried at once with capped backoff, not a
    period later: every second it is late eats into the leases in flight."""

    def __init__(self, worker: Worker) -> None:
        every = worker.settings.lease_seconds / 3
        super().__init__("heartbeat", worker.clock, every, delay_first=True)
        self.worker = worker

    async def run_once(self) -> None:
        try:
            await self.worker.heartbeat_once()
        except psycopg.OperationalError:
            raise  # the database is away (outage logs it): retried with backoff
        except psycopg.Error as exc:
            log.warning("heartbeat failed (%s)", first_line(exc))
            return
        # Every lease still held was renewed no later than now: an upper bound of its expiry
        # is now + lease_seconds (what the reporter waits for, ADR 0022).
        self.worker._renewed_at = self.clock.monotonic()


class _LeaseWatch(Loop):
    """Stop every job whose lease was not renewed in time, before it can expire.

    A heartbeat that cannot reach the database (or a worker that was stopped, SIGSTOP or a long
    pause) would otherwise let a job run on after its lease expired and another worker took
    the run over. Separate from the heartbeat, whose statement can hang for as long as the
    pool's connect timeout. Command jobs are also bounded by their supervisor, which needs no
    worker for it (ADR 0020).
    """

    def __init__(self, worker: Worker) -> None:
        check_every = lease_margin(worker.settings.lease_seconds) / 2
        super().__init__("lease watch", worker.clock, check_every)
        self.worker = worker

    async def run_once(self) -> None:
        now = self.clock.monotonic()
        for flight in list(self.worker._inflight.values()):
            if now >= flight.deadline.stop_at:
                self.worker._stop_job(flight, "lease_expired")


class _Rescuer(Loop):
    """Every few seconds, put runs whose lease expired back to waiting and mark silent workers
    gone (`Worker.rescue_once`); nothing to hurry after an outage, leases expire meanwhile."""

    def __init__(self, worker: Worker) -> None:
        every = worker.settings.rescue_every_seconds
        super().__init__("rescuer", worker.clock, every, delay_first=True)
        self.worker = worker

    transient = ()  # a rescue that meets an outage waits its period like any other

    async def run_once(self) -> None:
        try:
            await self.worker.rescue_once()
        except psycopg.OperationalError as exc:  # the database is away: outage logs it
            log.debug("rescue failed (%s)", first_line(exc))
        except psycopg.Error as exc:
            log.warning("rescue failed (%s)", first_line(exc))
