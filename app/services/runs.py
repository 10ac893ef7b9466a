"""Runs: enqueueing them (ADR 0027), an operator's retry and cancel, a queue's limit.

Retry, cancel and the limit are one transaction each, through the store (the run's row and its
event together, ADR 0004); enqueue runs in the caller's transaction (below).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row
from pgsched.app.db.store.enqueue import AnyAsyncConn, AnySyncConn
from pgsched.app.domain.errors import InvalidDefinition, InvalidRequest, NotFound
from pgsched.app.domain.jobs import SECRET_KEY, InvalidPayload, validate_payload
from pgsched.app.domain.schedule import no_nul as _no_nul
from pgsched.otel import spans
from pgsched.otel.runs import log_transition

Meta = Mapping[str, object]


async def retry(
    conn: Conn, run_id: int, *, actor: str, now: datetime | None, meta: Meta
) -> Row | None:
    """A dead or cancelled run back to waiting, workers woken; None when the run is in neither
    state (the caller reads it to say which). Only an operator does this (ADR 0004)."""
    async with conn.transaction():
        row = await store.retry_run(conn, run_id, actor=actor, now=now, meta=meta)
        if row is not None:
            await store.wake_workers(conn)
            # A dead run retried is no longer an outcome: its schedule is judged without it.
            await store.health.evaluate(conn, [row["schedule_id"]], now=now)
    if row is not None:  # committed: the operator's transition in the per-run log (otel.runs)
        log_transition(
            "retried",
            {
                "run_id": row["id"],
                "schedule": row.get("schedule_name"),
                "schedule_id": row["schedule_id"],
                "attempt": row["attempt"],
                "queue": row["queue"],
                "actor": actor,
            },
        )
    return row


async def cancel(
    conn: Conn, run_id: int, *, actor: str, now: datetime | None, meta: Meta
) -> tuple[Row, Row | None]:
    """Cancel a waiting run, or ask a running one to stop: (the run before, the change), the
    change None when the run is neither waiting nor running. NotFound if there is no such run.
    The state it was in goes into the event's meta (`old`)."""
    async with conn.transaction():
        before = await store.reads.run_detail(conn, run_id)
        if before is None:
            raise NotFound(f"run {run_id} does not exist")
        row = await store.cancel_run(
            conn, run_id, actor=actor, now=now, meta={**meta, "old": {"state": before["state"]}}
        )
    if row is not None:  # committed: in the per-run log as retried is (ADR 0029)
        # A waiting or blocked run ends at once; a running one is only asked to stop, and its
        # worker logs `cancelled` when the attempt ends.
        log_transition(
            "cancelled" if row["state"] == "cancelled" else "cancel_requested",
            {
                "run_id": row["id"],
                "schedule": before["schedule_name"],
                "schedule_id": row["schedule_id"],
                "attempt": row["attempt"],
                "queue": row["queue"],
                "actor": actor,
            },
        )
    return before, row


async def set_queue_limit(
    conn: Conn, name: str, max_running: int | None, *, actor: str, now: datetime | None
) -> Row:
    """Limit how many runs of a queue run at once across all workers (None: unlimited)."""
    async with conn.transaction():
        return await store.set_queue_limit(conn, name, max_running, actor=actor, now=now)


# -- enqueue (ADR 0027) ---------------------------------------------------------------------
# A run with arguments of its own, made from a job definition (a schedule of kind `job`, or any
# schedule) in the CALLER's transaction: no transaction is opened or committed here, so the run
# and its event commit or roll back with whatever the caller writes beside them (with an
# autocommit connection, the statement is its own transaction). One statement, which locks
# nothing another enqueue waits for; with a cached definition, one round trip.

_SMALLINT = (-32768, 32767)
_MAX_KEY = 255
# The API's bounds for the same fields (app.api.schemas): a library caller gets what a client of
# the API would, not a database error in the middle of its transaction.
_MAX_QUEUE = 100
_MAX_ATTEMPTS = 100
_MAX_SECONDS = 366 * 86_400
# What an enqueue may give a run of each job type: its arguments. What runs (a python target, an
# http request's URL, method and headers, a command and its environment, a statement and its
# database) is the definition's, set by whoever may change definitions (the API's admins); an
# operator who may enqueue must not be able to turn a definition into other code or another
# request (ADR 0027).
ARGUMENT_KEYS: Mapping[str, frozenset[str]] = {
    "python": frozenset({"kwargs"}),
    "http": frozenset({"body"}),
    "sql": frozenset({"params"}),
    "command": frozenset(),
    "noop": frozenset(),
}
# How often a definition that changed between our read and our statement is read again.
_STALE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Definition:
    """What an enqueue is validated against: a live definition at one version, with the
    defaults its runs take (the statement writes only at this version, so they are the ones
    it writes)."""

    id: int
    name: str
    job_type: str
    payload: Mapping[str, object]
    version: int
    queue: str
    priority: int
    max_attempts: int

    @classmethod
    def of(cls, row: Row) -> Definition:
        return cls(
            row["id"],
            row["name"],
            row["job_type"],
            row["payload"],
            row["version"],
            row["queue"],
            row["priority"],
            row["max_attempts"],
        )


class Definitions:
    """Definitions read before, by the name or id they were asked for: one database's (a
    client's). A stale entry costs one more round trip, never a wrong run: the statement
    writes only at the version the payload was validated against (ADR 0027)."""

    def __init__(self) -> None:
        self._known: dict[str | int, Definition] = {}

    def get(self, job: str | int) -> Definition | None:
        return self._known.get(job)

    def put(self, job: str | int, definition: Definition) -> None:
        self._known[job] = definition

    def forget(self, job: str | int) -> None:
        self._known.pop(job, None)


@dataclass(frozen=True, slots=True)
class Item:
    """One run to enqueue; None takes the definition's. `payload` is merged over the
    definition's payload (top-level keys); `run_at` is when it may start (default now)."""

    payload: Mapping[str, object] | None = None
    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    idempotency_key: str | None = None


def _checked(definition: Definition, items: Sequence[Item]) -> list[dict[str, object]]:
    """The items as enqueue_runs takes them, each checked (InvalidRequest naming the field):
    the merged payload against the definition's job type, the overrides against the run
    table's rules. An item's field left to the definition is absent (the statement reads a
    missing key as NULL): less JSON to write and to parse."""
    keys = [i.idempotency_key for i in items if i.idempotency_key is not None]
    if len(set(keys)) != len(keys):
        raise InvalidRequest("idempotency_key", "must differ between the runs of one call")
    deep = _may_hold_nul_or_secret(items)
    checked: list[dict[str, object]] = []
    for item in items:
        _check_run_fields(item)
        sent: dict[str, object] = {}
        if item.payload is not None:
            sent["payload"] = _merged(definition, item.payload, deep=deep)
        if item.queue is not None:
            sent["queue"] = item.queue
        if item.priority is not None:
            sent["priority"] = item.priority
        if item.run_at is not None:
            sent["run_at"] = item.run_at
        if item.max_attempts is not None:
            sent["max_attempts"] = item.max_attempts
        if item.timeout_seconds is not None:
            sent["timeout_seconds"] = item.timeout_seconds
        if item.idempotency_key is not None:
            sent["key"] = item.idempotency_key
        checked.append(sent)
    return checked


def _may_hold_nul_or_secret(items: Sequence[Item]) -> bool:
    """Whether any item's payload may hold a NUL character or a secret reference. One C-speed
    serialisation of every payload, searched twice, instead of two Python walks of each
    (the walks were a fifth of a bulk enqueue's client time, ADR 0034): only when it finds
    either, or cannot serialise a payload, do the walks run, to refuse by name."""
    try:
        text = json.dumps([i.payload for i in items], default=_unserialisable)
    except (TypeError, ValueError):
        return True
    # ensure_ascii (the default) writes U+0000 as \u0000, in keys and values alike.
    return "\\u0000" in text or f'"{SECRET_KEY}"' in text


def _unserialisable(value: object) -> object:
    raise TypeError(type(value).__name__)


def _merged(
    definition: Definition, override: object, *, deep: bool = True
) -> dict[str, object] | None:
    """The run's payload: the definition's with the caller's arguments over it, checked as the
    job type checks a payload; None (the definition's, read at claim) without an override.
    `deep` False: the caller knows the override holds no NUL and no secret reference."""
    if override is None:
        return None
    if not isinstance(override, Mapping):
        raise InvalidRequest("payload", "must be an object")
    _arguments_only(definition.job_type, override, deep=deep)
    try:
        if deep:
            _no_nul(override, "payload")
        return validate_payload(definition.job_type, {**definition.payload, **override})
    except (InvalidPayload, InvalidDefinition) as exc:
        raise InvalidRequest(exc.field, exc.message) from exc


def _check_run_fields(item: Item) -> None:
    """The run's own columns, within the API's bounds for them."""
    if item.queue is not None:
        if not (isinstance(item.queue, str) and 1 <= len(item.queue) <= _MAX_QUEUE):
            raise InvalidRequest("queue", f"must be a string of 1 to {_MAX_QUEUE} characters")
        if "\x00" in item.queue:
            raise InvalidRequest("queue", "must not contain NUL characters")
    if item.priority is not None and not (
        _integer(item.priority) and _SMALLINT[0] <= item.priority <= _SMALLINT[1]
    ):
        raise InvalidRequest("priority", f"must be an integer in {list(_SMALLINT)}")
    if item.max_attempts is not None and not (
        _integer(item.max_attempts) and 1 <= item.max_attempts <= _MAX_ATTEMPTS
    ):
        raise InvalidRequest("max_attempts", f"must be an integer from 1 to {_MAX_ATTEMPTS}")
    if item.timeout_seconds is not None and not (
        isinstance(item.timeout_seconds, int | float)
        and not isinstance(item.timeout_seconds, bool)
        and 0 < item.timeout_seconds <= _MAX_SECONDS  # NaN and infinity fail here too
    ):
        raise InvalidRequest(
            "timeout_seconds", f"must be a number of seconds above 0, at most {_MAX_SECONDS}"
        )
    if item.run_at is not None and (
        not isinstance(item.run_at, datetime) or item.run_at.tzinfo is None
    ):
        raise InvalidRequest("run_at", "must be a datetime with a time zone")
    key = item.idempotency_key
    if key is not None:
        if not (isinstance(key, str) and 1 <= len(key) <= _MAX_KEY):
            raise InvalidRequest("idempotency_key", f"must be 1 to {_MAX_KEY} characters")
        if "\x00" in key:
            raise InvalidRequest("idempotency_key", "must not contain NUL characters")


def _no_month() -> InvalidRequest:
    # Runs live in monthly partitions made a few months ahead and retired after their
    # retention: a start time outside them is the caller's to change. The statement failed, so
    # the caller's transaction is aborted, as after any failed statement.
    return InvalidRequest(
        "run_at", "falls in a month the database keeps no runs for (too far ahead or back)"
    )


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _arguments_only(job_type: str, override: Mapping[str, object], *, deep: bool = True) -> None:
    """Refuse what an enqueue may not give a run: a key that says what runs, or a secret
    reference (resolved on the worker, it could be sent wherever the job sends its arguments;
    the definition names the secrets its job may use)."""
    allowed = ARGUMENT_KEYS.get(job_type, frozenset())
    for key in override:
        if key not in allowed:
            given = ", ".join(sorted(allowed)) or "nothing"
            raise InvalidRequest(
                f"payload.{key}",
                f"is the job definition's; enqueued runs of {job_type} jobs take only {given}",
            )
    if deep:
        _no_secret_refs(override, "payload")


def _no_secret_refs(value: object, field: str) -> None:
    if isinstance(value, Mapping):
        if SECRET_KEY in value:
            raise InvalidRequest(field, "secret references belong to the job definition")
        for key, inner in value.items():
            _no_secret_refs(inner, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for n, inner in enumerate(value):
            _no_secret_refs(inner, f"{field}[{n}]")


def _found(job: str | int, row: Row | None) -> Definition:
    if row is None:
        raise NotFound(f"job definition {job!r} does not exist")
    return Definition.of(row)


def _made(result: Sequence[Row]) -> tuple[bool, list[Row]]:
    """enqueue_runs' rows: whether the definition was current, and what it returned of each
    run it made (id, due_at, created_at, idempotency_key; in item order)."""
    return bool(result[0]["fresh"]), [r for r in result if r["id"] is not None]


def _run_row(
    definition: Definition,
    sent: Mapping[str, Any],
    made: Row,
    trace_context: Mapping[str, str] | None,
) -> Row:
    """The whole row enqueue_runs wrote, in the table's column order, from what the statement
    returned (what only it knew) and what it was sent: the same values as reading the row back
    (tests/db/test_enqueue.py compares them), without the database sending or the client
    decoding 24 columns per run (ADR 0034). The definition's defaults are the ones written,
    since the statement writes only at the version they were read at."""
    payload = sent.get("payload")
    timeout = sent.get("timeout_seconds")
    return {
        "id": made["id"],
        "schedule_id": definition.id,
        "due_at": made["due_at"],
        "adhoc": True,
        "origin": "enqueue",
        "state": "waiting",
        "queue": sent.get("queue", definition.queue),
        "priority": sent.get("priority", definition.priority),
        "available_at": made["due_at"],
        "attempt": 0,
        "max_attempts": sent.get("max_attempts", definition.max_attempts),
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": None,
        "started_at": None,
        "finished_at": None,
        "outcome": None,
        "cancel_requested": False,
        "idempotency_key": made["idempotency_key"],
        "trace_context": dict(trace_context) if trace_context else None,
        "created_at": made["created_at"],
        "payload": None if payload is None else {**definition.payload, **payload},
        "timeout_seconds": None if timeout is None else float(timeout),
        "occurrence": None,
        "waits_for": None,  # an enqueued run waits for no upstream (ADR 0033)
        "wait_until": None,
    }


def _pair(  # noqa: PLR0917
    definition: Definition,
    items: Sequence[Item],
    sent: Sequence[Mapping[str, Any]],
    made: Sequence[Row],
    earlier: Sequence[Row],
    trace_context: Mapping[str, str] | None,
) -> list[tuple[Row, bool]]:
    """(run, created) per item, in order: the runs made go to the items that made them (item
    order, which is id order), the earlier runs to the items whose key was taken."""
    new_keys = {r["idempotency_key"] for r in made if r["idempotency_key"] is not None}
    by_key = {r["idempotency_key"]: r for r in earlier}
    fresh = iter(made)
    paired = []
    for item, its in zip(items, sent, strict=True):
        key = item.idempotency_key
        if key is None or key in new_keys:
            paired.append((_run_row(definition, its, next(fresh), trace_context), True))
        elif key in by_key:
            paired.append((by_key[key], False))
        else:  # the key's run was in a month since retired
            raise InvalidRequest("idempotency_key", f"{key!r} was used for a run no longer kept")
    return paired


def _taken_keys(items: Sequence[Item], made: Sequence[Row]) -> list[str]:
    new_keys = {r["idempotency_key"] for r in made}
    return [
        i.idempotency_key
        for i in items
        if i.idempotency_key is not None and i.idempotency_key not in new_keys
    ]


# One enqueue, written once: `_flow` decides and yields the statements it needs; the async and
# the sync entry points below only run them, each with its own kind of connection (the sync
# client needs no event loop, ADR 0027).


@dataclass(frozen=True, slots=True)
class _Read:
    """Read the live definition `job` (its row, or None)."""

    job: str | int


@dataclass(frozen=True, slots=True)
class _Write:
    """enqueue_runs: the checked items, only while the definition has this version."""

    definition: Definition
    items: list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class _Earlier:
    """The runs made earlier under these keys of the definition."""

    schedule_id: int
    keys: list[str]


_Flow = Generator[_Read | _Write | _Earlier, Any, list[tuple[Row, bool]]]


def _flow(
    cache: Definitions,
    job: str | int,
    items: Sequence[Item],
    trace_context: Mapping[str, str] | None,
) -> _Flow:
    """Check the items against the definition (cached, or read), write them in one statement,
    and pair each item with its run (made, or earlier under its key). A definition that changed
    since it was cached is read again: after the statement found it stale, and before a refusal
    decided on the cached one."""
    for _ in range(_STALE_RETRIES):
        definition = cache.get(job)
        cached = definition is not None
        if definition is None:
            definition = _found(job, (yield _Read(job)))
            cache.put(job, definition)
        try:
            checked = _checked(definition, items)
        except InvalidRequest:
            if not cached:
                raise
            # Checked against a definition read earlier, the refusal may be its old job type's
            # or payload's: decide again on a fresh read (a refusal costs one read).
            cache.forget(job)
            continue
        fresh, made = _made((yield _Write(definition, checked)))
        if fresh:
            taken = _taken_keys(items, made)
            earlier = (yield _Earlier(definition.id, taken)) if taken else []
            return _pair(definition, items, checked, made, earlier, trace_context)
        cache.forget(job)  # changed or deleted since it was read: read it again
    raise RuntimeError(f"job definition {job!r} changed on every one of {_STALE_RETRIES} tries")


async def enqueue_items(
    conn: AnyAsyncConn,
    job: str | int,
    items: Sequence[Item],
    *,
    actor: str,
    now: datetime | None = None,
    meta: Meta | None = None,
    trace_context: Mapping[str, str] | None = None,
    definitions: Definitions | None = None,
) -> list[tuple[Row, bool]]:
    """Enqueue `items` to the definition `job` (a name or an id): (run, created) per item. An
    item whose idempotency key the definition already has gets the earlier run and False.

    NotFound when no live definition has that name or id; InvalidRequest naming the field for
    a payload the job type refuses or an override the run cannot take."""
    if not items:
        return []
    trace_context = trace_context or spans.trace_context()  # the enqueuer's span (ADR 0016)
    flow = _flow(
        definitions if definitions is not None else Definitions(), job, items, trace_context
    )
    answer: Any = None
    try:
        while True:
            step = flow.send(answer)
            if isinstance(step, _Read):
                answer = await store.enqueue.job_definition(conn, step.job)
            elif isinstance(step, _Write):
                answer = await store.enqueue.enqueue_runs(
                    conn,
                    step.definition.id,
                    step.definition.version,
                    step.items,
                    actor=actor,
                    now=now,
                    trace_context=trace_context,
                    meta=meta,
                )
            else:
                answer = await store.enqueue.runs_by_key(conn, step.schedule_id, step.keys)
    except StopIteration as done:
        result: list[tuple[Row, bool]] = done.value
        return result
    except store.PartitionMissing:
        raise _no_month() from None


def enqueue_items_sync(
    conn: AnySyncConn,
    job: str | int,
    items: Sequence[Item],
    *,
    actor: str,
    now: datetime | None = None,
    meta: Meta | None = None,
    trace_context: Mapping[str, str] | None = None,
    definitions: Definitions | None = None,
) -> list[tuple[Row, bool]]:
    """enqueue_items through a sync connection: the same statements, no event loop."""
    if not items:
        return []
    trace_context = trace_context or spans.trace_context()
    flow = _flow(
        definitions if definitions is not None else Definitions(), job, items, trace_context
    )
    answer: Any = None
    try:
        while True:
            step = flow.send(answer)
            if isinstance(step, _Read):
                answer = store.enqueue.job_definition_sync(conn, step.job)
            elif isinstance(step, _Write):
                answer = store.enqueue.enqueue_runs_sync(
                    conn,
                    step.definition.id,
                    step.definition.version,
                    step.items,
                    actor=actor,
                    now=now,
                    trace_context=trace_context,
                    meta=meta,
                )
            else:
                answer = store.enqueue.runs_by_key_sync(conn, step.schedule_id, step.keys)
    except StopIteration as done:
        result: list[tuple[Row, bool]] = done.value
        return result
    except store.PartitionMissing:
        raise _no_month() from None


async def enqueue(
    conn: AnyAsyncConn,
    job: str | int,
    *,
    payload: Mapping[str, object] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    idempotency_key: str | None = None,
    actor: str,
    now: datetime | None = None,
    meta: Meta | None = None,
    trace_context: Mapping[str, str] | None = None,
    definitions: Definitions | None = None,
) -> tuple[Row, bool]:
    """Enqueue one run of `job` in the caller's transaction: (run, created)."""
    item = Item(payload, queue, priority, run_at, max_attempts, timeout_seconds, idempotency_key)
    ((run, created),) = await enqueue_items(
        conn,
        job,
        [item],
        actor=actor,
        now=now,
        meta=meta,
        trace_context=trace_context,
        definitions=definitions,
    )
    return run, created


async def enqueue_many(
    conn: AnyAsyncConn,
    job: str | int,
    items: Sequence[Item],
    *,
    actor: str,
    now: datetime | None = None,
    meta: Meta | None = None,
    definitions: Definitions | None = None,
) -> list[Row]:
    """Enqueue many runs of `job` in one statement, in the caller's transaction: the run per
    item, in order (an earlier one for a key already taken)."""
    paired = await enqueue_items(
        conn, job, items, actor=actor, now=now, meta=meta, definitions=definitions
    )
    return [run for run, _ in paired]
