"""/v1/runs: the runs of every schedule (viewer); enqueue, retry and cancel (operator)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import BodyKwarg, HeaderParameter, QueryParameter

from pgsched.app.api import cursors
from pgsched.app.api.auth import audit
from pgsched.app.api.common import (
    DEFAULT_PAGE,
    OPERATOR,
    VIEWER,
    Cursor,
    Limit,
    PathId,
    QueueFilter,
    ScheduleIdFilter,
    aware,
    clock_now,
    page_size,
)
from pgsched.app.api.problems import ApiError, FieldError, responses
from pgsched.app.api.schemas import (
    Attempt,
    Event,
    EventPage,
    Run,
    RunCreate,
    RunDetail,
    RunPage,
    RunState,
    run_out,
)
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.domain.errors import InvalidRequest, NotFound
from pgsched.app.services import runs

TAGS = ["runs"]
# Events that end an attempt, and what the attempt's `result` says.
_ENDINGS = {
    "run.succeeded": "succeeded",
    "run.retry_scheduled": "failed",
    "run.dead": "dead",
    "run.rescued": "lease_expired",
    "run.released": "released",
    "run.cancelled": "cancelled",
}


# A lease token is the running worker's proof that it still holds an attempt: the database
# fences every report by it (ADR 0013). The events keep it (replay folds it back), but nothing
# over the API uses it, so no reader, whatever its role, is handed one.
_WITHHELD = frozenset({"lease_token"})


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _WITHHELD}


def event_out(row: Row) -> Event:
    """An event as the API shows it: lease tokens withheld (see _WITHHELD)."""
    return Event(
        id=row["id"],
        cursor=cursors.encode(row["tx_id"], row["id"]),
        tx_id=row["tx_id"],
        occurred_at=row["occurred_at"],
        stream=row["stream"],
        stream_id=row["stream_id"],
        type=row["type"],
        actor=row["actor"],
        data=_public(row["data"]),
        meta=_public(row["meta"]),
        trace_id=row["trace_id"],
    )


def attempts_of(events: Sequence[Row]) -> list[Attempt]:
    """Attempts as the run's events tell them: each claim opens one, the next ending closes it."""
    found: list[Attempt] = []
    for event in events:
        kind, data = event["type"], event["data"]
        if kind == "run.claimed":
            found.append(
                Attempt(
                    attempt=int(data.get("attempt") or len(found) + 1),
                    worker_id=data.get("worker_id"),
                    started_at=event["occurred_at"],
                    ended_at=None,
                    result="running",
                    outcome=None,
                )
            )
        elif kind in _ENDINGS and found and found[-1].result == "running":
            found[-1].ended_at = event["occurred_at"]
            found[-1].result = _ENDINGS[kind]
            found[-1].outcome = data.get("outcome")
    return found


async def _run(conn: Conn, run_id: int) -> Row:
    row = await reads.run_detail(conn, run_id)
    if row is None:
        raise ApiError(404, f"run {run_id} does not exist")
    return row


@get(
    "/runs",
    operation_id="listRuns",
    summary="List runs, newest occurrence first",
    tags=TAGS,
    opt=VIEWER,
    responses=responses(),
)
async def list_runs(
    *,
    request: Request[Any, Any, Any],
    conn: NamedDependency[Conn],
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    status: Annotated[
        list[RunState] | None,
        QueryParameter(required=False, description="Run states to include (repeatable)."),
    ] = None,
    schedule_id: ScheduleIdFilter = None,
    queue: QueueFilter = None,
    since: Annotated[
        datetime | None,
        QueryParameter(required=False, description="Occurrences due at or after this instant."),
    ] = None,
    until: Annotated[
        datetime | None,
        QueryParameter(required=False, description="Occurrences due before this instant."),
    ] = None,
) -> RunPage:
    """Keyset pages by (due_at, id) descending; `next_cursor` is null on the last page."""
    size = page_size(limit)
    rows = await reads.page_runs(
        conn,
        limit=size + 1,
        before=cursors.decode_instant_id(cursor) if cursor else None,
        states=status,
        schedule_id=schedule_id,
        queue=queue,
        since=aware(since, "since", request),
        until=aware(until, "until", request),
    )
    more = len(rows) > size
    rows = rows[:size]
    last = rows[-1] if rows else None
    return RunPage(
        items=[run_out(r) for r in rows],
        next_cursor=cursors.encode(last["due_at"], last["id"]) if more and last else None,
    )


@get(
    "/runs/{run_id:str}",
    operation_id="getRun",
    summary="Get a run with its attempts",
    tags=TAGS,
    opt=VIEWER,
    responses=responses(404),
)
async def get_run(run_id: PathId, conn: NamedDependency[Conn]) -> RunDetail:
    row = await _run(conn, run_id)
    events = await reads.stream_events(conn, "run", run_id, limit=10_000)
    run = run_out(row)
    fields = {f: getattr(run, f) for f in run.__struct_fields__}
    return RunDetail(**fields, attempts=attempts_of(events))


@get(
    "/runs/{run_id:str}/events",
    operation_id="listRunEvents",
    summary="A run's events, in order",
    tags=TAGS,
    opt=VIEWER,
    responses=responses(404),
)
async def list_run_events(
    run_id: PathId,
    conn: NamedDependency[Conn],
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> EventPage:
    """In change order; `next_cursor` is null on the last page."""
    await _run(conn, run_id)
    size = page_size(limit)
    after = cursors.decode_pair(cursor)[1] if cursor else 0
    rows = await reads.stream_events(conn, "run", run_id, after_id=after, limit=size + 1)
    more = len(rows) > size
    items = [event_out(r) for r in rows[:size]]
    return EventPage(items=items, next_cursor=items[-1].cursor if more else None)


RUN_LOCATION = ResponseHeader(
    name="Location", description="The new run's URL.", documentation_only=True
)
ENQUEUE_EXAMPLES = [
    Example(
        summary="Send one order's mail: the definition's target, this order's arguments",
        value={"job": "send-mail", "payload": {"kwargs": {"order_id": 1234}}},
    ),
    Example(
        summary="A report at a set time, on its own queue, with a longer timeout",
        value={
            "job": "nightly-report",
            "payload": {"body": {"period": "2026-11"}},
            "queue": "reports",
            "priority": 5,
            "run_at": "2026-12-05T06:00:00Z",
            "max_attempts": 3,
            "timeout_seconds": 900,
        },
    ),
]
# The request fields the enqueue service names in its refusals, as the client sent them.
_WIRE = {"idempotency_key": ("Idempotency-Key", "header")}


def _refused(status: int, field: str, message: str, *, source: str = "body") -> ApiError:
    field, source = _WIRE.get(field, (field, source))
    error = ApiError(status, f"{field}: {message}", kind="validation-failed")
    error.errors = [FieldError(field, message, source)]
    return error


def _definitions(request: Request[Any, Any, Any]) -> runs.Definitions:
    """The process's cache of definitions (ADR 0027): an enqueue of a definition read before is
    one round trip; a stale entry costs a read and a retry, never a wrongly validated run."""
    state = request.app.state
    cached = state.get("definitions")
    if not isinstance(cached, runs.Definitions):
        cached = state["definitions"] = runs.Definitions()
    return cached


async def _enqueue(
    request: Request[Any, Any, Any],
    conn: Conn,
    job: str,
    item: runs.Item,
    *,
    actor: str,
    meta: dict[str, object],
) -> tuple[Row, bool]:
    """One statement on the pool's autocommit connection: the run, its key and its event commit
    together, and the workers are woken at that commit (ADR 0027)."""
    ((run, created),) = await runs.enqueue_items(
        conn,
        job,
        [item],
        actor=actor,
        now=clock_now(request),
        meta=meta,
        definitions=_definitions(request),
    )
    return run, created


@post(
    "/runs",
    operation_id="enqueueRun",
    summary="Enqueue a run of a job definition, with arguments of its own",
    tags=TAGS,
    opt=OPERATOR,
    status_code=201,
    response_headers=[RUN_LOCATION],
    responses={
        200: ResponseSpec(
            Run, description="Replayed: the run an earlier request with this key made"
        ),
        **responses(404, 413),
    },
)
async def enqueue_run(
    request: Request[Any, Any, Any],
    data: Annotated[
        RunCreate, BodyKwarg(media_type=RequestEncodingType.JSON, examples=ENQUEUE_EXAMPLES)
    ],
    conn: NamedDependency[Conn],
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(
            name="Idempotency-Key",
            required=False,
            min_length=1,
            max_length=255,
            description=(
                "Repeating a request with the same key returns the first one's run (200). "
                "Keys are per definition, shared with its trigger."
            ),
        ),
    ] = None,
) -> Response[Run]:
    """An ad-hoc run (origin `enqueue`) of the live job definition `job`, waiting from `run_at`
    (default now), even while the definition is paused (201). `payload` is merged over the
    definition's (top-level keys) and validated for its job type; any other field left out
    takes the definition's. 404 naming `job` when no live definition has that name. With an
    Idempotency-Key, a repeated request returns the run the first one made (200)."""
    actor, meta = audit(request)
    if idempotency_key is not None and "\x00" in idempotency_key:
        raise _refused(422, "Idempotency-Key", "must not contain NUL", source="header")
    item = runs.Item(
        data.payload,
        data.queue,
        data.priority,
        data.run_at,
        data.max_attempts,
        data.timeout_seconds,
        idempotency_key,
    )
    try:
        run, created = await _enqueue(request, conn, data.job, item, actor=actor, meta=meta)
    except NotFound as exc:
        raise ApiError(404, str(exc), field="job", source="body") from exc
    except InvalidRequest as exc:
        raise _refused(422, exc.field, str(exc).removeprefix(f"{exc.field}: ")) from exc
    body = run_out({**run, "schedule_name": data.job})
    if not created:
        return Response(body, status_code=200)
    return Response(body, status_code=201, headers={"Location": f"/v1/runs/{run['id']}"})


@post(
    "/runs/{run_id:str}/retry",
    operation_id="retryRun",
    summary="Send a dead or cancelled run back to waiting",
    tags=TAGS,
    opt=OPERATOR,
    status_code=200,
    responses=responses(404, 409),
)
async def retry_run(
    request: Request[Any, Any, Any], run_id: PathId, conn: NamedDependency[Conn]
) -> Run:
    """It may start at once and gets the schedule's max_attempts more attempts."""
    actor, meta = audit(request)
    row = await runs.retry(conn, run_id, actor=actor, now=clock_now(request), meta=meta)
    if row is None:
        current = await _run(conn, run_id)
        raise ApiError(
            409,
            f"run {run_id} is {current['state']}; only dead or cancelled runs can be retried",
            kind="conflict",
        )
    return run_out(await _run(conn, run_id))


@post(
    "/runs/{run_id:str}/cancel",
    operation_id="cancelRun",
    summary="Cancel a run",
    tags=TAGS,
    opt=OPERATOR,
    status_code=200,
    responses=responses(404, 409),
)
async def cancel_run(
    request: Request[Any, Any, Any], run_id: PathId, conn: NamedDependency[Conn]
) -> Run:
    """A waiting run ends cancelled at once; a running one is asked to stop
    (`cancel_requested`) and ends cancelled when its worker next heartbeats."""
    actor, meta = audit(request)
    before, row = await runs.cancel(conn, run_id, actor=actor, now=clock_now(request), meta=meta)
    if row is None:
        state = "being cancelled" if before["cancel_requested"] else before["state"]
        raise ApiError(
            409,
            f"run {run_id} is {state}; only waiting or running runs can be cancelled",
            kind="conflict",
        )
    return run_out(await _run(conn, run_id))


ROUTES = [enqueue_run, list_runs, get_run, list_run_events, retry_run, cancel_run]
