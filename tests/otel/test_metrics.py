"""/metrics of a worker process and of the API after known work, and the same metrics over OTLP.

The worker is a real `pgsched worker` process (its own /metrics port, its own resource); the
API runs in this process with its database sampler. Every pgsched series in the exposition
must be one the catalogue declares (otel/catalogue.py), with the labels it declares.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

import otel
from app import schedules
from app.db.store import Conn
from otel import catalogue
from tests.api.conftest import wait_for
from tests.conftest import ROOT
from tests.factories import make_schedule
from tests.otel.receiver import Receiver
from workers.worker import POOL_SIZE

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


def _start_worker(
    dsn: str, receiver: Receiver, lines: list[str]
) -> tuple[subprocess.Popen[str], int]:
    """`pgsched worker` with a /metrics port; its stderr lines go to `lines` (read by a thread,
    so a chatty process never blocks on a full pipe)."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PGSCHED_METRICS_PORT": "0",
        "PGSCHED_LEASE_SECONDS": "3",
        "PGSCHED_LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=ROOT,
        env=env,
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
            record = json.loads(line)  # every line the worker logs is JSON
            assert record["service"] == "pgsched-worker"
            if record["message"].startswith("metrics on http://"):
                return proc, int(record["message"].rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"the worker did not log its metrics port: {lines}")


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
    proc, port = _start_worker(dsn, receiver, lines)
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

    async def sampled() -> Samples | None:
        samples = parse((await traced_api.get("/metrics")).text)
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
    if promtool := shutil.which("promtool"):  # Debian's prometheus package: lint the exposition
        text = (await traced_api.get("/metrics")).text
        subprocess.run([promtool, "check", "metrics"], input=text, text=True, check=True)  # noqa: ASYNC221
    requests = [
        (labels, v)
        for (name, labels), v in samples.items()
        if name == "pgsched_api_requests_total" and ("path", "/metrics") in labels
    ]
    assert requests and all(v >= 1 for _, v in requests)

    telemetry.force_flush()
    points: dict[str, Any] = receiver.received.metric_points()
    assert ({"queue": "default", "state": "ready"}, 2) in points["pgsched.queue.depth"]
    assert ({"table": "run"}, 3) in points["pgsched.partitions.months_ahead"]
    await asyncio.sleep(0)
