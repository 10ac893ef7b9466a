"""The types every job type shares: what a job is given, what it returns, and text bounds.

This module owns :class:`JobContext` (built by the worker for one attempt), :class:`Outcome`
(what goes into ``run.outcome``), :class:`InvalidPayload` (a structural error naming the
field), and the helpers that keep stored text small and storable. It performs no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pgsched.workers.netguard import NetPolicy, Resolver

__all__ = [
    "MAX_ERROR_BYTES",
    "MAX_OUTPUT_BYTES",
    "InvalidPayload",
    "JobContext",
    "LeaseDeadline",
    "Outcome",
    "Status",
    "clip_head",
    "clip_tail",
    "lease_margin",
    "number",
    "one_line",
    "storable",
    "str_dict",
    "str_list",
    "timeout_error",
]

# 10 KB for outputs and response bodies (ADR 0012: a job cannot bloat run and event rows), in
# bytes of UTF-8 (what the jsonb holds).
MAX_OUTPUT_BYTES = 10_240
# Errors are "one line-ish": long enough for a SQLSTATE message or an HTTP mismatch, short
# enough that an event row stays small.
MAX_ERROR_BYTES = 2_048

Status = Literal["succeeded", "failed", "timeout", "cancelled"]


class InvalidPayload(ValueError):
    """A payload that can never run; ``field`` names where (``payload.argv[0]``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def lease_margin(lease_seconds: float) -> float:
    """How long before its lease could expire an attempt is stopped when it was not renewed.

    A tenth of the lease (3 s of the default 30 s), at least 0.25 s: room for the kill and the
    reaping, which take milliseconds. The lease is renewed every third of it, so two renewals
    can fail (or be late) before a job is stopped. At most a quarter of the lease, so that a
    lease shorter than a second (tests) still leaves its renewals room.
    """
    return min(max(lease_seconds / 10, 0.25), 5.0, lease_seconds / 4)


class LeaseDeadline:
    """When this attempt must stop unless its lease is renewed first (ADR 0020).

    ``expires`` is, on the worker clock's monotonic scale (``time.monotonic`` in production),
    the earliest instant the lease could expire in the database: the local time *before* the
    claim or renewal was sent, plus the lease. The database set the expiry from its own
    ``now()``, which is later, so this is never late. ``stop_at`` is that minus the margin.
    Job types that run outside the worker's process (``command``) subscribe to be told of
    each renewal; the worker stops in-process jobs itself.
    """

    __slots__ = ("_listeners", "expires", "margin", "now")

    def __init__(self, expires: float, margin: float, now: Callable[[], float]) -> None:
        self.expires = expires
        self.margin = margin
        self.now = now
        self._listeners: list[Callable[[float], None]] = []

    @property
    def stop_at(self) -> float:
        return self.expires - self.margin

    def renewed(self, expires: float) -> None:
        if expires <= self.expires:
            return  # a renewal sent earlier that came back later proves nothing new
        self.expires = expires
        for listener in list(self._listeners):
            listener(self.stop_at)

    def subscribe(self, listener: Callable[[float], None]) -> Callable[[], None]:
        """Call ``listener(stop_at)`` on each renewal; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)


@dataclass(frozen=True, slots=True)
class JobContext:
    """Everything a job needs besides its payload, for one attempt of one run.

    ``environ`` is where ``{"$secret": NAME}`` references resolve (the environment the worker
    was given; app.settings). ``database_url`` is the worker's own database, passed to a
    ``python`` target that declares it. ``resolver`` is for tests: ``None`` means the system
    resolver.
    ``lease`` is the attempt's lease deadline; ``None`` (tests, one-off calls) means no lease
    bounds the job, only its timeout.
    """

    run_id: int
    attempt: int
    schedule_name: str
    timeout_seconds: float
    database_url: str
    named_dsns: Mapping[str, str]
    http_policy: NetPolicy
    environ: Mapping[str, str]
    resolver: Resolver | None = None
    lease: LeaseDeadline | None = field(default=None, compare=False)

    @property
    def idempotency_key(self) -> str:
        """``run_id:attempt``: stable across a retry of the same attempt, new per attempt."""
        return f"{self.run_id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did. Built by the job types, bounded and masked by ``execute``."""

    status: Status
    retryable: bool
    error: str | None = None
    exit_code: int | None = None
    http_status: int | None = None
    output: str | None = None
    duration_ms: float = 0.0

    def as_json(self) -> dict[str, object]:
        """The ``run.outcome`` document. Every key is always present, so readers need no
        defaults; the texts were masked and clipped by ``execute`` before this is called."""
        return {
            "status": self.status,
            "retryable": self.retryable,
            "error": self.error,
            "exit_code": self.exit_code,
            "http_status": self.http_status,
            "output": self.output,
            "duration_ms": round(self.duration_ms, 3),
        }


def str_dict(value: object) -> dict[str, str]:
    """A validated, resolved object of strings (``env``, ``headers``) as a plain dict."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def str_list(value: object) -> list[str]:
    """A validated, resolved list of strings (``argv``) as a plain list."""
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return [str(item) for item in value]


def number(value: object, default: float) -> float:
    """A validated number, or ``default`` when absent."""
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def storable(text: str) -> str:
    """``text`` without NUL characters: jsonb (and text columns) cannot hold ``\\u0000``."""
    return text.replace("\x00", "\ufffd")


def one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) to single spaces."""
    return " ".join(text.split())


def _marker(dropped: int) -> str:
    return f"[... {dropped} bytes omitted ...]"


def clip_head(text: str, limit: int) -> str:
    """The first ``limit`` UTF-8 bytes of ``text`` (marker included), cut on a character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    marker = "\n" + _marker(len(raw) - limit)
    keep = max(0, limit - len(marker.encode()))
    return raw[:keep].decode(errors="ignore") + marker


def clip_tail(text: str, limit: int) -> str:
    """The last ``limit`` UTF-8 bytes of ``text`` (marker included), cut on a character."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    marker = _marker(len(raw) - limit) + "\n"
    keep = max(0, limit - len(marker.encode()))
    return marker + raw[len(raw) - keep :].decode(errors="ignore")


def timeout_error(seconds: float) -> str:
    return f"timed out after {seconds:g} s"
