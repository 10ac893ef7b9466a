"""Small pieces every route module uses: role declarations, parameters, ETags, the clock."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from litestar import Request
from litestar.datastructures import ResponseHeader
from litestar.params import PathParameter, QueryParameter

from app.api.problems import ApiError
from app.api.schemas import BIGINT

# Every route handler declares the least role it needs (app.api.auth; default deny).
PUBLIC: Final = {"role": "public"}
VIEWER: Final = {"role": "viewer"}
OPERATOR: Final = {"role": "operator"}
ADMIN: Final = {"role": "admin"}

MAX_PAGE: Final = 200
DEFAULT_PAGE: Final = 50

PathId = Annotated[int, PathParameter(ge=1, le=BIGINT)]
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


def page_size(limit: int) -> int:
    return min(limit, MAX_PAGE)


def clock_now(request: Request[Any, Any, Any]) -> datetime | None:
    """The `now` to bind in SQL: None in production (the database decides, ADR 0003)."""
    now: datetime | None = request.app.state.clock.db_now()
    return now


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> set[int] | None:
    """The versions an If-Match header accepts; None for no header or `*` (any version)."""
    if value is None or value.strip() == "*":
        return None
    versions: set[int] = set()
    for item in value.split(","):
        tag = item.strip().removeprefix("W/").strip('"')
        if tag.isdigit() and len(tag) < 19:
            versions.add(int(tag))
    return versions


def aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ApiError(
            422, "must carry a time zone (RFC 3339, e.g. ...Z)", field=field, source="query"
        )
    return value
