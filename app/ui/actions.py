"""The console's forms (POST): sign in and out, and every action an operator or admin takes.

Each action checks the form's CSRF token, then calls the same app.services function as the
REST API with the same actor and meta (app.api.auth.audit: the token's name, address, agent and
token prefix), `via` saying it came through the console. After a change the browser is sent
back to the page with 303, so a reload repeats nothing.
"""

from __future__ import annotations

import hmac
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from pgsched.app.api import definition
from pgsched.app.api.auth import audit
from pgsched.app.api.common import PATH_ID, PathId, clock_now
from pgsched.app.api.problems import ApiError
from pgsched.app.api.schemas import ScheduleCreate, ScheduleUpdate
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.db.store import console as console_store
from pgsched.app.domain import schedule
from pgsched.app.domain.errors import NotFound, VersionMismatch
from pgsched.app.services import runs, schedules, tokens
from pgsched.app.ui import session
from pgsched.app.ui.pages import (
    ADMIN,
    BULK_MAX,
    BULK_STATES,
    JOB_TYPES,
    OPERATOR,
    VIEWER,
    schedule_view,
)
from pgsched.app.ui.render import back_to, describe, page

PUBLIC: Final = {"role": "public", "console": "public"}
_MAX_FIELD: Final = 20_000
# Whole numbers in ASCII digits (str.isdigit() also accepts '²', which int() refuses).
_WHOLE: Final = re.compile(r"[0-9]{1,18}")
_SIGNED: Final = re.compile(r"-?[0-9]{1,6}")
_NUMBER: Final = re.compile(r"[0-9]{1,9}(\.[0-9]{1,17})?")


def _meta(request: Request[Any, Any, Any]) -> tuple[str, dict[str, object]]:
    actor, meta = audit(request)
    return actor, {**meta, "via": "console"}


async def _form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The posted form, after its CSRF token is checked (403 without the session's)."""
    form = await request.form()
    session.check_csrf(request, form.get("csrf"))
    return form


def _field(form: FormMultiDict, name: str) -> str:
    value = str(form.get(name) or "").strip()
    if len(value) > _MAX_FIELD or "\x00" in value:
        raise ApiError(422, f"at most {_MAX_FIELD} characters, no NUL", field=name)
    return value


def _version(form: FormMultiDict) -> int:
    """The schedule version the form was made from: a stale form is refused (412)."""
    value = _field(form, "version")
    if not _WHOLE.fullmatch(value):
        raise ApiError(422, "the form carries no schedule version: reload", field="version")
    return int(value)


# -- sign in / out ----------------------------------------------------------------------------


def _login_page(request: Request[Any, Any, Any], error: str | None, status: int) -> Template:
    nonce = session.new_login_nonce()
    response = Template(
        template_name="login.html",
        context={"nonce": nonce, "error": error},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
    response.set_cookie(session.login_cookie(request, nonce))
    return response


@get("/login", opt=PUBLIC, include_in_schema=False)
async def login_form(request: Request[Any, Any, Any]) -> Template:
    return _login_page(request, None, 200)


@post("/login", opt=PUBLIC, include_in_schema=False, status_code=303)
async def login(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Response[Any]:
    """Sign in with an API token: checked as the API checks it, then forgotten; the session
    cookie names the token and is signed (app.ui.session)."""
    form = await request.form()
    nonce, cookie = form.get("nonce"), request.cookies.get(session.LOGIN_COOKIE)
    if not (isinstance(nonce, str) and cookie and hmac.compare_digest(nonce, cookie)):
        raise PermissionDeniedException("the sign-in form is stale or forged: reload it")
    token = str(form.get("token") or "").strip()
    now = clock_now(request)
    row = await tokens.authenticate(conn, token, now=now) if len(token) < 200 else None
    if row is None:
        return _login_page(
            request, "That token is not valid (unknown, revoked, expired or mistyped).", 401
        )
    # The MAC covers the stored hash, read back by id as every later request will.
    live = await console_store.live_token(conn, row["id"], now=now)
    if live is None:  # revoked in between
        return _login_page(request, "That token was just revoked.", 401)
    redirect = Redirect("/ui/", status_code=303)
    redirect.set_cookie(
        session.session_cookie(request, live["id"], bytes(live["token_sha256"]), live["now_epoch"])
    )
    redirect.set_cookie(session.cleared(session.LOGIN_COOKIE))
    return redirect


@post("/logout", opt=VIEWER, include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    await _form(request)
    session.end(request, session.current(request))
    redirect = Redirect("/ui/login", status_code=303)
    redirect.set_cookie(session.cleared())
    return redirect


# -- runs -------------------------------------------------------------------------------------


async def _retry(request: Request[Any, Any, Any], conn: Conn, run_id: int) -> bool:
    actor, meta = _meta(request)
    row = await runs.retry(conn, run_id, actor=actor, now=clock_now(request), meta=meta)
    return row is not None


async def _cancel(request: Request[Any, Any, Any], conn: Conn, run_id: int) -> bool:
    actor, meta = _meta(request)
    _, row = await runs.cancel(conn, run_id, actor=actor, now=clock_now(request), meta=meta)
    return row is not None


@post("/runs/{run_id:str}/retry", opt=OPERATOR, include_in_schema=False, status_code=303)
async def retry_run(
    request: Request[Any, Any, Any], run_id: PathId, conn: NamedDependency[Conn]
) -> Redirect:
    form = await _form(request)
    if not await _retry(request, conn, run_id):
        raise ApiError(409, f"run {run_id}: only dead or cancelled runs can be retried")
    return back_to(_back(_field(form, "back") or f"/ui/runs/{run_id}"), "retried")


@post("/runs/{run_id:str}/cancel", opt=OPERATOR, include_in_schema=False, status_code=303)
async def cancel_run(
    request: Request[Any, Any, Any], run_id: PathId, conn: NamedDependency[Conn]
) -> Redirect:
    form = await _form(request)
    if not await _cancel(request, conn, run_id):
        raise ApiError(409, f"run {run_id}: only waiting, blocked or running runs can be cancelled")
    return back_to(_back(_field(form, "back") or f"/ui/runs/{run_id}"), "cancelled")


def _back(path: str) -> str:
    """Only a console page may be where a form returns to (never another site); its query
    string (the list's filter) is kept, without an earlier notice."""
    if not path.startswith("/ui/") or "//" in path or "\\" in path or not path.isprintable():
        return "/ui/"
    where, _, query = path.partition("?")
    kept = [p for p in query.split("&") if p and not p.startswith("done=")]
    return where + ("?" + "&".join(kept) if kept else "")


@post("/runs/bulk", opt=OPERATOR, include_in_schema=False, status_code=200)
async def bulk_apply(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Template:
    """Retry or cancel exactly the runs the confirmation page listed, one transaction each
    (as the API's retry and cancel), each only if it is still in the state that page showed:
    a run that changed state meanwhile, or is gone, is counted as skipped. A running run that
    is cancelled is asked to stop (its worker ends it), counted apart from the cancelled."""
    form = await _form(request)
    action = _field(form, "action")
    if action not in BULK_STATES:
        raise ApiError(422, "must be retry or cancel", field="action")
    state = _field(form, "state")
    if state not in BULK_STATES[action]:
        raise ApiError(422, f"must be one of {', '.join(BULK_STATES[action])}", field="state")
    ids = form.getall("run_id") if "run_id" in form else []
    if len(ids) > BULK_MAX or not all(isinstance(i, str) and PATH_ID.fullmatch(i) for i in ids):
        raise ApiError(422, f"at most {BULK_MAX} run ids", field="run_id")
    counts = {"done": 0, "stopping": 0, "skipped": 0}
    for run_id in dict.fromkeys(int(i) for i in ids):
        counts[await _bulk_one(request, conn, run_id, action=action, state=state)] += 1
    return page(request, "bulk_done.html", action=action, state=state, **counts)


async def _bulk_one(
    request: Request[Any, Any, Any], conn: Conn, run_id: int, *, action: str, state: str
) -> str:
    """done, stopping (a running run asked to stop) or skipped. The run's row is locked while
    its state is checked and changed, so the check holds."""
    actor, meta = _meta(request)
    now = clock_now(request)
    try:
        async with conn.transaction():
            before = await console_store.lock_run(conn, run_id)
            if before is None or before["state"] != state:
                return "skipped"
            if action == "retry":
                row = await runs.retry(conn, run_id, actor=actor, now=now, meta=meta)
            else:
                _, row = await runs.cancel(conn, run_id, actor=actor, now=now, meta=meta)
    except NotFound:
        return "skipped"
    if row is None:
        return "skipped"
    return "stopping" if row["state"] == "running" else "done"


# -- schedules --------------------------------------------------------------------------------


def _json_field(form: FormMultiDict, name: str) -> object:
    raw = _field(form, name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(422, "must be JSON (an object)", field=name) from None


def _int_field(form: FormMultiDict, name: str, pattern: re.Pattern[str] = _WHOLE) -> int | None:
    raw = _field(form, name)
    if not raw:
        return None
    if not pattern.fullmatch(raw):
        raise ApiError(422, "must be a whole number", field=name)
    return int(raw)


def _number_field(
    form: FormMultiDict, name: str, hint: str = "must be a number of seconds, e.g. 30 or 2.5"
) -> float | None:
    raw = _field(form, name)
    if not raw:
        return None
    if not _NUMBER.fullmatch(raw):
        raise ApiError(422, hint, field=name)
    return float(raw)


def _instant_field(form: FormMultiDict, name: str) -> datetime | None:
    return _utc(form, name) if _field(form, name) else None


def _names_field(form: FormMultiDict, name: str) -> list[str]:
    """Comma-separated schedule names (depends_on), each once, in the order typed."""
    names = (n.strip() for n in _field(form, name).split(","))
    return list(dict.fromkeys(n for n in names if n))


def _labels_field(form: FormMultiDict, name: str) -> dict[str, str]:
    """`key=value` lines, or on one line comma-separated `key:value` pairs (so only a value
    given on its own line may hold a comma, as the edit form shows labels). The keys' and
    values' own rules are app.domain.schedule.check_labels'."""
    labels: dict[str, str] = {}
    text = _field(form, name)
    lines = "\n" in str(form.get(name) or "")  # before _field strips a last line break
    for raw in re.split(r"[\r\n]+" if lines else ",", text):
        item = raw.strip()
        if not item:
            continue
        # The first of = and : separates, so a value may hold the other (url=http://x).
        cut = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
        key, value = item[:cut].strip(), item[cut + 1 :].strip()
        if cut < 0 or not key:
            raise ApiError(422, f"{item[:60]!r} is not key=value or key:value", field=name)
        if key in labels:
            raise ApiError(422, f"label {key!r} is given twice", field=name)
        labels[key] = value
    return labels


# Thresholds whose null means "never", typed as the word; those that take a fraction.
_NEVER: Final = ("overdue_seconds", "pause_after_failures")
_FRACTIONAL: Final = ("failure_rate", "overdue_seconds")


def _threshold(form: FormMultiDict, name: str, default: object) -> object:
    """An ASCII number; empty is the default (on create and on edit alike), and `never` is
    null where null is allowed."""
    raw = _field(form, name)
    if not raw:
        return default
    if raw.lower() == "never" and name in _NEVER:
        return None
    if name in _FRACTIONAL:
        return _number_field(form, name, "must be a number, e.g. 0.5 or 90")
    return _int_field(form, name)


def _more(form: FormMultiDict) -> dict[str, Any]:
    """The dependency, health and description fields the form carries (its "More" section),
    empty meaning the default: no upstreams, labels or text, the built-in thresholds, no
    circuit breaker. A field the form does not carry is left out (unchanged on edit)."""
    more: dict[str, Any] = {}
    if "depends_on" in form:
        more["depends_on"] = _names_field(form, "depends_on")
    if "labels" in form:
        more["labels"] = _labels_field(form, "labels")
    for text in ("description", "owner"):
        if text in form:
            more[text] = _field(form, text) or None
    for name, default in (
        ("dependency_timeout_seconds", schedule.DEFAULTS["dependency_timeout_seconds"]),
        ("pause_after_failures", None),
    ):
        if name in form:
            more[name] = _threshold(form, name, default)
    policy = {k: _threshold(form, k, d) for k, d in schedule.HEALTH_POLICY.items() if k in form}
    if policy:
        more["health_policy"] = policy
    return more


# Fields a form may empty to clear them (the API's null); the others cannot be empty.
_CLEARABLE: Final = ("cron", "interval_seconds", "run_at")
_REQUIRED_ON_EDIT: Final = (
    "timezone",
    "queue",
    "max_attempts",
    "priority",
    "timeout_seconds",
    "overlap_policy",
    "missed_policy",
    "payload",
)


def _definition(form: FormMultiDict) -> dict[str, Any]:
    """The schedule fields a form gives, as the API's JSON body would carry them (ApiError
    naming the field when one is malformed)."""
    given: dict[str, Any] = {
        "name": _field(form, "name"),
        "job_type": _field(form, "job_type"),
        "payload": _json_field(form, "payload"),
        "cron": _field(form, "cron"),
        "interval_seconds": _int_field(form, "interval_seconds"),
        "run_at": _instant_field(form, "run_at"),
        "timezone": _field(form, "timezone"),
        "queue": _field(form, "queue"),
        "priority": _int_field(form, "priority", _SIGNED),
        "max_attempts": _int_field(form, "max_attempts"),
        "timeout_seconds": _number_field(form, "timeout_seconds"),
        "overlap_policy": _field(form, "overlap_policy"),
        "missed_policy": _field(form, "missed_policy"),
    }
    return {k: v for k, v in given.items() if v not in (None, "")}


def _as(kind: type[Any], fields: dict[str, Any]) -> Any:  # noqa: ANN401 (a msgspec struct)
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as exc:
        raise ApiError(422, str(exc)) from None


@post("/schedules", opt=ADMIN, include_in_schema=False, status_code=303)
async def create_schedule(
    request: Request[Any, Any, Any], conn: NamedDependency[Conn]
) -> Response[Any]:
    form = await _form(request)
    try:
        data = _as(ScheduleCreate, _definition(form) | _more(form))
        actor, meta = _meta(request)
        row = await schedules.create(
            conn, definition.create_fields(data), actor=actor, now=clock_now(request), meta=meta
        )
    except Exception as exc:  # noqa: BLE001 (shown on the form, which keeps what was typed)
        status, message = describe(exc)
        return page(
            request,
            "schedule_new.html",
            status=status,
            job_types=JOB_TYPES,
            form={k: str(form.get(k) or "")[:_MAX_FIELD] for k in form if k != "csrf"},
            error=message,
        )
    return back_to(f"/ui/schedules/{row['id']}", "created")


def _comparable(value: object) -> object:
    """A schedule row's value as the form's parsed value would be (floats, aware instants)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


async def _upstream_names(conn: Conn, depends_on: list[Any] | None) -> list[str]:
    """A schedule's upstreams as the form shows them: by name (an id whose schedule is gone
    as its number)."""
    ids = [int(u) for u in depends_on or []]
    found = await store.dependencies.upstream_candidates(conn, ids, [])
    names = {int(c["id"]): str(c["name"]) for c in found}
    return [names.get(i, str(i)) for i in ids]


async def _more_changed(
    conn: Conn, current: dict[str, Any], more: dict[str, Any]
) -> dict[str, Any]:
    """The "More" fields whose value differs from the schedule's; a column stored before it
    existed (NULL) reads as its default, and of the health policy only the thresholds that
    differ are sent."""
    now: dict[str, Any] = {
        "depends_on": await _upstream_names(conn, current.get("depends_on")),
        "labels": current.get("labels") or {},
        "dependency_timeout_seconds": current.get("dependency_timeout_seconds")
        or schedule.DEFAULTS["dependency_timeout_seconds"],
    }
    changed = {
        k: v
        for k, v in more.items()
        if k != "health_policy" and _comparable(v) != _comparable(now.get(k, current.get(k)))
    }
    policy = {**schedule.HEALTH_POLICY, **(current.get("health_policy") or {})}
    thresholds = {
        k: v
        for k, v in more.get("health_policy", {}).items()
        if _comparable(v) != _comparable(policy[k])
    }
    if thresholds:
        changed["health_policy"] = thresholds
    return changed


@post("/schedules/{schedule_id:str}/edit", opt=ADMIN, include_in_schema=False, status_code=303)
async def edit_schedule(
    request: Request[Any, Any, Any], schedule_id: PathId, conn: NamedDependency[Conn]
) -> Response[Any]:
    """Only the fields whose value differs from the version the form was made from change, and
    only if that version is still the schedule's (412 otherwise, as the API's If-Match). A
    refused edit shows the schedule again, its form holding what was typed."""
    form = await _form(request)
    try:
        return await _edit(request, schedule_id, conn, form)
    except NotFound:
        raise
    except Exception as exc:  # noqa: BLE001 (shown on the form, which keeps what was typed)
        status, message = describe(exc)
        typed = {k: str(form.get(k) or "")[:_MAX_FIELD] for k in form if k != "csrf"}
        return await schedule_view(
            request, conn, schedule_id, typed=typed, error=message, status=status
        )


async def _edit(
    request: Request[Any, Any, Any], schedule_id: int, conn: Conn, form: FormMultiDict
) -> Redirect:
    version = _version(form)
    current = await schedules.live(conn, schedule_id)
    submitted = _definition(form)
    changed = {
        k: v
        for k, v in submitted.items()
        if k not in ("name", "job_type") and _comparable(v) != _comparable(current.get(k))
    }
    # A field the form emptied is cleared (null), so switching cron <-> interval <-> once is
    # said explicitly; one that cannot be cleared is refused rather than silently kept.
    for name in _CLEARABLE:
        if name in form and not _field(form, name) and current.get(name) is not None:
            changed[name] = None
    for name in _REQUIRED_ON_EDIT:
        if name in form and not _field(form, name):
            raise ApiError(422, "cannot be emptied: give a value", field=name)
    changed |= await _more_changed(conn, current, _more(form))
    if not changed:
        return back_to(f"/ui/schedules/{schedule_id}")
    actor, meta = _meta(request)
    await schedules.update(
        conn,
        schedule_id,
        definition.patch_fields(_as(ScheduleUpdate, changed)),
        if_match={version},
        actor=actor,
        now=clock_now(request),
        meta=meta,
    )
    return back_to(f"/ui/schedules/{schedule_id}", "updated")


@post("/schedules/{schedule_id:str}/delete", opt=ADMIN, include_in_schema=False, status_code=303)
async def delete_schedule(
    request: Request[Any, Any, Any], schedule_id: PathId, conn: NamedDependency[Conn]
) -> Redirect:
    """Deleted only if the form's version is still the schedule's (412 otherwise)."""
    form = await _form(request)
    version = _version(form)
    actor, meta = _meta(request)
    await schedules.delete(
        conn, schedule_id, actor=actor, now=clock_now(request), meta=meta, if_match={version}
    )
    return back_to("/ui/schedules", "deleted")


@post(
    "/schedules/{schedule_id:str}/{action:str}",
    opt=OPERATOR,
    include_in_schema=False,
    status_code=303,
)
async def operate_schedule(
    request: Request[Any, Any, Any],
    schedule_id: PathId,
    action: Annotated[str, PathParameter(max_length=20)],
    conn: NamedDependency[Conn],
) -> Response[Any]:
    """pause, resume, trigger (a run due now) or backfill (the occurrences of a past range).

    Each form carries the schedule version it was made from and is refused (412) if the
    schedule changed since: the operator acts on what the page showed. The check and the
    action hold the schedule's row lock together. Trigger's form also carries a random
    idempotency key, so a double submit makes one run."""
    if action not in ("pause", "resume", "trigger", "backfill"):
        raise ApiError(404, f"no action {action!r} on a schedule")
    form = await _form(request)
    version = _version(form)
    actor, meta = _meta(request)
    now = clock_now(request)
    where = f"/ui/schedules/{schedule_id}"
    async with conn.transaction():
        row = await schedules.live(conn, schedule_id, lock=True)
        if row["version"] != version:
            raise VersionMismatch(row["version"])
        if action == "pause":
            await schedules.pause(conn, schedule_id, actor=actor, now=now, meta=meta)
        elif action == "resume":
            await schedules.resume(conn, schedule_id, actor=actor, now=now, meta=meta)
        elif action == "trigger":
            key = _field(form, "idempotency_key") or None
            await schedules.trigger(
                conn, schedule_id, actor=actor, now=now, meta=meta, idempotency_key=key
            )
        else:
            start, end = _utc(form, "from"), _utc(form, "to")
            result = await schedules.backfill(
                conn, schedule_id, start, end, actor=actor, now=now, meta=meta
            )
            return page(request, "backfill_done.html", s=row, start=start, end=end, result=result)
    return back_to(where, {"pause": "paused", "resume": "resumed"}.get(action, action + "ed"))


def _utc(form: FormMultiDict, name: str) -> datetime:
    raw = _field(form, name)
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "must be a date and time, e.g. 2026-12-04T10:00", field=name) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


ROUTES = [
    login_form,
    login,
    logout,
    retry_run,
    cancel_run,
    bulk_apply,
    create_schedule,
    edit_schedule,
    delete_schedule,
    operate_schedule,
]
