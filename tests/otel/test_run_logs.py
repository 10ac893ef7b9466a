"""The operator's log: one JSON line per run transition and per tick, at a level of its own.

100 runs go through a real worker on a real database; the lines are read back as JSON from
the stream the logging configuration writes to, and counted.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgsched.app import settings, ticker
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.services import runs, schedules
from pgsched.otel import runs as run_telemetry
from pgsched.otel.logs import RUN_LOGGERS, configure_logging
from tests.factories import make_schedule
from tests.support import store as test_store
from tests.support.worker import running_worker, wait_state

JOBS = "tests.jobs.sample_jobs"
MARKER = "payload-value-4f1c"  # in every echo run's payload and output, never in a log line
ECHO_RUNS = 98
FAILING_RUNS = 2


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logging as `pgsched worker` sets it up (JSON), into a buffer; restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("pgsched-worker", level="INFO", fmt="json", stream=out)
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name in RUN_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(out: io.StringIO, logger: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == logger]


async def test_a_hundred_runs_log_one_line_per_transition(
    db: Conn, dsn: str, stream: io.StringIO
) -> None:
    echo = await make_schedule(
        db,
        name="echo",
        job_type="python",
        payload={"target": f"{JOBS}:echo", "kwargs": {"value": MARKER}},
    )
    failing = await make_schedule(
        db,
        name="always-fails",
        job_type="python",
        payload={"target": f"{JOBS}:boom", "kwargs": {"message": "this job always fails"}},
        max_attempts=2,
        retry_delay_seconds=0.1,
        retry_factor=1,
    )
    made = [
        (await schedules.trigger(db, echo["id"], actor="test", now=None))[0]
        for _ in range(ECHO_RUNS)
    ]
    dead = [
        (await schedules.trigger(db, failing["id"], actor="test", now=None))[0]
        for _ in range(FAILING_RUNS)
    ]
    async with running_worker(dsn, slots=8):
        for run in made + dead:
            await wait_state(db, run["id"], {"succeeded", "dead"}, within=60)

    lines = _lines(stream, "pgsched.runs")
    per_outcome = Counter(line["outcome"] for line in lines)
    # Each echo run: claimed, succeeded; each failing run: claimed, failed, claimed, dead.
    assert per_outcome == {
        "claimed": ECHO_RUNS + 2 * FAILING_RUNS,
        "succeeded": ECHO_RUNS,
        "failed": FAILING_RUNS,
        "dead": FAILING_RUNS,
    }, per_outcome
    assert len({line["run_id"] for line in lines}) == ECHO_RUNS + FAILING_RUNS
    for line in lines:
        assert line["message"] == f"run {line['outcome']}"
        assert line["service"] == "pgsched-worker" and line["queue"] == "default"
        assert {"run_id", "schedule", "schedule_id", "attempt", "timestamp"} <= line.keys()
    one = dead[0]["id"]
    story = [(x["outcome"], x["attempt"], x["level"]) for x in lines if x["run_id"] == one]
    assert story == [
        ("claimed", 1, "INFO"),
        ("failed", 1, "INFO"),
        ("claimed", 2, "INFO"),
        ("dead", 2, "WARNING"),
    ]
    ends = [x for x in lines if x["run_id"] == one and x["outcome"] != "claimed"]
    assert all(x["duration_ms"] >= 0 and "always fails" in x["error"] for x in ends), [
        json.dumps(x) for x in ends
    ]
    assert datetime.fromisoformat(ends[0]["retry_at"]) > datetime.fromisoformat(
        ends[0]["timestamp"]
    ) - timedelta(seconds=1)
    assert ends[0]["schedule"] == "always-fails"
    assert MARKER not in stream.getvalue(), "a payload or a job's output is never logged"

    # An operator's retry is a transition too (the API and CLI process logs it).
    await runs.retry(db, one, actor="alice", now=None, meta={})
    (retried,) = [x for x in _lines(stream, "pgsched.runs") if x["outcome"] == "retried"]
    assert (retried["run_id"], retried["actor"], retried["attempt"]) == (one, "alice", 2)


async def test_a_tick_logs_what_it_made_and_idle_ticks_only_at_debug(
    db: Conn, stream: io.StringIO
) -> None:
    await make_schedule(db, now=datetime.now(UTC), kind="interval", interval_seconds=3600)

    async def tick() -> None:
        with run_telemetry.ticking() as holder:
            holder.done(await ticker.tick(db, now=None, actor="ticker"))

    await tick()  # the schedule is due at its creation: one run
    await tick()  # nothing left to do
    (busy,) = _lines(stream, "pgsched.ticks")
    assert (busy["message"], busy["level"], busy["runs_created"]) == ("tick", "INFO", 1)
    assert {"schedules", "runs_missed", "runs_overlapped", "duration_ms"} <= busy.keys()
    logging.getLogger("pgsched.ticks").setLevel(logging.DEBUG)
    await tick()
    assert [x["level"] for x in _lines(stream, "pgsched.ticks")] == ["INFO", "DEBUG"]


async def test_a_tick_that_only_settled_dependency_runs_is_not_idle(
    db: Conn, stream: io.StringIO
) -> None:
    """A run held for a paused upstream is skipped when its wait ends: that tick made nothing
    but changed a run, so it is logged at INFO like one that made runs (ADR 0033)."""
    at = datetime.now(UTC).replace(microsecond=0)
    upstream = await make_schedule(db, name="up", now=at, enabled=False)
    await make_schedule(
        db, name="down", now=at, depends_on=[upstream["id"]], dependency_timeout_seconds=1
    )
    held = await ticker.tick(db, now=at, actor="ticker")  # down's occurrence waits for up's
    assert held.blocked == 1, held
    with run_telemetry.ticking() as holder:
        settled = await ticker.tick(db, now=at + timedelta(seconds=2), actor="ticker")
        holder.done(settled)
    assert (settled.skipped, settled.created) == (1, 0), settled
    (line,) = _lines(stream, "pgsched.ticks")
    assert (line["level"], line["runs_skipped"], line["runs_created"]) == ("INFO", 1, 0)


async def test_an_operators_cancel_and_retry_are_logged_with_the_schedules_name(
    db: Conn, stream: io.StringIO
) -> None:
    s = await make_schedule(db, name="nightly")
    run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)
    await runs.cancel(db, run["id"], actor="alice", meta={}, now=None)
    await runs.retry(db, run["id"], actor="bob", meta={}, now=None)
    lines = [x for x in _lines(stream, "pgsched.runs") if x["run_id"] == run["id"]]
    assert [(x["outcome"], x["actor"], x["schedule"]) for x in lines] == [
        ("cancelled", "alice", "nightly"),
        ("retried", "bob", "nightly"),
    ], lines
    assert (await runs.cancel(db, run["id"], actor="alice", meta={}, now=None))[1] is not None
    assert _lines(stream, "pgsched.runs")[-1]["outcome"] == "cancelled"


def test_the_run_lines_have_a_level_of_their_own(stream: io.StringIO) -> None:
    assert settings.logs({"PGSCHED_RUN_LOG_LEVEL": "warning"}).run_level == "WARNING"
    assert settings.logs({}).run_level is None, "unset: PGSCHED_LOG_LEVEL's"
    with pytest.raises(settings.SettingsError, match="PGSCHED_RUN_LOG_LEVEL must be one of"):
        settings.logs({"PGSCHED_RUN_LOG_LEVEL": "chatty"})
    configure_logging("pgsched-worker", fmt="json", stream=stream, run_level="WARNING")
    fields = {"run_id": 1, "schedule_id": 1, "attempt": 1, "queue": "default"}
    for outcome in ("claimed", "succeeded", "failed", "dead", "fenced", "rescued"):
        run_telemetry.log_transition(outcome, fields)
    kept = [x["outcome"] for x in _lines(stream, "pgsched.runs")]
    assert kept == ["dead", "fenced", "rescued"], "WARNING keeps the runs that need a look"
    # The rest of the process still logs at PGSCHED_LOG_LEVEL (INFO).
    logging.getLogger("pgsched.worker").info("still here")
    assert _lines(stream, "pgsched.worker")[0]["message"] == "still here"


async def test_a_rescued_run_says_so_and_its_next_attempt_follows(
    db: Conn, dsn: str, stream: io.StringIO
) -> None:
    s = await make_schedule(
        db,
        job_type="python",
        payload={"target": f"{JOBS}:echo", "kwargs": {"value": 1}},
        retry_delay_seconds=0.1,
    )
    run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)
    silent = await store.register_worker(
        db, name="silent", host="h", pid=1, version="t", queues=["default"], slots=1, now=None
    )
    # Claimed by a worker that never reports, with a lease already over when the next starts.
    await test_store.claim_runs(
        db,
        worker_id=silent["id"],
        queues=["default"],
        limit=1,
        lease_seconds=0.05,
        actor="silent",
        now=None,
    )
    async with running_worker(dsn):
        await wait_state(db, run["id"], {"succeeded"}, within=60)
    story = [
        (x["outcome"], x["attempt"], x["level"])
        for x in _lines(stream, "pgsched.runs")
        if x["run_id"] == run["id"]
    ]
    assert story == [
        ("rescued", 1, "WARNING"),
        ("claimed", 2, "INFO"),
        ("succeeded", 2, "INFO"),
    ], story
    (rescued,) = [x for x in _lines(stream, "pgsched.runs") if x["outcome"] == "rescued"]
    assert rescued["state"] == "waiting" and rescued["retry_at"]
    assert rescued["schedule"] == s["name"]
