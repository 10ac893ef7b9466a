"""Pages as Jinja2 templates (package data, autoescaped), and errors as pages instead of JSON."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import psycopg
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig
from litestar.types import ExceptionHandlersMap
from markupsafe import escape
from psycopg_pool import PoolTimeout

from pgsched.app.api.auth import RANK
from pgsched.app.api.problems import ApiError
from pgsched.app.db import store
from pgsched.app.domain.errors import (
    InvalidDefinition,
    InvalidRequest,
    NotFound,
    Protected,
    VersionMismatch,
)
from pgsched.app.domain.jobs import InvalidPayload
from pgsched.app.domain.occurrences import InvalidSchedule
from pgsched.app.ui.session import SignInRequired, current

log = logging.getLogger("pgsched.api")

LOGIN_URL: Final = "/ui/login"

# The console loads nothing from elsewhere and runs no inline script, so the browser may refuse
# anything else: an injected script or style has nowhere to come from, and no other site may
# frame the console's buttons (clickjacking). Every answer under /ui carries these, errors and
# redirects included (a page is what a browser renders, whatever its status), and none is kept
# in a cache: a page shows one session's data.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: datetime | None, zone: str | None = None) -> str:
    """An instant as `2026-12-04 19:00:00 UTC`, or in `zone` with the zone's name."""
    if value is None:
        return "-"
    if zone and zone != "UTC":
        try:
            local = value.astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            return value.isoformat()
        return local.strftime("%Y-%m-%d %H:%M:%S ") + zone
    return value.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S UTC")


def utc_input(value: datetime | None) -> str:
    """An instant as a datetime-local field's value, in UTC (as the forms read it back)."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def plain(value: float | None) -> str:
    """A number as a form field holds it: `3600`, `2.5` (never `3600.0` or `1e+06`)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return seconds((end - start).total_seconds())


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pgsched.app.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=when, seconds=seconds, utc_input=utc_input, plain=plain)
    env.globals.update(duration=duration)
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(_environment()))


def page(request: Request[Any, Any, Any], name: str, status: int = 200, **context: Any) -> Template:  # noqa: ANN401
    """A signed-in page: the caller, the form token and what the caller's role may do."""
    session = current(request)
    rank = RANK[session.principal.role]
    return Template(
        template_name=name,
        status_code=status,
        context={
            "me": session.principal,
            "csrf": session.csrf,
            "can_operate": rank >= RANK["operator"],
            "can_admin": rank >= RANK["admin"],
            "path": request.url.path,
            "notice": None,
            **context,
        },
        headers={"Cache-Control": "no-store"},
    )


def back_to(path: str, notice: str | None = None) -> Redirect:
    """303 after a form: the browser GETs the page again (a reload repeats nothing)."""
    if notice:
        path += ("&" if "?" in path else "?") + f"done={notice}"
    return Redirect(path, status_code=303)


# What an error means to an operator, by the status it is answered with.
_STATUS: Final[dict[type[Exception], int]] = {
    NotFound: 404,
    VersionMismatch: 412,
    Protected: 409,
    InvalidDefinition: 422,
    InvalidRequest: 422,
    InvalidSchedule: 422,
    InvalidPayload: 422,
    store.NameTaken: 409,
    store.PartitionMissing: 422,
}


def describe(exc: Exception) -> tuple[int, str]:
    """The status and the operator's message for an error an action or page ran into."""
    if isinstance(exc, (PoolTimeout, psycopg.OperationalError)):
        status, message = 503, "the database is not reachable; try again shortly"
    elif isinstance(exc, ApiError):
        status = exc.status
        message = f"{exc.errors[0].field}: {exc.detail}" if exc.errors else exc.detail
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, VersionMismatch):
        status = 412
        message = "this form was stale: the schedule changed since the page was loaded; reload"
    elif isinstance(exc, store.PartitionMissing):
        status, message = 422, "the range reaches a month whose runs are no longer kept"
    elif isinstance(exc, tuple(_STATUS)):
        status, message = _STATUS.get(type(exc), 422), str(exc)
        field = getattr(exc, "field", None)  # the form's field at fault, named as the API does
        if isinstance(field, str) and not message.startswith(field):
            message = f"{field}: {message}"
    else:
        log.error("console: unexpected error", exc_info=exc)
        status, message = 500, "an internal error; the server's log has the details"
    return status, message


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    response = _error_response(request, exc)
    response.headers.update(SECURITY_HEADERS)
    return response


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, SignInRequired):
        return Redirect(LOGIN_URL, status_code=303)
    status, message = describe(exc)
    title = HTTPStatus(status).phrase
    signed_in = request.scope.get("state", {}).get("ui_session") is not None
    if signed_in:
        return page(request, "error.html", status=status, title=title, message=message)
    body = (
        "<!doctype html><meta charset=utf-8><title>pgsched</title>"
        f"<p>{status} {escape(message)}</p>"
        f'<p><a href="{LOGIN_URL}">Sign in</a></p>'
    )
    return Response(body, status_code=status, media_type=MediaType.HTML)


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    cls: _error_page
    for cls in (
        SignInRequired,
        HTTPException,
        ApiError,
        *_STATUS,
        PoolTimeout,
        psycopg.OperationalError,
        Exception,
    )
}
