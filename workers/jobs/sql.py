"""``sql`` jobs: one operator-written statement on the scheduler's database or a named DSN.

This module owns how such a statement runs: which DSN (``ctx.database_url`` or
``ctx.named_dsns[name]``), in one transaction with ``statement_timeout`` set to the job's
timeout, committed on success, and how the result is reported (status and rowcount per result,
and the first few rows as text). Executing the statement *is* the feature: only admins define
schedules (ADR 0012), so there is nothing to sanitise, only bounds to keep.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict

from workers.jobs.base import MAX_OUTPUT_BYTES, JobContext, Outcome, clip_head, timeout_error
from workers.jobs.secretrefs import Masker

__all__ = ["BACKSTOP_SECONDS", "MAX_ROWS", "run"]

MAX_ROWS = 5  # rows shown per result: enough to see what a statement returned
_MAX_CELL = 200
# The server's statement_timeout fires first and reports cleanly (SQLSTATE 57014); ours is the
# backstop for a hung connect or a dead server, a little later so the two do not race.
BACKSTOP_SECONDS = 1.0
# SQLSTATE classes that mean the statement itself is wrong (syntax, missing object, privilege,
# feature, bad data, transaction state): the same statement would fail the same way on every retry.
# 25 (invalid transaction state) is here because it means "cannot run inside a transaction
# block": the payload needs "autocommit": true.
_PERMANENT_CLASSES = frozenset({"42", "0A", "22", "25"})


def _dsn(payload: Mapping[str, object], ctx: JobContext) -> str | None:
    name = payload.get("dsn")
    if name is None:
        return ctx.database_url
    by_name = {k.lower(): v for k, v in ctx.named_dsns.items()}
    return by_name.get(str(name).lower())


def _password(dsn: str) -> str | None:
    """The DSN's password, so it can be masked too (libpq messages do not print it, but a
    misquoted URL could end up in an error)."""
    try:
        value = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(value) if value else None


def _cell(value: object, masker: Masker) -> str:
    # Masked before it is cut, so a long secret in a cell cannot leak its first 200 chars.
    text = "NULL" if value is None else masker.mask(str(value))
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL] + "..."


def _render(
    status: str | None,
    rowcount: int,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    masker: Masker,
) -> str:
    lines = [f"{status or 'OK'}; rowcount {rowcount}"]
    if columns:
        lines.append(" | ".join(columns))
        for row in rows:
            lines.append(" | ".join(_cell(v, masker) for v in row))
        if rowcount > len(rows):
            lines.append(f"({rowcount - len(rows)} more rows)")
    return "\n".join(lines)


async def _execute(
    dsn: str, payload: Mapping[str, object], ctx: JobContext, timeout_ms: int, masker: Masker
) -> str:
    params = payload.get("params")
    async with await psycopg.AsyncConnection.connect(
        dsn,
        # VACUUM, CREATE INDEX CONCURRENTLY and friends refuse to run in a transaction block.
        autocommit=payload.get("autocommit") is True,
        # Visible in pg_stat_activity, so a DBA can tell whose statement this is.
        application_name=f"pgsched {ctx.schedule_name} {ctx.idempotency_key}"[:63],
        connect_timeout=max(1, math.ceil(ctx.timeout_seconds)),
    ) as conn:
        async with conn.cursor() as cur:
            # Session-level: the connection is this job's alone and closed afterwards, and
            # with autocommit there is no transaction for a local setting to live in.
            # pgsched.idempotency_key lets a statement deduplicate its own side effects:
            # current_setting('pgsched.idempotency_key') is "run_id:attempt" (ADR 0004).
            await cur.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('pgsched.idempotency_key', %s, false)",
                (f"{timeout_ms}ms", ctx.idempotency_key),
            )
            statement = str(payload["statement"])
            # Without params psycopg sends the text as is (several statements allowed);
            # with params it binds them server side (one statement).
            await cur.execute(statement, list(params) if isinstance(params, list) else None)
            parts: list[str] = []
            while True:
                columns = [c.name for c in cur.description or ()]
                rows = await cur.fetchmany(MAX_ROWS) if columns else []
                parts.append(_render(cur.statusmessage, cur.rowcount, columns, rows, masker))
                if not cur.nextset():
                    break
        await conn.commit()  # a no-op under autocommit
    return "\n".join(parts)


async def run(payload: Mapping[str, object], ctx: JobContext, masker: Masker) -> Outcome:
    """Run a validated, secret-resolved ``sql`` payload; never raises for job failures."""
    dsn = _dsn(payload, ctx)
    if dsn is None:
        name = str(payload.get("dsn"))
        return Outcome(
            "failed",
            retryable=False,
            error=f"unknown DSN name {name!r} (set PGSCHED_SQL_DSN_{name.upper()})",
        )
    secret = _password(dsn)
    if secret:
        masker = masker.with_values([secret])
    timeout_ms = max(1, math.ceil(ctx.timeout_seconds * 1000))
    try:
        async with asyncio.timeout(ctx.timeout_seconds + BACKSTOP_SECONDS):
            output = await _execute(dsn, payload, ctx, timeout_ms, masker)
    except TimeoutError:
        return Outcome("timeout", retryable=True, error=timeout_error(ctx.timeout_seconds))
    except psycopg.errors.QueryCanceled as exc:
        # 57014: our statement_timeout (or a DBA's pg_cancel_backend); either way, time.
        return Outcome(
            "timeout",
            retryable=True,
            error=masker.mask(f"{timeout_error(ctx.timeout_seconds)}: {_message(exc)}"),
        )
    except psycopg.Error as exc:
        code = exc.sqlstate or ""
        return Outcome(
            "failed",
            retryable=code[:2] not in _PERMANENT_CLASSES,
            error=masker.mask(_message(exc)),
        )
    return Outcome(
        "succeeded", retryable=False, output=clip_head(masker.mask(output), MAX_OUTPUT_BYTES)
    )


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.sqlstate else None
    text = primary or str(exc) or type(exc).__name__
    return f"SQLSTATE {exc.sqlstate}: {text}" if exc.sqlstate else f"{type(exc).__name__}: {text}"
