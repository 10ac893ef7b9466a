"""Spans and metrics of a run's life: the tick that made it, the claim, the attempt, its end.

Called from a few lines in `workers/worker.py`, `app/ticker.py` and `app/service.py`; all the
logic is here so those hot paths stay readable.

Trace structure (ADR 0016):
- A tick is a root span `tick`; the runs it creates store its context (`run.trace_context`).
  An API trigger or backfill stores the request's context the same way (app/db/store/runs.py).
- A claim is a root span `claim` (messaging `receive`), one per claim transaction.
- Each attempt is a CONSUMER span `process <queue>` from the claim's start to the report. For
  a run triggered over the API it is a *child* of the request's span, so one trace shows
  trigger, claim, execution and completion; for runs made by the ticker or a backfill it starts
  its own trace and *links* to the tick or request (a tick makes many runs, minutes to months
  ahead; one trace per tick would be unreadable). It always links to its claim span.
- Claims and reports are batches, so they are root spans joined to the attempts by links (the
  messaging conventions' batch pattern). The attempt's own trace still shows each step as a
  span event on `process <queue>`: `claimed` (with the claim's batch size), `exception` (the
  executor raised) and `reported` (outcome, the report's batch size and its trace id).
- Idle ticks and claims are dropped before export (`otel.spans.IdleFilter`).

Log lines (an operator's `tail -f`, seed of every collector's per-job view): one per run
transition on the logger `pgsched.runs` (claimed, succeeded, failed, cancelled, released at
INFO; dead, fenced, unreported and rescued at WARNING, the ones that need a look), each with
`run_id`, `schedule`, `schedule_id`, `attempt`, `queue`, `outcome` and, for an attempt's end,
`duration_ms`; one per tick on `pgsched.ticks` (INFO when it made or missed runs, DEBUG when
idle: two tickers tick twice a second). Never a payload; an error text is bounded, and masked
like every line (otel.logs). `PGSCHED_RUN_LOG_LEVEL` sets both loggers' level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, Status, StatusCode

from pgsched.otel import spans
from pgsched.otel.logs import LOG_FIELDS, redact
from pgsched.otel.setup import PoolLike, current

T = TypeVar("T")

# Outcomes that mean the attempt did not do its job (span status ERROR).
_ERRORS = frozenset({"failed", "dead", "fenced", "unreported"})
_MAX_STATUS_TEXT = 256
_MAX_STACKTRACE = 8192
_MAX_LOGGED_ERROR = 200

run_log = logging.getLogger("pgsched.runs")
tick_log = logging.getLogger("pgsched.ticks")
# Outcomes an operator should look at: logged at WARNING, the rest at INFO.
_ALARMING = frozenset({"dead", "fenced", "unreported", "rescued"})


class LeaseLike(Protocol):
    @property
    def run_id(self) -> int: ...
    @property
    def attempt(self) -> int: ...


@dataclass(slots=True)
class _Claim:
    queues: tuple[str, ...]
    claimed: int = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    """What `claimed` knows of a run until `run_scope` makes its span."""

    claim: trace.SpanContext
    claim_start_ns: int | None  # the attempt's span starts with its claim
    claimed_ns: int  # when the claim returned the run: the `claimed` event
    batch: int  # runs that claim took


@dataclass(slots=True)
class _Attempt:
    span: Span
    queue: str
    job_type: str
    started: float
    schedule: str | None = None
    schedule_id: int | None = None
    status: str | None = None
    error: str | None = None
    retry_at: object = None  # a failed attempt's next try (the run's available_at)
    fenced_reason: str = "completion"
    # Of the last `report` span that carried this attempt's result (for the `reported` event).
    report_batch: int = 0
    report_trace_id: str = ""


@dataclass(slots=True)
class _State:
    # run id -> its claim, from `claimed` to `run_scope`.
    pending: dict[int, _Pending] = field(default_factory=dict)
    attempts: dict[tuple[int, int], _Attempt] = field(default_factory=dict)


_state = _State()
_claim: ContextVar[_Claim | None] = ContextVar("pgsched_claim", default=None)


# -- the log lines ---------------------------------------------------------------------------


def log_transition(outcome: str, fields: Mapping[str, Any]) -> None:
    """One line on `pgsched.runs`: `run <outcome>` with the run's identifiers in `fields`."""
    level = logging.WARNING if outcome in _ALARMING else logging.INFO
    if run_log.isEnabledFor(level):  # nothing is built for a line nobody reads
        extra = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()}
        run_log.log(level, "run %s", outcome, extra={**extra, "outcome": outcome})


def _bounded(error: str | None) -> str | None:
    return None if error is None else redact(error)[:_MAX_LOGGED_ERROR]


# -- the worker ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def claiming(
    connection: AbstractAsyncContextManager[T], queues: Sequence[str]
) -> AsyncIterator[T]:
    """`async with claiming(pool.connection(), queues) as conn:` — the claim's span and timing."""
    tel = current()
    holder = _Claim(tuple(queues))
    token = _claim.set(holder)
    started = time.perf_counter()
    attributes: dict[str, Any] = {
        spans.MESSAGING_SYSTEM_KEY: spans.MESSAGING_SYSTEM,
        spans.OPERATION_TYPE: "receive",
        spans.OPERATION_NAME: "claim",
    }
    if len(queues) == 1:
        attributes[spans.DESTINATION] = queues[0]
    try:
        with tel.tracer.start_as_current_span(
            spans.CLAIM, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            async with connection as conn:
                yield conn
            span.set_attribute(spans.BATCH_COUNT, holder.claimed)
            if holder.claimed == 0:
                span.set_attribute(spans.IDLE, True)
    finally:
        _claim.reset(token)
        tel.histogram("pgsched.claim.duration").record(
            time.perf_counter() - started, {"result": "claimed" if holder.claimed else "empty"}
        )


def claimed(rows: Sequence[Mapping[str, Any]]) -> None:
    """Inside `claiming`: the runs this claim took (lag, counts, the claim span for links)."""
    tel = current()
    holder = _claim.get()
    if holder is not None:
        holder.claimed += len(rows)
    span = trace.get_current_span()
    start = getattr(span, "start_time", None)
    span_context = span.get_span_context()
    claimed_ns = time.time_ns()
    lag = tel.histogram("pgsched.scheduler.lag")
    per_queue: dict[str, int] = {}
    for row in rows:
        queue = str(row["queue"])
        per_queue[queue] = per_queue.get(queue, 0) + 1
        if row["attempt"] == 1 and row.get("started_at") and row.get("due_at"):
            lag.record(
                max(0.0, (row["started_at"] - row["due_at"]).total_seconds()), {"queue": queue}
            )
        if span_context.is_valid:
            _state.pending[int(row["id"])] = _Pending(span_context, start, claimed_ns, len(rows))
    # One add per queue and claim, not per run: each instrument call costs ~10 µs.
    count = tel.counter("pgsched.runs.claimed")
    for queue, n in per_queue.items():
        count.add(n, {"queue": queue})


@contextlib.contextmanager
def run_scope(row: Mapping[str, Any]) -> Iterator[None]:
    """Around `asyncio.create_task(...)` for a claimed run: the task inherits the attempt's
    span and log fields (a task copies the context it is created in)."""
    tel = current()
    run_id, attempt = int(row["id"]), int(row["attempt"])
    queue, job_type = str(row["queue"]), str(row.get("job_type") or "unknown")
    pending = _state.pending.pop(run_id, None)
    creator = spans.creator_context(row.get("trace_context"))
    parent = otel_context.Context()  # a new trace, unless the creator was an API trigger
    links: list[Link] = []
    if creator is not None and row.get("origin") == "trigger":
        parent = trace.set_span_in_context(NonRecordingSpan(creator), parent)
    elif creator is not None:
        links.append(Link(creator, {"pgsched.link": "created_by"}))
    if pending is not None:
        links.append(Link(pending.claim, {"pgsched.link": "claimed_by"}))
    span = tel.tracer.start_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        start_time=pending.claim_start_ns if pending is not None else None,
        attributes={
            spans.MESSAGING_SYSTEM_KEY: spans.MESSAGING_SYSTEM,
            spans.OPERATION_TYPE: "process",
            spans.DESTINATION: queue,
            spans.MESSAGE_ID: str(run_id),
            spans.RUN_ID: run_id,
            spans.SCHEDULE_ID: int(row["schedule_id"]),
            spans.SCHEDULE_NAME: str(row.get("schedule_name") or ""),
            spans.QUEUE: queue,
            spans.ATTEMPT: attempt,
            spans.ORIGIN: str(row.get("origin") or ""),
            spans.JOB_TYPE: job_type,
        },
    )
    if pending is not None:
        span.add_event(
            spans.CLAIMED, {spans.BATCH_COUNT: pending.batch}, timestamp=pending.claimed_ns
        )
    schedule = row.get("schedule_name")
    schedule_id = int(row["schedule_id"])
    _state.attempts[(run_id, attempt)] = _Attempt(
        span, queue, job_type, time.perf_counter(), schedule, schedule_id
    )
    tel.gauge("pgsched.worker.inflight").set(len(_state.attempts))
    log_transition(
        "claimed",
        {
            "run_id": run_id,
            "schedule": schedule,
            "schedule_id": schedule_id,
            "attempt": attempt,
            "queue": queue,
            "origin": row.get("origin"),
        },
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    fields = LOG_FIELDS.set(
        {
            "run_id": run_id,
            "schedule": row.get("schedule_name"),
            "queue": queue,
            "attempt": attempt,
        }
    )
    try:
        yield
    finally:
        LOG_FIELDS.reset(fields)
        otel_context.detach(token)


@contextlib.contextmanager
def reporting(leases: Sequence[LeaseLike]) -> Iterator[None]:
    """Around the statement that records a batch of results: a root span `report` (messaging
    `settle`) with a link to each attempt's span, the way a batch receive links its messages.
    The attempt spans stay open until their result is recorded, so each still covers claim to
    completion; the completion statement itself sits under this span, shared by the batch.
    Each attempt remembers the batch (size, trace id) for its `reported` event."""
    tel = current()
    attempts = [
        attempt
        for lease in leases
        if (attempt := _state.attempts.get((lease.run_id, lease.attempt))) is not None
    ]
    links = [Link(a.span.get_span_context(), {"pgsched.link": "reports"}) for a in attempts]
    token = otel_context.attach(otel_context.Context())  # a root, whoever sends the batch
    try:
        with tel.tracer.start_as_current_span(
            spans.REPORT,
            kind=SpanKind.CLIENT,
            links=links,
            attributes={
                spans.MESSAGING_SYSTEM_KEY: spans.MESSAGING_SYSTEM,
                spans.OPERATION_TYPE: "settle",
                spans.OPERATION_NAME: "complete",
                spans.BATCH_COUNT: len(leases),
            },
        ) as span:
            report_context = span.get_span_context()
            if report_context.is_valid:  # a retry or a one-by-one resend overwrites these
                trace_id = format(report_context.trace_id, "032x")
                for attempt in attempts:
                    attempt.report_batch, attempt.report_trace_id = len(leases), trace_id
            yield
    finally:
        otel_context.detach(token)


def reported(
    lease: LeaseLike, status: str, error: str | None, row: Mapping[str, Any] | None
) -> None:
    """The attempt's report was recorded (`row`: the run after it; None: fenced): its outcome,
    and the `reported` event on its span (which report batch recorded it)."""
    attempt = _state.attempts.get((lease.run_id, lease.attempt))
    if attempt is None:
        return
    if row is None:
        attempt.status = "fenced"
    elif status in ("succeeded", "cancelled"):
        attempt.status = status
    else:
        attempt.status = "dead" if row.get("state") == "dead" else "failed"
        attempt.retry_at = row.get("available_at") if attempt.status == "failed" else None
    attempt.error = error
    if attempt.report_trace_id:
        attempt.span.add_event(
            spans.REPORTED,
            {
                spans.OUTCOME: attempt.status,
                spans.BATCH_COUNT: attempt.report_batch,
                spans.REPORT_TRACE_ID: attempt.report_trace_id,
            },
        )


def stopped(lease: LeaseLike, reason: str | None, *, fenced: bool = False) -> None:
    """The attempt was stopped before it finished (shutdown, cancel request, lease lost).
    `fenced`: its release or cancel was refused because the lease was no longer held, counted
    like a fenced completion (reason release or cancel)."""
    attempt = _state.attempts.get((lease.run_id, lease.attempt))
    if attempt is None:
        return
    if reason == "shutdown" and not fenced:
        attempt.status = "released"
    elif reason == "cancel_requested" and not fenced:
        attempt.status = "cancelled"
    elif reason in ("shutdown", "cancel_requested"):
        attempt.status = "fenced"
        attempt.fenced_reason = "release" if reason == "shutdown" else "cancel"
        attempt.error = f"{attempt.fenced_reason} refused: the lease was no longer held"
    else:
        attempt.status, attempt.fenced_reason = "fenced", "lease_lost"
        attempt.error = "lease lost while running"


def failed(lease: LeaseLike, exc: BaseException) -> None:
    """The executor raised (a bug, not a job failure): recorded on the span, masked. The SDK
    puts the message into `exception.stacktrace` too, so both are masked (then bounded: the
    trace's last lines, where the exception is, are kept)."""
    attempt = _state.attempts.get((lease.run_id, lease.attempt))
    if attempt is not None and attempt.span.is_recording():
        stacktrace = "".join(traceback.format_exception(exc))
        attempt.span.record_exception(
            exc,
            attributes={
                "exception.message": redact(str(exc))[:_MAX_STATUS_TEXT],
                "exception.stacktrace": redact(stacktrace)[-_MAX_STACKTRACE:],
            },
        )


def ended(lease: LeaseLike) -> None:
    """The attempt's task is done: end its span, count it."""
    tel = current()
    attempt = _state.attempts.pop((lease.run_id, lease.attempt), None)
    tel.gauge("pgsched.worker.inflight").set(len(_state.attempts))
    if attempt is None:
        return
    status = attempt.status or "unreported"
    duration = time.perf_counter() - attempt.started
    line: dict[str, Any] = {
        "run_id": lease.run_id,
        "schedule": attempt.schedule,
        "schedule_id": attempt.schedule_id,
        "attempt": lease.attempt,
        "queue": attempt.queue,
        "duration_ms": round(duration * 1000, 3),
    }
    if status in _ERRORS:
        line["error"] = _bounded(attempt.error)
    if attempt.retry_at is not None:
        line["retry_at"] = attempt.retry_at
    log_transition(status, line)
    span = attempt.span
    span.set_attribute(spans.OUTCOME, status)
    if status in _ERRORS:
        text = redact(attempt.error or status)[:_MAX_STATUS_TEXT]
        span.set_status(Status(StatusCode.ERROR, text))
        span.set_attribute("error.type", status)
    labels = {"queue": attempt.queue, "job_type": attempt.job_type}
    tel.counter("pgsched.jobs.processed").add(1, {**labels, "status": status})
    tel.histogram("pgsched.job.duration").record(duration, {**labels, "status": status})
    if status == "dead":
        tel.counter("pgsched.runs.dead").add(1, {"queue": attempt.queue})
    if status == "fenced":
        tel.counter("pgsched.completions.fenced").add(1, {"reason": attempt.fenced_reason})
    span.end()


def rescued(rows: Sequence[Mapping[str, Any]]) -> None:
    """Runs whose lease expired (their worker went silent): back to waiting, or dead."""
    tel = current()
    for row in rows:
        state = str(row["state"])
        log_transition(
            "rescued",
            {
                "run_id": row["id"],
                "schedule": row.get("schedule_name"),
                "schedule_id": row["schedule_id"],
                "attempt": row["attempt"],
                "queue": row["queue"],
                "state": state,  # waiting (retried after the backoff) or dead
                "retry_at": row["available_at"] if state == "waiting" else None,
            },
        )
        tel.counter("pgsched.runs.rescued").add(1, {"result": state})
        if state == "dead":
            tel.counter("pgsched.runs.dead").add(1, {"queue": str(row["queue"])})


def watch_pool(name: str, pool: PoolLike) -> None:
    """Report `pool`'s usage as pgsched.db.pool.connections{pool=name}."""
    current().watch_pool(name, pool)


def heartbeat() -> None:
    current().gauge("pgsched.worker.heartbeat.timestamp").set(time.time())


# -- the ticker ------------------------------------------------------------------------------


class TickLike(Protocol):
    @property
    def schedules(self) -> int: ...
    @property
    def created(self) -> int: ...
    @property
    def missed(self) -> int: ...
    @property
    def overlapped(self) -> int: ...
    @property
    def blocked(self) -> int: ...
    @property
    def released(self) -> int: ...
    @property
    def skipped(self) -> int: ...


@dataclass(slots=True)
class Tick:
    result: TickLike | None = None

    def done(self, result: TickLike) -> None:
        self.result = result


@contextlib.contextmanager
def ticking() -> Iterator[Tick]:
    """`with ticking() as tick: tick.done(await ticker.tick(...))` — the tick's span and metrics.
    Runs created inside store this span's context (`trace_context_json`)."""
    tel = current()
    holder = Tick()
    started = time.perf_counter()
    token = otel_context.attach(otel_context.Context())  # a tick is a root, whatever called it
    try:
        with tel.tracer.start_as_current_span(
            spans.TICK,
            kind=SpanKind.PRODUCER,
            attributes={
                spans.MESSAGING_SYSTEM_KEY: spans.MESSAGING_SYSTEM,
                spans.OPERATION_TYPE: "send",
            },
        ) as span:
            yield holder
            result = holder.result
            if result is not None:
                span.set_attribute(spans.SCHEDULES, result.schedules)
                span.set_attribute(spans.RUNS_CREATED, result.created)
                span.set_attribute(spans.BATCH_COUNT, result.created)
                span.set_attribute(spans.RUNS_MISSED, result.missed)
                span.set_attribute(spans.RUNS_OVERLAPPED, result.overlapped)
                busy = result.created or result.missed or result.overlapped
                if not (busy or result.released or result.skipped):
                    span.set_attribute(spans.IDLE, True)
    finally:
        otel_context.detach(token)
        elapsed = time.perf_counter() - started
        tel.histogram("pgsched.ticker.tick.duration").record(elapsed)
    result = holder.result
    if result is not None:
        _log_tick(result, elapsed)
        tel.gauge("pgsched.ticker.last_tick.timestamp").set(time.time())
        if result.created:
            tel.counter("pgsched.runs.created").add(result.created)
        if result.missed:
            tel.counter("pgsched.occurrences.missed").add(result.missed, {"reason": "late"})
        if result.overlapped:
            tel.counter("pgsched.occurrences.missed").add(result.overlapped, {"reason": "overlap"})
        for decision in ("blocked", "released", "skipped"):  # schedule dependencies (ADR 0033)
            if count := getattr(result, decision):
                tel.counter("pgsched.runs.dependency").add(count, {"decision": decision})


def _log_tick(result: TickLike, elapsed: float) -> None:
    # A tick that only released or skipped dependency runs (ADR 0033) changed runs: not idle.
    busy = result.created or result.missed or result.overlapped or result.released or result.skipped
    level = logging.INFO if busy else logging.DEBUG
    if tick_log.isEnabledFor(level):
        tick_log.log(
            level,
            "tick",
            extra={
                # Not `created`: a LogRecord attribute of its own.
                "schedules": result.schedules,
                "runs_created": result.created,
                "runs_missed": result.missed,
                "runs_overlapped": result.overlapped,
                "runs_released": result.released,
                "runs_skipped": result.skipped,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )


def trace_context_json() -> str | None:
    """The current span's context as a `::jsonb` parameter for a run row (None: SQL NULL)."""
    carrier = spans.trace_context()
    return json.dumps(carrier) if carrier else None
