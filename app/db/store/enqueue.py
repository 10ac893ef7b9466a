"""Enqueue: runs with arguments of their own, in the caller's transaction (ADR 0027).

Each function runs one named statement (app/db/queries/enqueue.sql). They take any psycopg
connection, whatever its row factory (a library caller's own connection), and read rows as
dicts through a cursor of their own. The sync twins run the same named statements through a
sync connection, so a sync caller needs no event loop (ADR 0027).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.app.db.sql import query
from pgsched.app.db.store.executor import Params, Row, jsonb, translated

AnyAsyncConn = psycopg.AsyncConnection[Any]
AnySyncConn = psycopg.Connection[Any]


async def _rows(conn: AnyAsyncConn, name: str, params: Params) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        try:
            await cur.execute(query(name), params)
        except psycopg.Error as exc:
            error = translated(exc, params)
            if error is exc:
                raise
            raise error from exc
        return await cur.fetchall()


def _rows_sync(conn: AnySyncConn, name: str, params: Params) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute(query(name), params)
        except psycopg.Error as exc:
            error = translated(exc, params)
            if error is exc:
                raise
            raise error from exc
        return cur.fetchall()


def _definition_params(job: str | int) -> dict[str, object]:
    if isinstance(job, int):
        return {"name": None, "id": job}
    return {"name": job, "id": None}


def _enqueue_params(
    schedule_id: int,
    version: int,
    items: Sequence[Mapping[str, object]],
    *,
    actor: str,
    now: datetime | None,
    trace_context: Mapping[str, str] | None,
    meta: Mapping[str, object] | None,
) -> dict[str, object]:
    return {
        "schedule_id": schedule_id,
        "version": version,
        "items": jsonb([{"n": n, **item} for n, item in enumerate(items)]),
        "actor": actor,
        "now": now,
        "trace_context": jsonb(trace_context) if trace_context else None,
        "meta": jsonb(meta) if meta else _NO_META,  # no JSON dump for the usual empty meta
    }


_NO_META = "{}"


async def job_definition(conn: AnyAsyncConn, job: str | int) -> Row | None:
    """The live definition called `job` (a name) or with that id; None if there is none."""
    found = await _rows(conn, "job_definition", _definition_params(job))
    return found[0] if found else None


def job_definition_sync(conn: AnySyncConn, job: str | int) -> Row | None:
    found = _rows_sync(conn, "job_definition", _definition_params(job))
    return found[0] if found else None


async def enqueue_runs(
    conn: AnyAsyncConn,
    schedule_id: int,
    version: int,
    items: Sequence[Mapping[str, object]],
    *,
    actor: str,
    now: datetime | None,
    trace_context: Mapping[str, str] | None = None,
    meta: Mapping[str, object] | None = None,
) -> list[Row]:
    """Enqueue `items` (payload override, queue, priority, run_at, max_attempts,
    timeout_seconds, key; absent or None = the definition's) to the definition at `version`.
    Rows as enqueue_runs returns them: `fresh`, then the run's id, due_at, created_at and
    idempotency_key (None when no run was made; the service builds the rest, ADR 0034)."""
    params = _enqueue_params(
        schedule_id, version, items, actor=actor, now=now, trace_context=trace_context, meta=meta
    )
    return await _rows(conn, "enqueue_runs", params)


def enqueue_runs_sync(
    conn: AnySyncConn,
    schedule_id: int,
    version: int,
    items: Sequence[Mapping[str, object]],
    *,
    actor: str,
    now: datetime | None,
    trace_context: Mapping[str, str] | None = None,
    meta: Mapping[str, object] | None = None,
) -> list[Row]:
    params = _enqueue_params(
        schedule_id, version, items, actor=actor, now=now, trace_context=trace_context, meta=meta
    )
    return _rows_sync(conn, "enqueue_runs", params)


async def runs_by_key(conn: AnyAsyncConn, schedule_id: int, keys: Sequence[str]) -> list[Row]:
    """The runs made earlier under these idempotency keys of the definition."""
    return await _rows(conn, "runs_by_key", {"schedule_id": schedule_id, "keys": list(keys)})


def runs_by_key_sync(conn: AnySyncConn, schedule_id: int, keys: Sequence[str]) -> list[Row]:
    return _rows_sync(conn, "runs_by_key", {"schedule_id": schedule_id, "keys": list(keys)})
