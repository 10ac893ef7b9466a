"""ADR 0024: a background task that dies of an unexpected exception is logged once, with the
exception and the task's name, and stops its process deliberately.

For each supervised task an exception ("boom") is injected where no pass guard catches it (its
`run_once`), and the test shows what happens: the worker logs it, stops claiming, stops the job
it was running and releases its run (no job goes on under a lease nobody renews), and `run`
raises `Died`; `serve` (pgsched run, pgsched ticker) stops its services and raises `Died`; the
telemetry sampler's `sample_forever` raises `Died`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pgsched.app import service, telemetry
from pgsched.app.background import Died, Loop
from pgsched.app.clock import FakeClock, SystemClock
from pgsched.app.db.store import Conn
from pgsched.workers.worker import Worker
from tests.conftest import ROOT
from tests.factories import make_schedule
from tests.support import store as test_store
from tests.support.worker import eventually, signalled, started_worker, wait_state
from tests.workers.test_worker import event_types, log, python_job, trigger


async def boom() -> None:
    raise RuntimeError("boom")


def died_logged(caplog: pytest.LogCaptureFixture, task: str) -> logging.LogRecord:
    """The one error record that says `task` died, with the exception attached."""
    records = [
        r
        for r in caplog.records
        if r.name == "pgsched.background" and r.getMessage() == f"{task} died"
    ]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    (record,) = records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"
    return record


async def _kill_listener_connection(db: Conn, worker: Worker) -> None:
    """The listener's pass lasts as long as its connection: end it, so the next pass starts."""
    signals = worker.listener.signals
    await signalled(signals.until(lambda: signals.passes > 0), "the listener listens")
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE query ILIKE 'LISTEN %%pgsched_runs%%' AND pid <> pg_backend_pid()"
    )


async def _wake_reporter(db: Conn, worker: Worker) -> None:
    """The reporter's pass waits for results: hand it a wake-up, so the next pass starts."""
    worker._reporter()._wake.set()


async def _nothing(db: Conn, worker: Worker) -> None:
    """A loop that passes every period starts its next pass by itself."""


# Each helper of the worker, and how its next pass is made to begin.
HELPERS: dict[str, tuple[Callable[[Worker], Loop], Callable[[Conn, Worker], Awaitable[None]]]] = {
    "heartbeat": (lambda w: w.heartbeat, _nothing),
    "lease watch": (lambda w: w.lease_watch, _nothing),
    "rescuer": (lambda w: w.rescuer, _nothing),
    "listener": (lambda w: w.listener, _kill_listener_connection),
    "reporter": (lambda w: w._reporter(), _wake_reporter),
}


@pytest.mark.parametrize("task", list(HELPERS))
async def test_a_dead_helper_stops_the_worker_and_releases_its_job(
    task: str, db: Conn, dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    caplog.set_level(logging.INFO)
    s = await make_schedule(
        db,
        now=datetime.now(UTC),
        job_type="python",
        payload=python_job(dsn, "slow", seconds=30),
        max_attempts=3,
    )
    run = await trigger(db, s["id"])
    async with started_worker(dsn, expect_death=True, grace_seconds=30.0) as running:
        worker = running.worker
        await wait_state(db, run["id"], {"running"})

        async def started() -> bool:
            return [n for _, n in await log(db)] == ["start"]

        await eventually("the job starts", started)
        loop_of, next_pass = HELPERS[task]
        loop = loop_of(worker)
        assert loop.name == task
        monkeypatch.setattr(loop, "run_once", boom)
        await next_pass(db, worker)
        died = await running.ended(within=15)

    # run() raised, naming the task, caused by the injected exception.
    assert isinstance(died, Died) and died.task == task
    assert isinstance(died.__cause__, RuntimeError)
    died_logged(caplog, task)
    # The job was stopped at once, not after its 30 s nor a 30 s grace period, and its run
    # released: back to waiting, its attempt not consumed, claimable by another worker.
    assert [n for _, n in await log(db)] == ["start"], "the job did not run to its end"
    after = await test_store.get_run(db, run["id"])
    assert after is not None
    assert after["state"] == "waiting" and after["lease_expires_at"] is None
    assert await event_types(db, run["id"]) == ["run.created", "run.claimed", "run.released"]
    # It stopped claiming and said so.
    cur = await db.execute("SELECT state FROM pgsched.worker WHERE id = %s", [worker.worker_id])
    assert await cur.fetchall() == [{"state": "stopped"}]
    assert worker.stats.claimed == 1 and worker.stats.released == 1


async def test_a_pass_that_fails_is_retried_not_fatal(
    db: Conn, dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """The guard inside a pass stays: a heartbeat whose statement fails (a database error,
    not an outage) is logged and tried again a period later; the worker keeps working."""
    import psycopg

    failures = 0

    async def failing(worker: Worker) -> None:
        nonlocal failures
        failures += 1
        raise psycopg.errors.InternalError("not now")

    async with started_worker(dsn) as running:
        worker = running.worker
        monkeypatch.setattr(worker, "heartbeat_once", lambda: failing(worker))
        hb = worker.heartbeat.signals
        await signalled(hb.until(lambda: hb.passes >= 2), "two heartbeats fail")
        assert not running.task.done()
    assert failures >= 2
    assert "heartbeat failed (not now)" in caplog.text


async def _until_stopped(stop: asyncio.Event) -> None:
    await stop.wait()


async def test_a_dead_ticker_loop_stops_the_service(
    dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """`pgsched run` / `pgsched ticker`: a ticker loop that dies stops the other loops and the
    services (as a stop request would), and `serve` raises `Died`: the CLI exits 70."""
    stopped_services: list[str] = []

    async def a_service(stop: asyncio.Event) -> None:
        await stop.wait()
        stopped_services.append("stopped cleanly")

    monkeypatch.setattr(service.PoolLoop, "run_once", lambda self: boom())
    clock = SystemClock()
    loops = service.default_loops(clock, tickers=1)
    stop = asyncio.Event()
    with pytest.raises(Died) as raised:
        async with asyncio.timeout(15):
            await service.serve(dsn, clock, stop, loops, services=[a_service])
    assert raised.value.task == "ticker-1"
    died_logged(caplog, "ticker-1")
    assert stop.is_set() and stopped_services == ["stopped cleanly"]


async def test_a_dead_service_stops_the_others(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """`pgsched run`: the worker whose helper died raises `Died` (logged where it happened); the
    other services stop, `serve` raises, and the traceback is not logged a second time."""
    stopped_services: list[str] = []

    async def worker(stop: asyncio.Event) -> None:
        raise Died("heartbeat", RuntimeError("boom"))

    async def api(stop: asyncio.Event) -> None:
        await stop.wait()
        stopped_services.append("api")

    stop = asyncio.Event()
    with pytest.raises(Died) as raised:
        async with asyncio.timeout(15):
            await service.serve(
                dsn, SystemClock(), stop, [], services={"worker": worker, "api": api}
            )
    assert raised.value.task == "worker" and stopped_services == ["api"]
    (record,) = [r for r in caplog.records if r.name == "pgsched.background"]
    assert record.getMessage() == "worker stopped: heartbeat stopped unexpectedly"
    assert record.exc_info is None


async def test_a_failing_tick_is_logged_and_retried(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A tick that raises is a failed pass, not a dead loop: logged, retried a period later."""
    stop = asyncio.Event()
    calls = 0

    async def bad_step(conn: Conn) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        raise ValueError("a bad tick")

    loop = service.Periodic("ticker-x", 0.01, bad_step)
    async with asyncio.timeout(15):
        await service.serve(dsn, SystemClock(), stop, [loop])
    assert calls >= 3
    assert caplog.text.count("ticker-x failed; retrying") >= 2
    assert "died" not in caplog.text


async def test_the_sampler_waits_on_the_clock() -> None:
    """The telemetry sampler's period is slept on the injected clock: a FakeClock that does
    not move gets one sample, each advance by the period one more."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    samples = 0

    async def once() -> None:
        nonlocal samples
        samples += 1

    sampler = telemetry.Sampler(once, 60.0, clock)
    task = asyncio.create_task(sampler.run())
    try:
        await signalled(sampler.signals.next(), "the first sample")
        assert samples == 1
        clock.advance(59)
        await asyncio.sleep(0)  # let it run, were it (wrongly) not waiting for the clock
        assert samples == 1
        clock.advance(1)
        await signalled(sampler.signals.next(), "the second sample")
        assert samples == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_dead_sampler_is_logged_and_raised(
    caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    async def once() -> None:
        pass

    monkeypatch.setattr(telemetry.Sampler, "run_once", lambda self: boom())
    with pytest.raises(Died) as raised:
        async with asyncio.timeout(10):
            await telemetry.sample_forever(once, 0.05, asyncio.Event())
    assert raised.value.task == "telemetry sampler"
    died_logged(caplog, "telemetry sampler")


async def test_a_dead_sampler_stops_the_api_server(
    dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """`pgsched api` and `pgsched run` serve the app with uvicorn; the app's sampler reports its
    death to the command (app.cli), which stops the server and exits 70 (`pgsched run` stops
    its other services too: `serve` raises `Died`, as for a ticker loop)."""
    from litestar.testing import AsyncTestClient

    from pgsched.app import cli
    from pgsched.app.api import create_app
    from tests.api.conftest import settings_for

    class Server:
        should_exit = False

    monkeypatch.setattr(telemetry.Sampler, "run_once", lambda self: boom())
    app = create_app(settings_for(dsn, metrics_sample_seconds=0.05))
    watch = cli._StopOnDeath(app)
    server = Server()
    watch.server = server  # type: ignore[assignment]
    async with AsyncTestClient(app=app):
        await eventually("the sampler dies", lambda: asyncio.sleep(0, watch.died))
    assert watch.died is not None and watch.died.task == "telemetry sampler"
    assert server.should_exit
    died_logged(caplog, "telemetry sampler")


# A `pgsched` command in a process of its own, with one loop's `run_once` replaced by "boom".
INJECT = """
import sys
from pgsched.app import service
from pgsched.app.cli import main
from pgsched.workers import worker

async def boom(self):
    raise RuntimeError("boom")

setattr({target}, "run_once", boom)
sys.exit(main([{command!r}]))
"""


@pytest.mark.parametrize(
    ("command", "target", "task"),
    [
        ("worker", "worker._Heartbeat", "heartbeat"),
        ("ticker", "service.PoolLoop", "ticker-1"),
    ],
)
def test_the_command_exits_70_when_a_loop_dies(
    dsn: str, tmp_path: Path, command: str, target: str, task: str
) -> None:
    """What an orchestrator sees: the process logs the death with its traceback and exits 70
    on its own, without a signal, so it is restarted."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PGSCHED_LEASE_SECONDS": "3",
        "PGSCHED_LOG_FORMAT": "text",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", INJECT.format(target=target, command=command)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 70, output
    assert f"{task} died" in output and "RuntimeError: boom" in output, output


# -- the loop machinery's own promises ----------------------------------------------------------


class _Recorded(SystemClock):
    """The system clock, remembering every sleep a loop asked for."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


async def test_a_listener_whose_connection_breaks_reconnects_without_growing_backoff(
    dsn: str, db: Conn
) -> None:
    """After a LISTEN went through, a broken connection is the pass's normal end: the next
    LISTEN comes a short period later every time, not after a backoff that grows with each
    break over the life of the process."""
    from pgsched.workers.worker import _Listener

    clock = _Recorded()
    listener = _Listener(Worker(dsn, clock=clock))
    task = asyncio.create_task(listener.run())
    try:
        for listens in range(1, 5):
            await listener.signals.until(lambda n=listens: listener.listens >= n)
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
                " AND pid <> pg_backend_pid()"
            )
        await listener.signals.until(lambda: listener.listens >= 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert clock.sleeps, "the listener never slept between connections"
    assert set(clock.sleeps) == {listener.period_seconds}, clock.sleeps


async def test_a_loop_stopped_before_its_first_step_is_still_closed() -> None:
    class Holder(Loop):
        closings = 0

        async def run_once(self) -> None:
            pass

        async def closed(self) -> None:
            self.closings += 1

    from pgsched.app.background import Supervisor

    loop = Holder("holder", SystemClock(), 1.0)
    loop.start(Supervisor())
    await loop.stop()  # before the task ever ran
    assert loop.closings == 1
    await loop.stop()
    assert loop.closings == 1, "closed() runs once"


async def test_two_live_tasks_cannot_share_a_name() -> None:
    from pgsched.app.background import Supervisor

    supervisor = Supervisor()
    gate = asyncio.Event()
    supervisor.start("worker", gate.wait())
    second = gate.wait()
    with pytest.raises(ValueError, match="already running"):
        supervisor.start("worker", second)
    await supervisor.stop()


def test_services_of_one_name_are_numbered_not_dropped() -> None:
    async def worker_run(stop: asyncio.Event) -> None:
        await stop.wait()

    named = service._named([worker_run, worker_run, worker_run])
    assert len(named) == 3
    assert list(named.values()) == [worker_run] * 3
