"""The one executor of named SQL, and the one place database errors become pgsched's errors.

Every store module runs its statements through `rows`, `row`, `one` or `execute` here, so a
constraint the schema enforces (a live schedule's unique name, a token's unique name, the monthly
partitions) surfaces as the same exception whichever statement hit it (ADR 0025).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from pgsched.app.db.sql import query
from pgsched.otel import spans

Conn: TypeAlias = AsyncConnection[DictRow]
Row: TypeAlias = dict[str, Any]
Params: TypeAlias = Mapping[str, object] | None

# SQLSTATE 23514 with this text is PostgreSQL's "no partition of relation … found for row".
_NO_PARTITION = "no partition of relation"


class PartitionMissing(RuntimeError):
    """A row's month has no partition: maintenance is behind, or the month was retired."""


class NameTaken(RuntimeError):
    """A live schedule already has this name."""


class TokenNameTaken(RuntimeError):
    """A token with this name exists (names stay taken after revocation, for the audit trail)."""


def _translated(exc: psycopg.Error, params: Params) -> Exception | None:
    """pgsched's own exception for a database error the schema raises on purpose, or None."""
    if isinstance(exc, psycopg.errors.CheckViolation) and _NO_PARTITION in str(exc):
        return PartitionMissing(str(exc).splitlines()[0])
    if isinstance(exc, psycopg.errors.UniqueViolation):
        if exc.diag.constraint_name == "schedule_name_live":
            return NameTaken("a schedule with this name exists")
        if exc.diag.constraint_name == "api_token_name_key":
            name = (params or {}).get("name")
            return TokenNameTaken(f"a token named {name!r} exists")
    return None


def translated(exc: psycopg.Error, params: Params) -> Exception:
    """`exc` as pgsched's own exception when the schema raised it on purpose, else itself."""
    return _translated(exc, params) or exc


async def _run(conn: Conn, name: str, params: Params) -> psycopg.AsyncCursor[DictRow]:
    try:
        return await conn.execute(query(name), params)
    except psycopg.Error as exc:
        translated = _translated(exc, params)
        if translated is None:
            raise
        raise translated from exc


async def rows(conn: Conn, name: str, params: Params = None) -> list[Row]:
    """Run the named statement; every row it returned."""
    cur = await _run(conn, name, params)
    return await cur.fetchall()


async def row(conn: Conn, name: str, params: Params = None) -> Row | None:
    """Run the named statement; its first row, or None."""
    found = await rows(conn, name, params)
    return found[0] if found else None


async def one(conn: Conn, name: str, params: Params = None) -> Row:
    """Run a statement that always returns a row (an aggregate, an INSERT … RETURNING)."""
    found = await row(conn, name, params)
    if found is None:
        raise RuntimeError(f"{name} returned no row")
    return found


async def execute(conn: Conn, name: str, params: Params = None) -> int:
    """Run a statement that returns no rows; how many rows it touched."""
    cur = await _run(conn, name, params)
    return cur.rowcount


def trace_id(given: str | None) -> str | None:
    """An event's trace id: the one given, else the current span's (an API request's, say), so
    an operator can go from any event to the trace of what caused it."""
    return given or (spans.trace_context() or {}).get("trace_id")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime in a JSON value")
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def jsonb(value: object) -> Jsonb:
    """Adapt a Python value for a `::jsonb` parameter (datetimes as RFC 3339)."""
    return Jsonb(value, dumps=lambda v: json.dumps(v, default=_json_default))


async def db_now(conn: Conn, now: datetime | None) -> datetime:
    """The instant the database decides with in this transaction (or `now` when given)."""
    result: datetime = (await one(conn, "db_now", {"now": now}))["now"]
    return result
