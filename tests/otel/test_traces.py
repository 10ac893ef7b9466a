"""Traces end to end, received over real OTLP/HTTP: trigger -> claim -> execution -> completion.

The API, the ticker's tick and a worker run in this process with telemetry pointed at an
in-process receiver (tests/otel/receiver.py); the assertions read the decoded OTLP payloads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched import otel
from pgsched.app.clock import SystemClock
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.service import default_loops
from pgsched.app.services import schedules
from pgsched.otel.logs import MASK, Redactor, set_redactor
from pgsched.workers.jobs import JobContext, Outcome
from tests.api.conftest import Tokens, wait_for
from tests.factories import cover_last_month, make_schedule
from tests.otel.conftest import running_worker
from tests.otel.receiver import Receiver, Span
from tests.support import store as test_store

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP Span.SpanKind
STATUS_ERROR = 2


async def _finished(db: Conn, run_id: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        run = await test_store.get_run(db, run_id)
        return run if run and run["state"] in ("succeeded", "dead") else None

    result: dict[str, Any] = await wait_for(check, within=20)
    return result


def _one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} spans match {match}: {[s.name for s in spans]}"
    return found[0]


def _assert_reported_in_a_batch(spans: list[Span], process: Span, db_spans: list[Span]) -> None:
    """The completion is recorded in a batch (one statement for the results of many runs): its
    `report` span links to each attempt it records, and holds the statement's span."""
    report = _one(spans, name="report")
    assert report.kind == CLIENT and report.parent_span_id == ""
    assert report.attributes["messaging.operation.type"] == "settle"
    assert report.attributes["messaging.batch.message_count"] == 1
    assert (process.trace_id, process.span_id, {"pgsched.link": "reports"}) in report.links
    completion = [s for s in db_spans if s.parent_span_id == report.span_id]
    assert any("finished_at" in str(s.attributes.get("db.statement")) for s in completion)
    assert process.end_ns >= report.end_ns, "the attempt covers its completion"


def _assert_steps(spans: list[Span], process: Span, outcome: str) -> None:
    """The attempt's own trace shows each step as an event on its span, though the claim and
    the report are batch spans of their own (joined by links): `claimed` when its claim took
    it, `reported` when its result was recorded, naming the report's trace."""
    claim, report = _one(spans, name="claim"), _one(spans, name="report")
    steps = [(name, attributes) for name, attributes, _ in process.events]
    assert steps == [
        ("claimed", {"messaging.batch.message_count": 1}),
        (
            "reported",
            {
                "pgsched.run.outcome": outcome,
                "messaging.batch.message_count": 1,
                "pgsched.report.trace_id": report.trace_id,
            },
        ),
    ]
    (_, _, claimed_at), (_, _, reported_at) = process.events
    assert process.start_ns == claim.start_ns, "the attempt starts with its claim"
    assert claim.start_ns <= claimed_at <= claim.end_ns
    assert report.end_ns <= reported_at <= process.end_ns, "recorded, then the attempt ends"


async def test_an_api_trigger_is_one_trace_from_request_to_completion(  # noqa: PLR0917
    db: Conn,
    dsn: str,
    telemetry: otel.Telemetry,
    receiver: Receiver,
    traced_api: AsyncTestClient[Litestar],
    role_tokens: Tokens,
) -> None:
    s = await make_schedule(db, now=datetime.now(UTC), job_type="noop", enabled=False)
    reply = await traced_api.post(
        f"/v1/schedules/{s['id']}/trigger", headers=role_tokens.auth("operator")
    )
    assert reply.status_code == 201, reply.text
    run_id = reply.json()["id"]
    async with running_worker(dsn):
        run = await _finished(db, run_id)
    assert run["state"] == "succeeded"
    telemetry.force_flush()
    spans = receiver.received.spans()

    request = _one(spans, kind=SERVER)
    assert request.name == "POST /v1/schedules/{schedule_id}/trigger"  # a template, no id
    assert request.attributes["http.route"] == "/v1/schedules/{schedule_id}/trigger"
    # The creator's context is on the run row, and so on its events.
    assert run["trace_context"]["trace_id"] == request.trace_id
    assert run["trace_context"]["traceparent"].split("-")[1] == request.trace_id
    cur = await db.execute(
        "SELECT DISTINCT trace_id FROM pgsched.event WHERE stream = 'run' AND stream_id = %s",
        [run_id],
    )
    assert [r["trace_id"] for r in await cur.fetchall()] == [request.trace_id]

    process = _one(spans, kind=CONSUMER)
    assert process.name == "process default"
    assert process.trace_id == request.trace_id, "the attempt continues the trigger's trace"
    assert process.parent_span_id == request.span_id
    assert process.attributes["pgsched.run.id"] == run_id
    assert process.attributes["messaging.message.id"] == str(run_id)
    assert process.attributes["pgsched.schedule.id"] == s["id"]
    assert process.attributes["pgsched.schedule.name"] == s["name"]
    assert process.attributes["messaging.destination.name"] == "default"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["pgsched.run.attempt"] == 1
    assert process.attributes["pgsched.job.type"] == "noop"
    assert process.attributes["pgsched.run.outcome"] == "succeeded"
    assert process.attributes["pgsched.run.origin"] == "trigger"
    assert process.status_code != STATUS_ERROR

    claim = _one(spans, name="claim")
    assert claim.kind == CLIENT and claim.parent_span_id == ""
    assert claim.attributes["messaging.batch.message_count"] == 1
    assert (claim.trace_id, claim.span_id, {"pgsched.link": "claimed_by"}) in process.links

    # psycopg's spans: the request's insert under the request, the completion under the attempt.
    db_spans = [s for s in spans if s.scope.startswith("opentelemetry.instrumentation.psycopg")]
    assert any(s.parent_span_id == request.span_id for s in db_spans)
    _assert_reported_in_a_batch(spans, process, db_spans)
    _assert_steps(spans, process, "succeeded")
    # Nothing idle was exported: every claim and tick span did something.
    assert all(s.attributes.get("pgsched.idle") is None for s in spans)
    assert not [s for s in db_spans if s.parent_span_id == ""], "orphan DB spans are dropped"
    assert all(s.attributes.get("db.statement") for s in db_spans), "no empty pool checks"

    resource = process.resource
    assert resource["service.name"] == "pgsched" and resource["pgsched.role"] == "run"
    assert resource["service.namespace"] == "pgsched" and resource.get("service.instance.id")


async def test_a_ticker_run_links_to_its_tick_and_failures_set_the_status(
    db: Conn, dsn: str, telemetry: otel.Telemetry, receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    s = await make_schedule(
        db,
        now=now,
        job_type="command",
        payload={"argv": ["false"]},
        kind="once",
        interval_seconds=None,
        run_at=now,
        max_attempts=1,
    )
    tick, _ = default_loops(SystemClock())  # two ticker loops; one suffices here
    await tick.step(db)  # the service's tick: creates the run
    await tick.step(db)  # nothing due: an idle tick, dropped
    cur = await db.execute("SELECT id FROM pgsched.run WHERE schedule_id = %s", [s["id"]])
    (run_id,) = [r["id"] for r in await cur.fetchall()]
    async with running_worker(dsn):
        run = await _finished(db, run_id)
    assert run["state"] == "dead"
    telemetry.force_flush()
    spans = receiver.received.spans()

    ticks = [x for x in spans if x.name == "tick"]
    assert len(ticks) == 1, "the idle tick is not exported"
    (made,) = ticks
    assert made.kind == PRODUCER and made.attributes["pgsched.tick.runs_created"] == 1
    assert run["trace_context"]["trace_id"] == made.trace_id

    process = _one(spans, kind=CONSUMER)
    assert process.parent_span_id == "", "a scheduled run starts its own trace"
    assert process.trace_id != made.trace_id
    assert (made.trace_id, made.span_id, {"pgsched.link": "created_by"}) in process.links
    assert process.attributes["pgsched.run.origin"] == "schedule"
    assert process.attributes["pgsched.run.outcome"] == "dead"
    assert process.attributes["pgsched.job.type"] == "command"
    assert process.status_code == STATUS_ERROR and process.status_message
    assert process.attributes["error.type"] == "dead"
    _assert_steps(spans, process, "dead")

    points = receiver.received.metric_points()
    assert points["pgsched.jobs.processed"] == [
        ({"status": "dead", "queue": "default", "job_type": "command"}, 1)
    ]
    assert points["pgsched.runs.dead"] == [({"queue": "default"}, 1)]
    assert points["pgsched.runs.created"] == [({}, 1)]
    assert points["pgsched.runs.claimed"] == [({"queue": "default"}, 1)]
    ((labels, (count, total)),) = points["pgsched.scheduler.lag"]
    assert labels == {"queue": "default"} and count == 1 and 0 <= total < 30
    ((labels, (count, _)),) = [p for p in points["pgsched.job.duration"]]
    assert labels == {"queue": "default", "job_type": "command", "status": "dead"} and count == 1
    claims = dict((p[0]["result"], p[1][0]) for p in points["pgsched.claim.duration"])
    assert claims["claimed"] == 1  # the claims that found nothing are timed too (result=empty)
    ticks_recorded = points["pgsched.ticker.tick.duration"]
    assert ticks_recorded[0][1][0] == 2, "both ticks are timed, though one is not traced"
    resources = receiver.received.resources()
    assert {r["service.name"] for r in resources} == {"pgsched"}


async def test_a_rescued_run_is_counted_and_its_next_attempt_traced(
    db: Conn, dsn: str, telemetry: otel.Telemetry, receiver: Receiver
) -> None:
    s = await make_schedule(db, now=datetime.now(UTC), job_type="noop", enabled=False)
    run = (await schedules.trigger(db, s["id"], actor="t", now=None))[0]
    ghost = await store.register_worker(
        db, name="ghost", host="h", pid=1, version="v", queues=["default"], slots=1, now=None
    )
    # A worker that claimed the run and vanished: its lease runs out in 50 ms.
    (claimed,) = await test_store.claim_runs(
        db,
        worker_id=ghost["id"],
        queues=["default"],
        limit=1,
        lease_seconds=0.05,
        actor="ghost",
        now=None,
    )
    assert claimed["id"] == run["id"]
    async with running_worker(dsn, rescue_every_seconds=0.1):
        done = await _finished(db, run["id"])
    assert done["state"] == "succeeded" and done["attempt"] == 2
    telemetry.force_flush()
    points = receiver.received.metric_points()
    assert points["pgsched.runs.rescued"] == [({"result": "waiting"}, 1)]
    process = _one(receiver.received.spans(), kind=CONSUMER)
    assert process.attributes["pgsched.run.attempt"] == 2
    assert process.attributes["pgsched.run.outcome"] == "succeeded"


async def test_a_schedule_created_over_the_api_runs_in_a_trace_linked_to_its_tick(  # noqa: PLR0917
    db: Conn,
    dsn: str,
    telemetry: otel.Telemetry,
    receiver: Receiver,
    traced_api: AsyncTestClient[Litestar],
    role_tokens: Tokens,
) -> None:
    """API -> ticker -> worker in one go. The create request's trace ends at the schedule: a
    schedule makes runs for months, so each run's creator is the tick that materialised it."""
    reply = await traced_api.post(
        "/v1/schedules",
        json={"name": "e2e-once", "job_type": "noop", "run_at": datetime.now(UTC).isoformat()},
        headers=role_tokens.auth("admin"),
    )
    assert reply.status_code == 201, reply.text
    schedule_id = reply.json()["id"]
    tick, _ = default_loops(SystemClock())

    async def materialised() -> int | None:
        await tick.step(db)  # the service's tick, as `pgsched run` runs it
        cur = await db.execute("SELECT id FROM pgsched.run WHERE schedule_id = %s", [schedule_id])
        row = await cur.fetchone()
        return int(row["id"]) if row else None

    run_id: int = await wait_for(materialised, within=10)
    async with running_worker(dsn):
        run = await _finished(db, run_id)
    assert run["state"] == "succeeded"
    telemetry.force_flush()
    spans = receiver.received.spans()

    request = _one(spans, kind=SERVER)
    assert request.name == "POST /v1/schedules"
    db_spans = [s for s in spans if s.scope.startswith("opentelemetry.instrumentation.psycopg")]
    assert any(s.parent_span_id == request.span_id for s in db_spans), "the insert, traced"
    # The schedule.created event names the request's trace (an operator goes from the event to
    # the request); the schedule row holds no trace context, so the runs' creator is the tick.
    cur = await db.execute(
        "SELECT trace_id FROM pgsched.event WHERE stream = 'schedule' AND stream_id = %s"
        " AND type = 'schedule.created'",
        [schedule_id],
    )
    assert [r["trace_id"] for r in await cur.fetchall()] == [request.trace_id]

    made = _one(spans, name="tick")
    assert made.kind == PRODUCER and made.parent_span_id == ""
    assert made.attributes["pgsched.tick.runs_created"] == 1
    assert made.trace_id != request.trace_id
    assert run["trace_context"]["trace_id"] == made.trace_id, "the tick is the run's creator"

    process = _one(spans, kind=CONSUMER)
    claim = _one(spans, name="claim")
    assert process.parent_span_id == "" and process.trace_id not in (
        request.trace_id,
        made.trace_id,
    )
    assert sorted(process.links, key=lambda ln: str(ln[2])) == [
        (claim.trace_id, claim.span_id, {"pgsched.link": "claimed_by"}),
        (made.trace_id, made.span_id, {"pgsched.link": "created_by"}),
    ]
    assert process.attributes["pgsched.run.origin"] == "schedule"
    assert process.attributes["pgsched.schedule.id"] == schedule_id
    assert process.attributes["pgsched.schedule.name"] == "e2e-once"
    _assert_reported_in_a_batch(spans, process, db_spans)
    _assert_steps(spans, process, "succeeded")


async def test_backfilled_runs_link_to_the_request_that_made_them(  # noqa: PLR0917
    db: Conn,
    dsn: str,
    telemetry: otel.Telemetry,
    receiver: Receiver,
    traced_api: AsyncTestClient[Litestar],
    role_tokens: Tokens,
) -> None:
    s = await make_schedule(
        db,
        now=datetime.now(UTC),
        kind="cron",
        cron="* * * * *",
        interval_seconds=None,
        enabled=False,
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    await cover_last_month(db)  # the 3 minutes before `end` are last month's at 00:0x on the 1st
    reply = await traced_api.post(
        f"/v1/schedules/{s['id']}/backfill",
        json={"from": (end - timedelta(minutes=3)).isoformat(), "to": end.isoformat()},
        headers=role_tokens.auth("operator"),
    )
    assert reply.status_code == 200, reply.text
    run_ids = reply.json()["created"]
    assert len(run_ids) == 3
    async with running_worker(dsn, slots=4):
        runs = [await _finished(db, run_id) for run_id in run_ids]
    assert {r["state"] for r in runs} == {"succeeded"}
    telemetry.force_flush()
    spans = receiver.received.spans()

    request = _one(spans, kind=SERVER)
    assert request.name == "POST /v1/schedules/{schedule_id}/backfill"
    assert {r["trace_context"]["trace_id"] for r in runs} == {request.trace_id}
    processes = [x for x in spans if x.kind == CONSUMER]
    assert sorted(p.attributes["pgsched.run.id"] for p in processes) == sorted(run_ids)
    created_by = (request.trace_id, request.span_id, {"pgsched.link": "created_by"})
    for process in processes:
        assert process.parent_span_id == "", "a backfilled run starts its own trace"
        assert process.trace_id != request.trace_id
        assert created_by in process.links
        assert process.attributes["pgsched.run.origin"] == "backfill"
        assert process.attributes["pgsched.run.outcome"] == "succeeded"
        assert [name for name, _, _ in process.events] == ["claimed", "reported"]


SECRET = "crash-s3cr3t-4e1b"  # noqa: S105 - the value a crashing executor leaks into its error


@pytest.fixture
def secret_known() -> Iterator[str]:
    """The process knows SECRET as a secret value (as a worker with PGSCHED_SECRET_* does)."""
    set_redactor(Redactor.from_env({"PGSCHED_SECRET_CRASH": SECRET}))
    try:
        yield SECRET
    finally:
        set_redactor(Redactor())


async def test_an_executor_crash_is_recorded_on_the_span_masked(
    db: Conn, dsn: str, telemetry: otel.Telemetry, receiver: Receiver, secret_known: str
) -> None:
    """An executor that raises (a bug, not a job failure): the attempt's span records the
    exception (type, message, stack trace) with the secret masked, and its status is ERROR."""
    s = await make_schedule(db, now=datetime.now(UTC), enabled=False, max_attempts=1)
    run = (await schedules.trigger(db, s["id"], actor="t", now=None))[0]

    async def crashing(job_type: str, payload: Mapping[str, object], ctx: JobContext) -> Outcome:
        raise RuntimeError(f"cannot reach https://user:{secret_known}@example.invalid/")

    async with running_worker(dsn, executor=crashing):
        done = await _finished(db, run["id"])
    assert done["state"] == "dead"
    telemetry.force_flush()
    process = _one(receiver.received.spans(), kind=CONSUMER)
    assert [name for name, _, _ in process.events] == ["claimed", "exception", "reported"]
    ((_, exception, _),) = [e for e in process.events if e[0] == "exception"]
    assert exception["exception.type"] == "RuntimeError"
    assert exception["exception.message"] == f"cannot reach https://user:{MASK}@example.invalid/"
    stacktrace = exception["exception.stacktrace"]
    assert "Traceback" in stacktrace and "crashing" in stacktrace
    assert f"RuntimeError: cannot reach https://user:{MASK}@" in stacktrace
    assert process.status_code == STATUS_ERROR and process.attributes["error.type"] == "dead"
    assert process.attributes["pgsched.run.outcome"] == "dead"
    assert secret_known not in process.status_message
    assert not [body for body in receiver.received.raw if secret_known.encode() in body]
