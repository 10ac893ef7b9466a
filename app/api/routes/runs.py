"""/v1/runs: the runs of every schedule (viewer), and retry/cancel (operator)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter

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
from pgsched.app.api.problems import ApiError, responses
from pgsched.app.api.schemas import (
    Attempt,
    Event,
    EventPage,
    Run,
    RunDetail,
    RunPage,
    RunState,
    run_out,
)
from pgsched.app.db.store import Conn, Row, reads
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


def event_out(row: Row) -> Event:
    return Event(
        id=row["id"],
        cursor=cursors.encode(row["tx_id"], row["id"]),
        tx_id=row["tx_id"],
        occurred_at=row["occurred_at"],
        stream=row["stream"],
        stream_id=row["stream_id"],
        type=row["type"],
        actor=row["actor"],
        data=row["data"],
        meta=row["meta"],
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


ROUTES = [list_runs, get_run, list_run_events, retry_run, cancel_run]
