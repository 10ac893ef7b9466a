"""Span names, attribute keys, trace context on the run row, and the idle-trace filter.

Messaging conventions (OpenTelemetry semantic conventions, messaging, incubating): a run is a
message, its queue the destination. The ticker's tick and the API's request are the creation
context; the worker's claim is `receive`; each run's attempt is one CONSUMER span
`process <queue>` from its claim to its report.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

MESSAGING_SYSTEM: Final = "pgsched"  # no registered value for a PostgreSQL queue; custom is allowed

# Span names.
TICK: Final = "tick"
CLAIM: Final = "claim"
REPORT: Final = "report"

# Span events on an attempt's `process <queue>` span (its steps, in its own trace).
CLAIMED: Final = "claimed"
REPORTED: Final = "reported"

# Attribute keys (messaging.* from the semantic conventions; pgsched.* are ours).
MESSAGING_SYSTEM_KEY: Final = "messaging.system"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
DESTINATION: Final = "messaging.destination.name"
MESSAGE_ID: Final = "messaging.message.id"
BATCH_COUNT: Final = "messaging.batch.message_count"
CONSUMER_GROUP: Final = "messaging.consumer.group.name"
RUN_ID: Final = "pgsched.run.id"
SCHEDULE_ID: Final = "pgsched.schedule.id"
SCHEDULE_NAME: Final = "pgsched.schedule.name"
QUEUE: Final = "pgsched.queue"
ATTEMPT: Final = "pgsched.run.attempt"
ORIGIN: Final = "pgsched.run.origin"
JOB_TYPE: Final = "pgsched.job.type"
OUTCOME: Final = "pgsched.run.outcome"
WORKER_ID: Final = "pgsched.worker.id"
REPORT_TRACE_ID: Final = "pgsched.report.trace_id"
RUNS_CREATED: Final = "pgsched.tick.runs_created"
RUNS_MISSED: Final = "pgsched.tick.occurrences_missed"
RUNS_OVERLAPPED: Final = "pgsched.tick.occurrences_overlapped"
SCHEDULES: Final = "pgsched.tick.schedules"
# Set on a root span that did nothing worth keeping (an empty tick or claim): see IdleFilter.
IDLE: Final = "pgsched.idle"


def trace_context() -> dict[str, str] | None:
    """The current span's context as stored on a run row (`run.trace_context`), or None.

    `traceparent` (and `tracestate`) are the W3C carrier; `trace_id` is what the run's events
    copy into `event.trace_id`, so an operator can go from an event to its trace.
    """
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if "traceparent" not in carrier:  # a propagator configured without tracecontext
        return None
    carrier["trace_id"] = format(span_context.trace_id, "032x")
    return carrier


def creator_context(stored: Mapping[str, object] | None) -> trace.SpanContext | None:
    """The span context of whatever created a run, from its stored carrier (None if absent)."""
    if not stored:
        return None
    carrier = {k: str(v) for k, v in stored.items() if k in ("traceparent", "tracestate")}
    if "traceparent" not in carrier:
        return None
    span_context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, for log lines."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def detached() -> object:
    """Start from an empty context (a new root): returns the token for `otel_context.detach`."""
    return otel_context.attach(otel_context.Context())


class IdleFilter(SpanProcessor):
    """Drops what a quiet scheduler would otherwise export every second.

    The ticker ticks twice a second and an idle worker polls every second; each would make a
    root span with database children that say "nothing to do". Traces rooted in a tick or a
    claim are held back until the root ends and dropped when it is marked `pgsched.idle`.
    Database spans with no parent at all (heartbeats, rescue sweeps, the metrics sampler) are
    dropped too: they belong to no run, and so are the pool's empty connection checks.
    Everything else passes straight to `delegate`.
    """

    HELD_ROOTS: Final = frozenset({TICK, CLAIM})
    _MAX_HELD: Final = 512  # per trace; beyond it, spans pass through (never unbounded memory)

    def __init__(self, delegate: SpanProcessor) -> None:
        self._delegate = delegate
        self._held: dict[int, list[ReadableSpan]] = {}
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        if span.parent is None and span.name in self.HELD_ROOTS:
            with self._lock:
                self._held[span.context.trace_id] = []
        self._delegate.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if _is_db_span(span) and not (span.attributes or {}).get("db.statement"):
            return  # the pool's connection check (an empty statement): one per checkout, no news
        trace_id = span.context.trace_id if span.context else 0
        with self._lock:
            held = self._held.get(trace_id)
            if held is not None and span.parent is None:
                del self._held[trace_id]
                if (span.attributes or {}).get(IDLE):
                    return
                release = [*held, span]
            elif held is not None and len(held) < self._MAX_HELD:
                held.append(span)
                return
            elif span.parent is None and _is_db_span(span):
                return
            else:
                release = [span]
        for item in release:
            self._delegate.on_end(item)

    def shutdown(self) -> None:
        self._delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._delegate.force_flush(timeout_millis)


def _is_db_span(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    return scope is not None and scope.name.startswith("opentelemetry.instrumentation.psycopg")
