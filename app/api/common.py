"""Small pieces every route module uses: role declarations, parameters, ETags, the clock."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, get_args

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import ResponseHeader
from litestar.handlers.base import BaseRouteHandler
from litestar.params import ParameterKwarg, PathParameter, QueryParameter

from pgsched.app.api.problems import ApiError
from pgsched.app.api.schemas import BIGINT, Id, Name, QueueName

# Every route handler declares the least role it needs (app.api.auth; default deny).
PUBLIC: Final = {"role": "public"}
VIEWER: Final = {"role": "viewer"}
OPERATOR: Final = {"role": "operator"}
ADMIN: Final = {"role": "admin"}

MAX_PAGE: Final = 200
DEFAULT_PAGE: Final = 50

# What msgspec's lenient conversion reads as seconds since the epoch.
_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOUNDS: Final = ("min_length", "max_length", "pattern", "ge", "gt", "le", "lt")


def bounds(annotated: object) -> dict[str, Any]:
    """The msgspec constraints of a body type from app.api.schemas (`QueueName`: 1 to 100
    characters, no NUL) as keywords for a Litestar `Parameter`.

    A query or path parameter must restate them: Litestar builds its own annotation from the
    `Parameter` and drops the msgspec `Meta` of the parameter's type, so `QueueName | None` as a
    parameter type alone would check nothing (a NUL reached PostgreSQL: a 500). Deriving them
    here keeps one definition for bodies and parameters, and puts them in the OpenAPI document.
    """
    metas = [m for m in get_args(annotated)[1:] if isinstance(m, msgspec.Meta)]
    if not metas:
        raise TypeError(f"{annotated!r} carries no msgspec.Meta")
    return {k: v for k in _BOUNDS for m in metas if (v := getattr(m, k)) is not None}


# An id in a path is declared `{schedule_id:str}` and typed `PathId`: Litestar's `int` converter
# is Python's int(), which reads `+1`, ` 1`, `1_0` (10) and other scripts' digits (U+0661) as
# numbers, and its failures are a bare 404 from the router. As a string the segment reaches
# `strict_path_ids` (a guard), so every spelling but the document's integer is one 422 naming
# the parameter, like an id out of range (ADR 0014, "Bounded input").
PathId = Annotated[int, PathParameter(**bounds(Id))]
# One element of an If-Match list (RFC 9110 8.8.3: `[W/] DQUOTE *etagc DQUOTE`) and the comma or
# end after it; empty list elements are allowed (RFC 9110 5.6.1).
_ETAG_ITEM: Final = re.compile(
    r'[ \t,]*(?P<weak>W/)?"(?P<opaque>[\x21\x23-\x7e\x80-\U0010ffff]*)"[ \t]*(?:,[ \t,]*|$)'
)
_VERSION: Final = re.compile(r"0|[1-9][0-9]{0,18}")  # as etag() writes a version
PATH_ID: Final = re.compile(r"[1-9][0-9]{0,18}")  # fullmatch; re's [0-9] is ASCII only
ScheduleIdFilter = Annotated[
    int | None,
    QueryParameter(required=False, description="Only this schedule's runs.", **bounds(Id)),
]
QueueFilter = Annotated[
    str | None, QueryParameter(required=False, description="Only this queue.", **bounds(QueueName))
]
NameFilter = Annotated[
    str | None,
    QueryParameter(
        required=False, description="Only the live schedule of this name.", **bounds(Name)
    ),
]
Limit = Annotated[
    int,
    QueryParameter(
        ge=1,
        description=f"Page size; values above {MAX_PAGE} are treated as {MAX_PAGE}.",
    ),
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=512, description="`next_cursor` of the previous page; opaque.", required=False
    ),
]

ETAG_HEADER: Final = ResponseHeader(
    name="ETag",
    description="The schedule's version; send it back in If-Match to update safely.",
    documentation_only=True,
)

LOCATION_HEADER: Final = ResponseHeader(
    name="Location", description="The new schedule's URL.", documentation_only=True
)


def strict_path_ids(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Refuse a path id that is not written as the OpenAPI integer: `^[1-9][0-9]{0,18}$`.

    Runs as an application guard after authorisation and before parameters are converted
    (msgspec's lenient conversion would read `1.0` and `1e0` as 1); the value's range is the
    `PathId` bounds' business.
    """
    if "console" in handler.opt:
        return  # the console's guard checks its session first, then ids (app.ui.session)
    check_path_ids(connection, handler)
    check_query_ints(connection, handler)


_WHOLE: Final = re.compile(r"0|[1-9][0-9]{0,39}")  # fullmatch; ASCII digits, no sign or zeros


def check_query_ints(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Refuse an integer query filter (`schedule_id`, `limit`, `count`) not written as one.

    msgspec reads `schedule_id=null` as "no filter" for an `int | None` parameter, so a script
    whose id came out as the text `null` listed every schedule's runs as if they were its own;
    and `abc` was answered with the validator's own words ("Expected `int | null`, got `str`").
    Every value that is not a whole number within the parameter's bounds is one plain 422.
    """
    for name, declared in handler.parsed_fn_signature.parameters.items():
        kwarg = declared.kwarg_definition
        if (
            declared.annotation not in (int, int | None)
            or not isinstance(kwarg, ParameterKwarg)
            or kwarg.header is not None
            or kwarg.cookie is not None
            or name in connection.path_params
        ):
            continue
        wire = kwarg.query or kwarg.name or name
        low = int(kwarg.ge) if kwarg.ge is not None else None
        high = int(kwarg.le) if kwarg.le is not None else None
        for raw in connection.query_params.getall(wire, []):
            if (
                _WHOLE.fullmatch(raw)
                and (low is None or int(raw) >= low)
                and (high is None or int(raw) <= high)
            ):
                continue
            if high is not None and high < BIGINT:
                message = f"must be a whole number from {low} to {high}"
            else:
                message = f"must be a whole number >= {low}"
            raise ApiError(422, f"{message}; got {raw[:40]!r}", field=wire, source="query")


def check_path_ids(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """strict_path_ids' check itself, for a guard that runs it later (the console's)."""
    signature = handler.parsed_fn_signature.parameters
    for name, raw in connection.path_params.items():
        declared = signature.get(name)
        if declared is not None and declared.annotation is int and not PATH_ID.fullmatch(raw):
            raise ApiError(
                422,
                f"must be an integer from 1 to {BIGINT} in ASCII digits, without sign, spaces "
                "or leading zeros",
                field=name,
                source="path",
            )


def page_size(limit: int) -> int:
    return min(limit, MAX_PAGE)


def clock_now(request: Request[Any, Any, Any]) -> datetime | None:
    """The `now` to bind in SQL: None in production (the database decides, ADR 0003)."""
    now: datetime | None = request.app.state.clock.db_now()
    return now


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> set[int] | None:
    """The versions an If-Match header accepts; None for no header or `*` (any version).

    If-Match uses the strong comparison (RFC 9110 13.1.1 and 13.1.1.2): a weak tag (`W/"3"`)
    never matches, and a strong one only when its opaque tag is exactly what `etag` writes,
    so `"03"` or `"+3"` match nothing. A header that is not a list of entity tags matches
    nothing either (412). Tags are taken whole before the list is split, as a tag may hold a
    comma.
    """
    if value is None or value.strip(" \t") == "*":
        return None
    versions: set[int] = set()
    rest = value
    while True:
        item = _ETAG_ITEM.match(rest)
        if item is None:
            return set()  # not a list of entity tags: no version matches
        if item["weak"] is None and _VERSION.fullmatch(item["opaque"]):
            versions.add(int(item["opaque"]))
        rest = rest[item.end() :]
        if not rest:
            return versions


def aware(value: datetime | None, field: str, request: Request[Any, Any, Any]) -> datetime | None:
    """A date-time query parameter as the OpenAPI document types it: RFC 3339 with an offset.

    Litestar converts query values leniently, and a number (`since=1700000000`) became seconds
    since the epoch, so the raw text is checked too.
    """
    if value is None:
        return None
    raw = request.query_params.get(field)
    if raw is not None and _NUMBER.fullmatch(raw.strip()):
        raise ApiError(
            422, "must be an RFC 3339 date-time, not a number", field=field, source="query"
        )
    if value.utcoffset() is None:
        raise ApiError(
            422, "must carry a time zone (RFC 3339, e.g. ...Z)", field=field, source="query"
        )
    return value
