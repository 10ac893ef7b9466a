"""/v1/schedules: definitions (admin writes, viewer reads) and operations on them (operator)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import BodyKwarg, HeaderParameter, JSONBody, QueryParameter

from pgsched.app.api import cursors, definition
from pgsched.app.api.auth import audit
from pgsched.app.api.common import (
    ADMIN,
    DEFAULT_PAGE,
    ETAG_HEADER,
    LOCATION_HEADER,
    OPERATOR,
    VIEWER,
    Cursor,
    Limit,
    NameFilter,
    PathId,
    QueueFilter,
    bounds,
    clock_now,
    etag,
    page_size,
    parse_if_match,
)
from pgsched.app.api.config import ApiSettings
from pgsched.app.api.problems import ApiError, responses
from pgsched.app.api.schemas import (
    BackfillRequest,
    BackfillResult,
    JobType,
    Owner,
    Preview,
    Run,
    Schedule,
    ScheduleCreate,
    SchedulePage,
    ScheduleUpdate,
    Status,
    run_out,
    schedule_out,
)
from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.domain.schedule import LABEL_KEY, MAX_LABEL_VALUE, MAX_PREVIEW
from pgsched.app.services import schedules

TAGS = ["schedules"]
IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        required=False,
        max_length=1000,
        description="The ETag of the version this change is based on; 412 if stale.",
    ),
]
CREATE_EXAMPLES = [
    Example(
        summary="A nightly HTTP call in a time zone, its credential a secret reference",
        value={
            "name": "nightly-report",
            "job_type": "http",
            "payload": {
                "url": "https://reports.example.com/run",
                "method": "POST",
                "headers": {"Authorization": {"$secret": "reports_token"}},
            },
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "max_attempts": 5,
            "retry_backoff": {"delay_seconds": 30, "factor": 2, "max_delay_seconds": 600},
            "overlap_policy": "skip",
        },
    ),
    Example(
        summary="A command every five minutes, one at a time",
        value={
            "name": "sync-inbox",
            "job_type": "command",
            "payload": {"argv": ["/usr/local/bin/sync-inbox", "--quiet"]},
            "interval_seconds": 300,
            "max_concurrency": 1,
            "timeout_seconds": 120,
        },
    ),
    Example(
        summary="A one-off no-op, paused",
        value={
            "name": "one-off",
            "job_type": "noop",
            "run_at": "2099-01-01T00:00:00Z",
            "enabled": False,
        },
    ),
]


def _with_etag(row: Row, status: int = 200) -> Response[Schedule]:
    headers = {"ETag": etag(row["version"])}
    if status == 201:
        headers["Location"] = f"/v1/schedules/{row['id']}"
    return Response(schedule_out(row), status_code=status, headers=headers)


@post(
    "/schedules",
    operation_id="createSchedule",
    summary="Create a schedule",
    tags=TAGS,
    opt=ADMIN,
    status_code=201,
    response_headers=[ETAG_HEADER, LOCATION_HEADER],
    responses=responses(409, 413),
)
async def create_schedule(
    request: Request[Any, Any, Any],
    data: Annotated[
        ScheduleCreate,
        BodyKwarg(media_type=RequestEncodingType.JSON, examples=CREATE_EXAMPLES),
    ],
    conn: NamedDependency[Conn],
) -> Response[Schedule]:
    """Validates the timing (cron in its time zone, interval or one-off time) and the payload
    for its job type, and computes the first due time from the database's clock."""
    actor, meta = audit(request)
    fields = definition.create_fields(data)
    settings: ApiSettings = request.app.state.settings
    row = await schedules.create(
        conn,
        fields,
        actor=actor,
        now=clock_now(request),
        meta=meta,
        defaults=settings.schedule_defaults,
    )
    return _with_etag(row, 201)


def _label_filter(given: list[str] | None) -> dict[str, str | None] | None:
    """`?label=team:data&label=tier` as {team: data, tier: None} (None: any value)."""
    if not given:
        return None
    wanted: dict[str, str | None] = {}
    for each in given:
        key, colon, value = each.partition(":")
        if not LABEL_KEY.fullmatch(key) or len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise ApiError(
                422,
                "must be a label key (letters, digits, ._/-) or key:value",
                field="label",
                source="query",
            )
        wanted[key] = value if colon else None
    return wanted


@get(
    "/schedules",
    operation_id="listSchedules",
    summary="List live schedules",
    tags=TAGS,
    opt=VIEWER,
    responses=responses(),
)
async def list_schedules(
    *,
    conn: NamedDependency[Conn],
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    queue: QueueFilter = None,
    job_type: Annotated[JobType | None, QueryParameter(required=False)] = None,
    enabled: Annotated[bool | None, QueryParameter(required=False)] = None,
    name: NameFilter = None,
    health: Annotated[
        Status | None,
        QueryParameter(required=False, description="Only schedules in this health (ADR 0032)."),
    ] = None,
    owner: Annotated[
        str | None,
        QueryParameter(**bounds(Owner), required=False, description="Only this owner's."),
    ] = None,
    label: Annotated[
        list[str] | None,
        QueryParameter(
            required=False,
            max_items=32,
            description=(
                "`key:value` (that value) or `key` (any value); repeated, all must match."
            ),
        ),
    ] = None,
    managed_by: Annotated[
        str | None,
        QueryParameter(
            **bounds(Owner),
            required=False,
            description="Only those this `pgsched apply` manager declares.",
        ),
    ] = None,
) -> SchedulePage:
    """By id; `next_cursor` is null on the last page."""
    size = page_size(limit)
    after = cursors.decode_id(cursor) if cursor else 0
    rows = await reads.page_schedules(
        conn,
        after_id=after,
        limit=size + 1,
        queue=queue,
        job_type=job_type,
        enabled=enabled,
        name=name,
        health=health,
        owner=owner,
        managed_by=managed_by,
        labels=_label_filter(label),
    )
    more = len(rows) > size
    rows = rows[:size]
    return SchedulePage(
        items=[schedule_out(r) for r in rows],
        next_cursor=cursors.encode(rows[-1]["id"]) if more else None,
    )


@get(
    "/schedules/{schedule_id:str}",
    operation_id="getSchedule",
    summary="Get a schedule",
    tags=TAGS,
    opt=VIEWER,
    response_headers=[ETAG_HEADER],
    responses=responses(404),
)
async def get_schedule(schedule_id: PathId, conn: NamedDependency[Conn]) -> Response[Schedule]:
    return _with_etag(await schedules.live(conn, schedule_id))


@patch(
    "/schedules/{schedule_id:str}",
    operation_id="updateSchedule",
    summary="Update a schedule",
    tags=TAGS,
    opt=ADMIN,
    response_headers=[ETAG_HEADER],
    responses=responses(404, 409, 412, 413),
)
async def update_schedule(
    request: Request[Any, Any, Any],
    schedule_id: PathId,
    data: JSONBody[ScheduleUpdate],
    conn: NamedDependency[Conn],
    if_match: IfMatch = None,
) -> Response[Schedule]:
    """Only the fields given change. A change of timing recomputes `next_due_at` from now."""
    actor, meta = audit(request)
    row = await schedules.update(
        conn,
        schedule_id,
        definition.patch_fields(data),
        if_match=parse_if_match(if_match),
        actor=actor,
        now=clock_now(request),
        meta=meta,
    )
    return _with_etag(row)


@delete(
    "/schedules/{schedule_id:str}",
    operation_id="deleteSchedule",
    summary="Delete a schedule (soft)",
    tags=TAGS,
    opt=ADMIN,
    status_code=204,
    responses=responses(404, 409, 412),
)
async def delete_schedule(
    request: Request[Any, Any, Any],
    schedule_id: PathId,
    conn: NamedDependency[Conn],
    if_match: IfMatch = None,
) -> None:
    """The row and its history stay (as events); its runs are not cancelled; the name is free.
    With If-Match, a schedule changed since that version is not deleted (412), as for PATCH;
    without it the delete is unconditional. The built-in schedule `pgsched.maintenance` cannot
    be deleted (409)."""
    actor, meta = audit(request)
    await schedules.delete(
        conn,
        schedule_id,
        actor=actor,
        now=clock_now(request),
        meta=meta,
        if_match=parse_if_match(if_match),
    )


@post(
    "/schedules/{schedule_id:str}/pause",
    operation_id="pauseSchedule",
    summary="Pause a schedule",
    tags=TAGS,
    opt=OPERATOR,
    status_code=200,
    response_headers=[ETAG_HEADER],
    responses=responses(404),
)
async def pause_schedule(
    request: Request[Any, Any, Any], schedule_id: PathId, conn: NamedDependency[Conn]
) -> Response[Schedule]:
    """Stops materialising runs; pausing a paused schedule changes nothing."""
    actor, meta = audit(request)
    row = await schedules.pause(conn, schedule_id, actor=actor, now=clock_now(request), meta=meta)
    return _with_etag(row)


@post(
    "/schedules/{schedule_id:str}/resume",
    operation_id="resumeSchedule",
    summary="Resume a schedule",
    tags=TAGS,
    opt=OPERATOR,
    status_code=200,
    response_headers=[ETAG_HEADER],
    responses=responses(404),
)
async def resume_schedule(
    request: Request[Any, Any, Any], schedule_id: PathId, conn: NamedDependency[Conn]
) -> Response[Schedule]:
    """Occurrences that fell due while paused follow the schedule's missed policy."""
    actor, meta = audit(request)
    row = await schedules.resume(conn, schedule_id, actor=actor, now=clock_now(request), meta=meta)
    return _with_etag(row)


@post(
    "/schedules/{schedule_id:str}/trigger",
    operation_id="triggerSchedule",
    summary="Run a schedule now",
    tags=TAGS,
    opt=OPERATOR,
    status_code=201,
    responses={
        200: ResponseSpec(
            Run, description="Replayed: the run an earlier request with this key made"
        ),
        **responses(404),
    },
)
async def trigger_schedule(
    request: Request[Any, Any, Any],
    schedule_id: PathId,
    conn: NamedDependency[Conn],
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(
            name="Idempotency-Key",
            required=False,
            min_length=1,
            max_length=255,
            description="Repeating a request with the same key returns the first one's run.",
        ),
    ] = None,
) -> Response[Run]:
    """An ad-hoc run, due now, whatever the pause or overlap policy (201). With an
    Idempotency-Key, a repeated request returns the run the first one created (200)."""
    actor, meta = audit(request)
    if idempotency_key is not None and "\x00" in idempotency_key:
        raise ApiError(422, "must not contain NUL", field="Idempotency-Key", source="header")
    run, created = await schedules.trigger(
        conn,
        schedule_id,
        actor=actor,
        now=clock_now(request),
        idempotency_key=idempotency_key,
        meta=meta,
    )
    detail = await reads.run_detail(conn, run["id"])
    return Response(run_out(detail or run), status_code=201 if created else 200)


@post(
    "/schedules/{schedule_id:str}/backfill",
    operation_id="backfillSchedule",
    summary="Materialise past occurrences",
    tags=TAGS,
    opt=OPERATOR,
    status_code=200,
    responses=responses(404, 413),
)
async def backfill_schedule(
    request: Request[Any, Any, Any],
    schedule_id: PathId,
    data: JSONBody[BackfillRequest],
    conn: NamedDependency[Conn],
) -> BackfillResult:
    """Occurrences due in [from, to) that have no run yet become runs (origin `backfill`),
    whatever the overlap and missed policies; at most 1000; `to` must not be in the future.
    When nothing is created, `reason` says why (no occurrence in the range, and why; or all of
    them already have runs). A range before the oldest month of runs the database holds is a
    422 naming `from` that says which month that is."""
    actor, meta = audit(request)
    try:
        result = await schedules.backfill(
            conn,
            schedule_id,
            data.from_,
            data.to,
            actor=actor,
            now=clock_now(request),
            meta=meta,
        )
    except store.PartitionMissing as exc:
        # Before the oldest month kept is refused above, naming why; a month missing after it
        # is a gap maintenance left (a month detached for archiving, say).
        raise ApiError(
            422,
            "reaches a month for which the database holds no run partition (see "
            "pgsched.partition_horizon and docs/runbook.md)",
            field="from",
            source="body",
        ) from exc
    return BackfillResult(
        schedule_id=schedule_id,
        requested=result.requested,
        created=result.created,
        reason=result.reason,
    )


@get(
    "/schedules/{schedule_id:str}/preview",
    operation_id="previewSchedule",
    summary="The next due times",
    tags=TAGS,
    opt=VIEWER,
    responses=responses(404),
)
async def preview_schedule(
    request: Request[Any, Any, Any],
    schedule_id: PathId,
    conn: NamedDependency[Conn],
    count: Annotated[int, QueryParameter(ge=1, le=MAX_PREVIEW)] = 10,
) -> Preview:
    """The next `count` due times after now, from the ticker's own occurrence function (before
    jitter)."""
    after, due = await schedules.preview(conn, schedule_id, count, now=clock_now(request))
    return Preview(schedule_id=schedule_id, after=after, due=due)


ROUTES = [
    create_schedule,
    list_schedules,
    get_schedule,
    update_schedule,
    delete_schedule,
    pause_schedule,
    resume_schedule,
    trigger_schedule,
    backfill_schedule,
    preview_schedule,
]
