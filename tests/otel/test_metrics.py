"""/metrics of a worker process and of the API after known work, and the same metrics over OTLP.

The worker is a real `pgsched worker` process (its own /metrics port, its own resource); the
API runs in this process with its database sampler. Every pgsched series in the exposition
must be one the catalogue declares (otel/catalogue.py), with the labels it declares.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from pgsched import otel
from pgsched.app import ticker
from pgsched.app.clock import SystemClock
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.domain.schedule import HEALTH_POLICY
from pgsched.app.service import default_loops
from pgsched.app.services import schedules
from pgsched.otel import catalogue
from pgsched.otel import runs as otel_runs
from pgsched.workers.jobs import JobContext, Outcome
from pgsched.workers.worker import POOL_SIZE
from tests.api.conftest import wait_for
from tests.conftest import ROOT
from tests.factories import cover_last_month, make_schedule
from tests.otel.conftest import promtool, running_worker
from tests.otel.receiver import Receiver
from tests.support import store as test_store

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def check_against_catalogue(samples: Samples) -> None:
    """Every pgsched series is declared, with exactly the declared label keys."""
    declared = {m.prometheus: m for m in catalogue.METRICS}
    for name, labels in samples:
        if not name.startswith("pgsched_") or name.startswith("pgsched_api_"):
            continue  # pgsched_api_*: Litestar's request metrics (app.api.metrics)
        base = name
        for suffix in ("_bucket", "_sum", "_count", "_created"):
            if base.removesuffix(suffix) in declared:
                base = base.removesuffix(suffix)
        assert base in declared, f"{name} is not in otel/catalogue.py"
        keys = {k for k, _ in labels} - {"le"}
        assert keys == set(declared[base].labels), f"{name} has labels {keys}"


async def scrape(telemetry: otel.Telemetry) -> Samples:
    """This process's own /metrics (the port the telemetry fixture opened)."""
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{telemetry.metrics_port}/metrics")
    return parse(reply.text)


def metrics_requests(samples: Samples) -> float:
    """GET /metrics requests the API has counted (all status codes)."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "pgsched_api_requests_total" and ("path", "/metrics") in labels
    )


def _start(
    command: str, dsn: str, receiver: Receiver, lines: list[str]
) -> tuple[subprocess.Popen[str], int]:
    """`pgsched <command>` with a /metrics port; its stderr lines go to `lines` (read by a
    thread, so a chatty process never blocks on a full pipe)."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PGSCHED_METRICS_PORT": "0",
        "PGSCHED_LEASE_SECONDS": "3",
        "PGSCHED_LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsched", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stream = proc.stderr
    assert stream is not None

    def read() -> None:
        with stream:
            lines.extend(stream)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        for line in list(lines):
            record = json.loads(line)  # every line the process logs is JSON
            assert record["service"] == f"pgsched-{command}"
            if record["message"].startswith("metrics on http://"):
                return proc, int(record["message"].rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"`pgsched {command}` did not log its metrics port: {lines}")


async def test_a_worker_process_serves_its_counters_and_exports_them(
    db: Conn, dsn: str, receiver: Receiver
) -> None:
    started = time.time()
    ok = await make_schedule(db, now=datetime.now(UTC), job_type="noop", enabled=False)
    bad = await make_schedule(
        db,
        now=datetime.now(UTC),
        job_type="command",
        payload={"argv": ["false"]},
        enabled=False,
        max_attempts=1,
    )
    runs = [(await schedules.trigger(db, ok["id"], actor="t", now=None))[0] for _ in range(3)]
    runs.append((await schedules.trigger(db, bad["id"], actor="t", now=None))[0])
    lines: list[str] = []
    proc, port = _start("worker", dsn, receiver, lines)
    try:

        async def all_done() -> bool:
            cur = await db.execute(
                "SELECT count(*) AS n FROM pgsched.run WHERE state IN ('succeeded', 'dead')"
            )
            row = await cur.fetchone()
            return row is not None and row["n"] == len(runs)

        await wait_for(all_done, within=30)

        async def scraped() -> Samples | None:
            async with httpx.AsyncClient() as client:
                reply = await client.get(f"http://127.0.0.1:{port}/metrics")
            samples = parse(reply.text)
            beat = value(samples, "pgsched_worker_heartbeat_timestamp_seconds")
            return samples if beat else None  # the first heartbeat comes after a third of a lease

        samples: Samples = await wait_for(scraped, within=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    total = "pgsched_jobs_processed_total"
    assert value(samples, total, status="succeeded", queue="default", job_type="noop") == 3
    assert value(samples, total, status="dead", queue="default", job_type="command") == 1
    assert value(samples, "pgsched_runs_claimed_total", queue="default") == 4
    assert value(samples, "pgsched_runs_dead_total", queue="default") == 1
    count = "pgsched_job_duration_seconds_count"
    assert value(samples, count, status="succeeded", queue="default", job_type="noop") == 3
    beat = value(samples, "pgsched_worker_heartbeat_timestamp_seconds")
    assert beat is not None and started <= beat <= time.time()
    assert value(samples, "pgsched_db_pool_connections", pool="worker", state="max") == POOL_SIZE
    assert value(samples, "pgsched_worker_inflight") == 0
    check_against_catalogue(samples)
    info = [labels for (name, labels) in samples if name == "target_info"]
    assert ("service_name", "pgsched-worker") in info[0]

    # SIGTERM flushed the process's telemetry: its metrics and spans reached the receiver.
    points = receiver.received.metric_points()
    succeeded = {"status": "succeeded", "queue": "default", "job_type": "noop"}
    assert (succeeded, 3) in points["pgsched.jobs.processed"]
    resources = receiver.received.resources()
    assert {(r["service.name"], r["pgsched.role"]) for r in resources} == {
        ("pgsched-worker", "worker")
    }
    processed = [s for s in receiver.received.spans() if s.name == "process default"]
    assert sorted(s.attributes["pgsched.run.id"] for s in processed) == sorted(
        r["id"] for r in runs
    )


async def test_the_api_serves_database_gauges_and_exports_them(
    db: Conn,
    telemetry: otel.Telemetry,
    receiver: Receiver,
    traced_api: AsyncTestClient[Litestar],
) -> None:
    s = await make_schedule(db, now=datetime.now(UTC), job_type="noop")
    await make_schedule(db, now=datetime.now(UTC), job_type="noop", enabled=False)
    for _ in range(2):
        await schedules.trigger(db, s["id"], actor="t", now=None)

    scrapes: list[Samples] = [parse((await traced_api.get("/metrics")).text)]

    async def sampled() -> Samples | None:
        samples = parse((await traced_api.get("/metrics")).text)
        scrapes.append(samples)
        ready = value(samples, "pgsched_queue_depth", queue="default", state="ready")
        return samples if ready == 2 else None

    samples: Samples = await wait_for(sampled, within=10)
    assert value(samples, "pgsched_queue_depth", queue="default", state="running") == 0
    age = value(samples, "pgsched_queue_oldest_ready_age_seconds", queue="default")
    assert age is not None and 0 <= age < 60
    assert value(samples, "pgsched_schedules", state="enabled") == 1
    assert value(samples, "pgsched_schedules", state="paused") == 1
    assert value(samples, "pgsched_partitions_months_ahead", table="run") == 3
    assert value(samples, "pgsched_partitions_months_ahead", table="event") == 3
    assert value(samples, "pgsched_partitions_default_rows", table="run") == 0
    assert value(samples, "pgsched_workers", state="live") == 0
    assert value(samples, "pgsched_db_pool_connections", pool="api", state="max") == 4
    check_against_catalogue(samples)
    if checker := promtool():  # Debian's prometheus package: lint the exposition
        text = (await traced_api.get("/metrics")).text
        subprocess.run([checker, "check", "metrics"], input=text, text=True, check=True)  # noqa: ASYNC221
    # Litestar's request counter lives in prometheus_client's process-wide registry (other
    # tests count into it too), so the check is on the difference: one per scrape in between.
    assert len(scrapes) >= 2
    assert metrics_requests(scrapes[-1]) - metrics_requests(scrapes[0]) == len(scrapes) - 1

    telemetry.force_flush()
    points: dict[str, Any] = receiver.received.metric_points()
    assert ({"queue": "default", "state": "ready"}, 2) in points["pgsched.queue.depth"]
    assert ({"table": "run"}, 3) in points["pgsched.partitions.months_ahead"]
    await asyncio.sleep(0)


async def test_schedule_health_and_the_breaker_reach_the_metrics(
    db: Conn, telemetry: otel.Telemetry, traced_api: AsyncTestClient[Litestar]
) -> None:
    """A count per health state, and the schedules the breaker paused: what the alerts
    PgschedSchedulesUnhealthy and PgschedCircuitBreakerOpen read (ADR 0032)."""
    await cover_last_month(db)
    late = datetime.now(UTC) - timedelta(minutes=10)
    policy = {**HEALTH_POLICY, "overdue_seconds": 60.0}
    await make_schedule(db, now=late, job_type="noop", health_policy=policy)  # 10 min overdue
    await make_schedule(db, now=datetime.now(UTC), job_type="noop")
    tripped = await make_schedule(
        db, now=late, job_type="noop", queue="breaker", pause_after_failures=1, max_attempts=1,
        health_policy={**HEALTH_POLICY, "consecutive_failures": 1},
    )  # fmt: skip
    await store.insert_runs(
        db, [(tripped["id"], late, late)], origin="backfill", actor="t", now=None
    )
    (run,) = await test_store.claim_runs(
        db, worker_id=1, queues=["breaker"], limit=1, lease_seconds=30, actor="w", now=None
    )
    await test_store.fail_run(
        db, store.Lease.of(run), {"status": "failed"}, jitter=0.0, actor="w", now=None, final=True
    )
    await store.health.evaluate(db, None, now=None)  # the sweep: the overdue one

    async def sampled() -> Samples | None:
        samples = parse((await traced_api.get("/metrics")).text)
        unhealthy = value(samples, "pgsched_schedules_health", state="unhealthy")
        return samples if unhealthy == 2 else None

    samples = await wait_for(sampled, within=10)
    assert value(samples, "pgsched_schedules_health", state="healthy") == 1
    assert value(samples, "pgsched_schedules_health", state="degraded") == 0
    assert value(samples, "pgsched_schedules_paused_by_breaker") == 1
    check_against_catalogue(samples)
    # Resumed, it is no longer counted as the breaker's.
    await schedules.resume(db, tripped["id"], actor="admin", now=None)

    async def resumed() -> Samples | None:
        samples = parse((await traced_api.get("/metrics")).text)
        return samples if value(samples, "pgsched_schedules_paused_by_breaker") == 0 else None

    await wait_for(resumed, within=10)


async def test_rows_in_a_default_partition_reach_the_metric(
    db: Conn, telemetry: otel.Telemetry, traced_api: AsyncTestClient[Litestar]
) -> None:
    """The alert PgschedDefaultPartitionRows fires on pgsched_partitions_default_rows > 0."""
    s = await make_schedule(db, now=datetime.now(UTC), job_type="noop", enabled=False)
    await db.execute("CREATE TABLE pgsched.run_stray PARTITION OF pgsched.run DEFAULT")
    far = datetime(2100, 1, 1, tzinfo=UTC)  # a month with no partition of its own
    await store.insert_runs(db, [(s["id"], far, far)], origin="backfill", actor="t", now=None)
    await db.execute("SELECT pg_stat_force_next_flush()")  # the count comes from the statistics

    async def counted() -> Samples | None:
        samples = parse((await traced_api.get("/metrics")).text)
        rows = value(samples, "pgsched_partitions_default_rows", table="run")
        return samples if rows == 1 else None

    samples = await wait_for(counted, within=10)
    assert value(samples, "pgsched_partitions_default_rows", table="event") == 0


async def test_the_ticker_counts_missed_occurrences_and_stamps_its_last_tick(
    db: Conn, telemetry: otel.Telemetry, receiver: Receiver
) -> None:
    """The SchedulerDown alert reads pgsched_ticker_last_tick_timestamp_seconds; missed
    occurrences (policy skip) are counted with reason late."""
    started = time.time()
    await cover_last_month(db)  # now - 10 min is last month's in the first minutes of the 1st
    s = await make_schedule(
        db,
        now=datetime.now(UTC) - timedelta(minutes=10),
        interval_seconds=60,
        missed_policy="skip",
        grace_seconds=60,
    )
    tick, _ = default_loops(SystemClock())
    await tick.step(db)  # the service's tick, as `pgsched run` runs it
    ticked = time.time()
    cur = await db.execute(
        "SELECT meta->>'reason' AS reason FROM pgsched.event "
        "WHERE type = 'schedule.occurrence_missed' AND stream_id = %s",
        [s["id"]],
    )
    reasons = [r["reason"] for r in await cur.fetchall()]
    assert len(reasons) >= 8 and set(reasons) == {"skip"}  # ten minutes down, one a minute
    cur = await db.execute(
        "SELECT count(*) AS n FROM pgsched.run WHERE schedule_id = %s", [s["id"]]
    )
    created = (await cur.fetchone() or {})["n"]

    samples = await scrape(telemetry)
    assert value(samples, "pgsched_occurrences_missed_total", reason="late") == len(reasons)
    assert value(samples, "pgsched_runs_created_total") == created
    last = value(samples, "pgsched_ticker_last_tick_timestamp_seconds")
    assert last is not None and started <= last <= ticked
    assert value(samples, "pgsched_ticker_tick_duration_seconds_count") == 1
    check_against_catalogue(samples)

    telemetry.force_flush()
    points = receiver.received.metric_points()
    assert points["pgsched.occurrences.missed"] == [({"reason": "late"}, len(reasons))]
    ((labels, stamp),) = points["pgsched.ticker.last_tick.timestamp"]
    assert labels == {} and stamp == last


async def test_the_ticker_counts_its_dependency_decisions(
    db: Conn, telemetry: otel.Telemetry
) -> None:
    """A run held for a paused upstream is counted blocked, then skipped when its wait ends."""
    at = datetime.now(UTC).replace(microsecond=0)
    upstream = await make_schedule(db, now=at, enabled=False)
    await make_schedule(db, now=at, depends_on=[upstream["id"]], dependency_timeout_seconds=1)
    for instant in (at, at + timedelta(seconds=2)):
        with otel_runs.ticking() as tick:  # as the service's ticker loop records a tick
            tick.done(await ticker.tick(db, now=instant))
    samples = await scrape(telemetry)
    assert value(samples, "pgsched_runs_dependency_total", decision="blocked") == 1
    assert value(samples, "pgsched_runs_dependency_total", decision="skipped") == 1
    assert value(samples, "pgsched_runs_dependency_total", decision="released") is None
    check_against_catalogue(samples)


async def test_a_fenced_completion_is_counted(
    db: Conn, dsn: str, telemetry: otel.Telemetry, receiver: Receiver
) -> None:
    """An attempt that loses its lease while it runs (rescued elsewhere) but does not notice
    before it returns: its report is refused (fenced), counted with reason completion."""
    s = await make_schedule(db, now=datetime.now(UTC), enabled=False, max_attempts=3)
    run = (await schedules.trigger(db, s["id"], actor="t", now=None))[0]

    async def rescued_under_it(job_type: str, payload: Any, ctx: JobContext) -> Outcome:
        if ctx.attempt == 1:  # as if this worker had stalled past its lease
            await db.execute(
                "UPDATE pgsched.run SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
                [ctx.run_id],
            )
            assert await store.rescue_expired(db, limit=10, actor="elsewhere", now=None)
        return Outcome("succeeded", retryable=False)

    async with running_worker(dsn, executor=rescued_under_it) as worker:

        async def done() -> bool:
            row = await test_store.get_run(db, run["id"])
            return row is not None and row["state"] == "succeeded"

        await wait_for(done, within=20)
    assert worker.stats.fenced == 1 and worker.stats.succeeded == 1
    cur = await db.execute(
        "SELECT count(*) AS n FROM pgsched.event "
        "WHERE type = 'run.completion_fenced' AND stream_id = %s",
        [run["id"]],
    )
    assert (await cur.fetchone() or {})["n"] == 1

    samples = await scrape(telemetry)
    assert value(samples, "pgsched_completions_fenced_total", reason="completion") == 1
    assert value(samples, "pgsched_completions_fenced_total", reason="lease_lost") is None
    total = "pgsched_jobs_processed_total"
    assert value(samples, total, status="fenced", queue="default", job_type="noop") == 1
    assert value(samples, total, status="succeeded", queue="default", job_type="noop") == 1

    telemetry.force_flush()
    points = receiver.received.metric_points()
    assert points["pgsched.completions.fenced"] == [({"reason": "completion"}, 1)]
    (fenced,) = [
        x
        for x in receiver.received.spans()
        if x.name == "process default" and x.attributes["pgsched.run.attempt"] == 1
    ]
    assert fenced.attributes["pgsched.run.outcome"] == "fenced"
    assert fenced.attributes["error.type"] == "fenced"
    (reported,) = [attributes for name, attributes, _ in fenced.events if name == "reported"]
    assert reported["pgsched.run.outcome"] == "fenced"


async def test_pgsched_ticker_materialises_runs_and_stops_on_sigterm(
    db: Conn, dsn: str, receiver: Receiver
) -> None:
    """`pgsched ticker`: only the ticker loops, in a process of role ticker."""
    started = time.time()
    now = datetime.now(UTC)
    s = await make_schedule(
        db, now=now, kind="once", interval_seconds=None, run_at=now + timedelta(seconds=1)
    )
    lines: list[str] = []
    proc, port = _start("ticker", dsn, receiver, lines)
    try:

        async def materialised() -> int | None:
            cur = await db.execute("SELECT id FROM pgsched.run WHERE schedule_id = %s", [s["id"]])
            row = await cur.fetchone()
            return int(row["id"]) if row else None

        run_id = await wait_for(materialised, within=20)

        async def scraped() -> Samples | None:  # counted just after the tick's commit
            async with httpx.AsyncClient() as client:
                samples = parse((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
            return samples if value(samples, "pgsched_runs_created_total") else None

        samples: Samples = await wait_for(scraped, within=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, lines
    run = await test_store.get_run(db, run_id)
    assert run is not None and run["state"] == "waiting" and run["origin"] == "schedule"
    # The built-in maintenance schedule is installed, as `pgsched run` does.
    cur = await db.execute(
        "SELECT count(*) AS n FROM pgsched.schedule WHERE name = 'pgsched.maintenance'"
    )
    assert (await cur.fetchone() or {})["n"] == 1
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.run")
    created = (await cur.fetchone() or {})["n"]  # 1, or 2 if it was :07 (maintenance)

    assert value(samples, "pgsched_runs_created_total") == created
    last = value(samples, "pgsched_ticker_last_tick_timestamp_seconds")
    assert last is not None and started <= last <= time.time()
    assert value(samples, "pgsched_db_pool_connections", pool="service", state="max")
    check_against_catalogue(samples)
    info = [labels for (name, labels) in samples if name == "target_info"]
    assert ("service_name", "pgsched-ticker") in info[0]

    # SIGTERM flushed its telemetry: the tick that made the run, from a ticker resource.
    resources = receiver.received.resources()
    assert {(r["service.name"], r["pgsched.role"]) for r in resources} == {
        ("pgsched-ticker", "ticker")
    }
    ticks = [x for x in receiver.received.spans() if x.name == "tick"]
    assert sum(x.attributes["pgsched.tick.runs_created"] for x in ticks) == created
    assert run["trace_context"]["trace_id"] in {x.trace_id for x in ticks}
