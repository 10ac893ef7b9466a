"""A release (shutdown) or cancel that the store refuses because the attempt no longer holds its
lease is counted like a fenced completion: `stats.fenced`, pgsched.completions.fenced with
reason release or cancel, the attempt's outcome `fenced`; never as released or cancelled.

The window is real but narrow: the lease is lost after the worker's last heartbeat and before
its release or cancel reaches the database (a stall, a rescue elsewhere). The job here opens it
on purpose: when the worker stops it, it lets its lease run out and has it rescued first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from pgsched import otel
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.services import schedules
from pgsched.workers.jobs import JobContext, Outcome
from tests.api.conftest import wait_for
from tests.factories import make_schedule
from tests.otel.conftest import running_worker
from tests.otel.receiver import Receiver
from tests.otel.test_metrics import scrape, value
from tests.support import store as test_store

# How the job is stopped -> the counter's reason, and the fenced event's meta.transition.
CASES = {"shutdown": ("release", "release_run"), "cancel": ("cancel", "complete")}


@pytest.mark.parametrize("stop", list(CASES))
async def test_a_fenced_release_or_cancel_is_counted_as_fenced(
    db: Conn, dsn: str, telemetry: otel.Telemetry, receiver: Receiver, stop: str
) -> None:
    reason, transition = CASES[stop]
    # A long retry delay: the rescued run is not claimed again while the test looks.
    s = await make_schedule(db, now=datetime.now(UTC), enabled=False, retry_delay_seconds=600)
    run = (await schedules.trigger(db, s["id"], actor="t", now=None))[0]

    async def rescued_when_stopped(
        job_type: str, payload: Mapping[str, object], ctx: JobContext
    ) -> Outcome:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            # As if this worker had stalled past its lease just as it was told to stop: the
            # run is rescued before the worker's release or cancel reaches the database.
            await db.execute(
                "UPDATE pgsched.run SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
                [ctx.run_id],
            )
            assert await store.rescue_expired(db, limit=10, actor="elsewhere", now=None)
            raise
        return Outcome("succeeded", retryable=False)

    async def running() -> bool:
        row = await test_store.get_run(db, run["id"])
        return row is not None and row["state"] == "running"

    # A 1.5 s lease: the heartbeat (every 0.5 s) sees the cancel request promptly. The
    # worker's own rescuer stays out of it (it would race the job's rescue, SKIP LOCKED).
    async with running_worker(
        dsn,
        executor=rescued_when_stopped,
        lease_seconds=1.5,
        grace_seconds=0.2,
        rescue_every_seconds=600,
    ) as worker:
        await wait_for(running, within=20)
        if stop == "cancel":
            await store.cancel_run(db, run["id"], actor="op", now=None)

            async def fenced() -> bool:
                return worker.stats.fenced == 1

            await wait_for(fenced, within=20)
        # else: leaving the block stops the worker; the grace period (0.2 s) runs out first.
    assert worker.stats.fenced == 1
    assert worker.stats.released == worker.stats.cancelled == 0

    after = await test_store.get_run(db, run["id"])
    assert after is not None and after["state"] == "waiting" and after["attempt"] == 1, after
    cur = await db.execute(
        "SELECT type, meta->>'transition' AS transition FROM pgsched.event"
        " WHERE stream = 'run' AND stream_id = %s ORDER BY id",
        [run["id"]],
    )
    types: list[dict[str, Any]] = await cur.fetchall()
    assert types[-1] == {"type": "run.completion_fenced", "transition": transition}, types
    assert {"run.released", "run.cancelled"}.isdisjoint(t["type"] for t in types)
    assert await replay.verify(db) == []

    samples = await scrape(telemetry)
    assert value(samples, "pgsched_completions_fenced_total", reason=reason) == 1
    total = "pgsched_jobs_processed_total"
    labels = {"queue": "default", "job_type": "noop"}
    assert value(samples, total, status="fenced", **labels) == 1
    assert value(samples, total, status="released", **labels) is None
    assert value(samples, total, status="cancelled", **labels) is None

    telemetry.force_flush()
    points = receiver.received.metric_points()
    assert points["pgsched.completions.fenced"] == [({"reason": reason}, 1)]
    (span,) = [x for x in receiver.received.spans() if x.name == "process default"]
    assert span.attributes["pgsched.run.outcome"] == "fenced"
    assert span.attributes["error.type"] == "fenced"
