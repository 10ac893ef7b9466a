"""The console's pages (GET): overview, schedules, runs, dead letter, workers and queues.

Every page reads through the same store functions as the REST API (app.db.store.reads), plus the
console's few reads of its own (app.db.store.console). Filters come from query strings that a
browser's form sends, empty fields included, so they are parsed here rather than by Litestar's
typed parameters: an empty field means "no filter", a wrong one a 422 page naming it.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Final, get_args
from urllib.parse import urlencode

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.response import Template

from pgsched.app.api import cursors
from pgsched.app.api.common import PATH_ID, PathId, clock_now
from pgsched.app.api.config import ApiSettings
from pgsched.app.api.problems import ApiError
from pgsched.app.api.routes.runs import attempts_of
from pgsched.app.api.routes.system import STATS_HOURS, _components
from pgsched.app.api.schemas import JobType, RunState, Status
from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.db.store import console as console_store
from pgsched.app.domain.schedule import DEFAULTS, HEALTH_POLICY, LABEL_KEY, MAX_LABEL_VALUE
from pgsched.app.services import schedules
from pgsched.app.ui.render import page, plain

VIEWER: Final = {"role": "public", "console": "viewer"}
OPERATOR: Final = {"role": "public", "console": "operator"}
ADMIN: Final = {"role": "public", "console": "admin"}

PAGE: Final = 50
BULK_MAX: Final = 1000
# The states a bulk action can apply to: retry makes dead or cancelled runs wait again, cancel
# ends waiting runs and asks running ones to stop.
BULK_STATES: Final = {"retry": ("dead", "cancelled"), "cancel": ("waiting", "blocked", "running")}
RUN_STATES: Final = get_args(RunState)
JOB_TYPES: Final = get_args(JobType)
HEALTH_STATES: Final = get_args(Status)
# Keys never shown, wherever they appear in an event: a run's lease token fences its worker.
_HIDDEN_KEYS: Final = frozenset({"lease_token"})
# What a redirect after a form says happened (the query string names one of these, nothing else).
NOTICES: Final = {
    "paused": "Paused.",
    "resumed": "Resumed.",
    "triggered": "Triggered: a run is waiting.",
    "updated": "Saved.",
    "deleted": "Deleted.",
    "created": "Created.",
    "retried": "Sent back to waiting.",
    "cancelled": "Cancelled (a running run is asked to stop: its worker ends it).",
    "bulk": "Done: see the result counts below.",
}


def _text(request: Request[Any, Any, Any], name: str, limit: int = 200) -> str | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if len(value) > limit or "\x00" in value:
        raise ApiError(422, f"at most {limit} characters, no NUL", field=name)
    return value


def _id(request: Request[Any, Any, Any], name: str) -> int | None:
    value = _text(request, name, 19)
    if value is None:
        return None
    if not PATH_ID.fullmatch(value):
        raise ApiError(422, "must be a positive integer", field=name)
    return int(value)


def _instant(request: Request[Any, Any, Any], name: str) -> datetime | None:
    """A browser's datetime-local value (no zone) read as UTC, or an RFC 3339 instant."""
    value = _text(request, name, 40)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "must be a date and time, e.g. 2026-12-04T10:00", field=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _choice(request: Request[Any, Any, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _text(request, name, 40)
    if value is not None and value not in allowed:
        raise ApiError(422, f"must be one of {', '.join(allowed)}", field=name)
    return value


def _labels(request: Request[Any, Any, Any]) -> dict[str, str | None] | None:
    """`label=team:data` (or `label=tier`: any value) as the API's `?label=` reads it; one
    field in the form, so one label."""
    value = _text(request, "label")
    if value is None:
        return None
    key, colon, wanted = value.partition(":")
    if not LABEL_KEY.fullmatch(key) or len(wanted) > MAX_LABEL_VALUE:
        raise ApiError(
            422, "must be a label key (letters, digits, ._/-) or key:value", field="label"
        )
    return {key: wanted if colon else None}


def notice(request: Request[Any, Any, Any]) -> str | None:
    return NOTICES.get(request.query_params.get("done", ""))


def redact(value: object) -> object:
    """A copy of an event's data or meta without the keys the console never shows."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if k not in _HIDDEN_KEYS}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def shown(value: object) -> str:
    return json.dumps(redact(value), default=str, sort_keys=True)


def _settings(request: Request[Any, Any, Any]) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


@get("/", opt=VIEWER, include_in_schema=False)
async def overview(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    """Health as /health computes it, queues, the last hour's throughput, lag and workers."""
    settings, now = _settings(request), clock_now(request)
    stale = settings.worker_stale_seconds
    health = await reads.health(conn, stale_seconds=stale, now=now)
    components, details = _components(health, settings)
    sample = await reads.telemetry_sample(conn, stale_seconds=stale, now=now)
    hour = await reads.stats(conn, hours=1, now=now)
    workers = await reads.page_workers(
        conn, limit=PAGE, stale_seconds=stale, now=now, states=["active", "stopping"]
    )
    judged = hour["succeeded_runs"] + hour["dead_runs"]
    return page(
        request,
        "overview.html",
        components=components,
        details=details,
        health=health,
        queues=sample["queues"],
        finished_per_minute=hour["finished_runs"] / 60,
        hour=hour,
        failure_rate=(hour["dead_runs"] / judged) if judged else None,
        workers=[w for w in workers if w["healthy"]],
        notice=notice(request),
    )


@get("/schedules", opt=VIEWER, include_in_schema=False)
async def schedule_list(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    """Live schedules by id, filtered; next due in the schedule's zone and in UTC; last run."""
    enabled = _choice(request, "enabled", ("yes", "no"))
    after = _id(request, "after") or 0
    rows = await reads.page_schedules(
        conn,
        after_id=after,
        limit=PAGE + 1,
        queue=_text(request, "queue", 100),
        job_type=_choice(request, "job_type", JOB_TYPES),
        enabled=None if enabled is None else enabled == "yes",
        name=_text(request, "name"),
        health=_choice(request, "health", HEALTH_STATES),
        owner=_text(request, "owner"),
        labels=_labels(request),
    )
    more, rows = len(rows) > PAGE, rows[:PAGE]
    last = await console_store.last_runs(conn, [r["id"] for r in rows])
    return page(
        request,
        "schedules.html",
        schedules=rows,
        last=last,
        next_after=rows[-1]["id"] if more else None,
        filters={k: v for k, v in request.query_params.items() if k not in ("after", "done")},
        job_types=JOB_TYPES,
        health_states=HEALTH_STATES,
        notice=notice(request),
    )


@get("/schedules/new", opt=ADMIN, include_in_schema=False)
async def schedule_new(request: Request[Any, Any, Any]) -> Template:
    return page(request, "schedule_new.html", job_types=JOB_TYPES, form={}, error=None)


# A schedule's own history on its page: what people (and the ticker's policies) did to it.
TIMELINE_TYPES: Final = (
    "schedule.created",
    "schedule.updated",
    "schedule.paused",
    "schedule.resumed",
    "schedule.backfilled",
    "schedule.deleted",
)


def _due(value: object) -> datetime | None:
    """An occurrence's due time as an event's meta carries it (RFC 3339 text)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@get("/schedules/{schedule_id:str}", opt=VIEWER, include_in_schema=False)
async def schedule_page(
    request: Request[Any, Any, Any], schedule_id: PathId, conn: NamedDependency[Conn]
) -> Template:
    """A schedule: definition, version (every form sends it back), runs, the occurrences that
    did not run and why (paged), its own event timeline (paged) and the next due times."""
    return await schedule_view(request, conn, schedule_id)


async def schedule_view(
    request: Request[Any, Any, Any],
    conn: Conn,
    schedule_id: int,
    *,
    typed: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Template:
    """The schedule page; after a refused edit, its edit form holds what was `typed` (the
    version included, so a stale form stays stale) under the `error`."""
    row = await schedules.live(conn, schedule_id)
    runs = await reads.page_runs(conn, limit=20, schedule_id=schedule_id)
    missed_before, timeline_before = _id(request, "missed_before"), _id(request, "timeline_before")
    missed = await console_store.schedule_events(
        conn, schedule_id, ["schedule.occurrence_missed"], limit=PAGE + 1, before=missed_before
    )
    timeline = await console_store.schedule_events(
        conn, schedule_id, TIMELINE_TYPES, limit=PAGE + 1, before=timeline_before
    )
    # Upstreams by name, linked (ADR 0033); the graph's reads are the store's.
    ids = [int(u) for u in row["depends_on"] or []]
    found = await store.dependencies.upstream_candidates(conn, ids, [])
    names = {int(c["id"]): str(c["name"]) for c in found}
    upstreams = [(i, names.get(i)) for i in ids]
    after: datetime | None = None
    due: list[datetime] = []
    if row["kind"] != "job":
        after, due = await schedules.preview(conn, schedule_id, 5, now=clock_now(request))
    return page(
        request,
        "schedule.html",
        status=status,
        s=row,
        upstreams=upstreams,
        edit=typed or {},
        edit_error=error,
        more={**_more_shown(row, upstreams), **(typed or {})},
        payload=shown(row["payload"]),
        runs=runs,
        missed=[{**e, "due": _due(e["meta"].get("due_at"))} for e in missed[:PAGE]],
        missed_next=missed[PAGE - 1]["id"] if len(missed) > PAGE else None,
        timeline=[
            {**e, "data": shown(e["data"]), "meta": shown(e["meta"])} for e in timeline[:PAGE]
        ],
        timeline_next=timeline[PAGE - 1]["id"] if len(timeline) > PAGE else None,
        preview_after=after,
        preview=due,
        trigger_key=secrets.token_urlsafe(16),
        notice=notice(request),
    )


def _more_shown(row: Row, upstreams: list[tuple[int, str | None]]) -> dict[str, str]:
    """The edit form's "More" fields as text that reads back as the same values (unchanged,
    nothing is sent): upstreams by name, labels as key=value lines, null thresholds as never."""
    policy = {**HEALTH_POLICY, **(row["health_policy"] or {})}
    timeout = row["dependency_timeout_seconds"] or DEFAULTS["dependency_timeout_seconds"]
    shown = {
        "depends_on": ", ".join(name or str(i) for i, name in upstreams),
        "dependency_timeout_seconds": str(timeout),
        "labels": "".join(f"{k}={v}\n" for k, v in (row["labels"] or {}).items()),
        "owner": row["owner"] or "",
        "description": row["description"] or "",
        "pause_after_failures": str(row["pause_after_failures"] or "never"),
    }
    for name, value in policy.items():
        shown[name] = "never" if value is None else plain(value)
    return shown


def _run_filters(request: Request[Any, Any, Any], state: str | None) -> dict[str, Any]:
    return {
        "states": [state] if state else None,
        "schedule_id": _id(request, "schedule_id"),
        "queue": _text(request, "queue", 100),
        "since": _instant(request, "since"),
        "until": _instant(request, "until"),
    }


async def _runs(request: Request[Any, Any, Any], conn: Conn, *, dead: bool) -> Template:
    state = "dead" if dead else _choice(request, "state", RUN_STATES)
    filters = _run_filters(request, state)
    cursor = _text(request, "before", 512)
    before = cursors.decode_instant_id(cursor, "before") if cursor else None
    rows = await reads.page_runs(conn, limit=PAGE + 1, before=before, **filters)
    more, rows = len(rows) > PAGE, rows[:PAGE]
    # The 24 h aggregation is the dead letter's, and pages are re-fetched live: only there.
    errors = (
        await reads.common_errors(conn, hours=STATS_HOURS, limit=5, now=clock_now(request))
        if dead
        else []
    )
    # The bulk buttons carry the filter (never the page position) to the confirmation step.
    kept = {k: v for k, v in request.query_params.items() if k not in ("before", "state", "done")}
    return page(
        request,
        "runs.html",
        dead=dead,
        runs=rows,
        states=RUN_STATES,
        filters={k: v for k, v in request.query_params.items() if k not in ("before", "done")},
        next_before=cursors.encode(rows[-1]["due_at"], rows[-1]["id"]) if more else None,
        common_errors=errors,
        workers=await console_store.worker_names(
            conn, [r["worker_id"] for r in rows if r["worker_id"]]
        ),
        here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        bulk_state=state,
        bulk_query=urlencode({**kept, "state": state or ""}),
        notice=notice(request),
    )


@get("/runs", opt=VIEWER, include_in_schema=False)
async def run_list(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    return await _runs(request, conn, dead=False)


@get("/dead", opt=VIEWER, include_in_schema=False)
async def dead_letter(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    """Runs that used up their attempts: retry or cancel them one by one or as a filtered set."""
    return await _runs(request, conn, dead=True)


async def matching_runs(request: Request[Any, Any, Any], conn: Conn) -> list[Row]:
    """The runs a bulk action's filter selects, at most BULK_MAX + 1 (to say "more than")."""
    filters = _run_filters(request, _choice(request, "state", RUN_STATES))
    return await reads.page_runs(conn, limit=BULK_MAX + 1, **filters)


@get("/runs/bulk", opt=OPERATOR, include_in_schema=False)
async def bulk_confirm(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    """The confirmation step of a bulk retry or cancel: how many runs the filter selects, and
    the form that acts on exactly those (their ids, not the filter again)."""
    action = _choice(request, "action", ("retry", "cancel"))
    if action is None:
        raise ApiError(422, "must be retry or cancel", field="action")
    state = _choice(request, "state", RUN_STATES)
    if state is None:
        raise ApiError(422, "choose the runs' state first (a bulk action needs one)", field="state")
    if state not in BULK_STATES[action]:
        raise ApiError(
            422, f"{action} applies to {' or '.join(BULK_STATES[action])} runs only", field="state"
        )
    found = await matching_runs(request, conn)
    return page(
        request,
        "bulk.html",
        action=action,
        state=state,
        runs=found[:BULK_MAX],
        too_many=len(found) > BULK_MAX,
        limit=BULK_MAX,
        filters=dict(request.query_params),
        back="/ui/dead" if request.query_params.get("state") == "dead" else "/ui/runs",
    )


@get("/runs/{run_id:str}", opt=VIEWER, include_in_schema=False)
async def run_page(
    request: Request[Any, Any, Any], run_id: PathId, conn: NamedDependency[Conn]
) -> Template:
    """A run: attempts (worker, times, result), outcome and error, its whole event timeline
    and the trace ids its events carry."""
    row = await reads.run_detail(conn, run_id)
    if row is None:
        raise ApiError(404, f"run {run_id} does not exist")
    events = await reads.stream_events(conn, "run", run_id, limit=10_000)
    outcome = row["outcome"] or {}
    attempts = attempts_of(events)
    worker_ids = [a.worker_id for a in attempts if a.worker_id is not None]
    # The upstream occurrences a blocked (or once blocked) run waits for, by name (ADR 0033).
    waits = row["waits_for"] or []
    ups = await store.dependencies.upstream_candidates(
        conn, sorted({int(w["schedule_id"]) for w in waits}), []
    )
    names = {int(u["id"]): str(u["name"]) for u in ups}
    return page(
        request,
        "run.html",
        r=row,
        waits=[
            {
                "schedule_id": int(w["schedule_id"]),
                "name": names.get(int(w["schedule_id"])),
                "due": _due(w["due_at"]),
            }
            for w in waits
        ],
        attempts=attempts,
        workers=await console_store.worker_names(conn, worker_ids),
        events=[{**e, "data": shown(e["data"]), "meta": shown(e["meta"])} for e in events],
        traces=sorted({e["trace_id"] for e in events if e["trace_id"]}),
        error=outcome.get("error") if isinstance(outcome, dict) else None,
        outcome=shown(outcome),
        notice=notice(request),
    )


@get("/workers", opt=VIEWER, include_in_schema=False)
async def workers_page(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    """Registered workers (slots, runs held, last heartbeat), queue depth and queue limits."""
    settings, now = _settings(request), clock_now(request)
    stale = settings.worker_stale_seconds
    workers = await reads.page_workers(conn, limit=100, stale_seconds=stale, now=now)
    sample = await reads.telemetry_sample(conn, stale_seconds=stale, now=now)
    return page(
        request,
        "workers.html",
        workers=workers,
        queues=sample["queues"],
        limits=await console_store.queues(conn),
    )


ROUTES = [
    overview,
    schedule_list,
    schedule_new,
    schedule_page,
    run_list,
    dead_letter,
    bulk_confirm,
    run_page,
    workers_page,
]
