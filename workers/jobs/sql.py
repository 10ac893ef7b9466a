"""``sql`` jobs: one operator-written statement on the scheduler's database or a named DSN.

This module owns how such a statement runs: as whom and where, in one transaction with
``statement_timeout`` set to the job's timeout, committed on success, and how the result is
reported (status and rowcount per result, and the first few rows as text). Executing the
statement *is* the feature: only admins define schedules (ADR 0012), so there is nothing to
sanitise, only bounds to keep.

As whom (ADR 0021): never as pgsched itself. A payload without ``dsn`` connects to the worker's
database as the login role ``pgsched_job`` (migration 0016: a member of no pgsched role, no
privilege on the schema pgsched): the worker's DSN without its user, password and options, with
the password in ``PGSCHED_SQL_JOB_PASSWORD`` if the server asks for one; ``"dsn": NAME``
connects with ``PGSCHED_SQL_DSN_<NAME>``. Either way, a session whose role or login is, or may
become, one of pgsched's roles is refused before the statement runs: a member of one (directly
or not), a superuser or CREATEROLE role (either can make itself one), or a login whose current
role is another (SET ROLE is no boundary: the statement could SET ROLE NONE).
A connection the server refuses for who it is (no such role, wrong or missing password,
pg_hba.conf) fails without retry and says which setting to fix.

A job's backend must not outlive its worker: ``client_connection_check_interval`` (PostgreSQL
14 and later) makes the server notice a vanished client within a second and cancel the query,
so a ``kill -9`` of the worker stops its statement instead of letting it run to completion.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsched.workers.jobs.base import (
    MAX_OUTPUT_BYTES,
    JobContext,
    Outcome,
    clip_head,
    timeout_error,
)
from pgsched.workers.jobs.secretrefs import Masker

__all__ = ["BACKSTOP_SECONDS", "CHECK_INTERVAL_MS", "JOB_ROLE", "MAX_ROWS", "run"]

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
# The login role a job without "dsn" connects as (migration 0016), and where its password is.
JOB_ROLE = "pgsched_job"
JOB_PASSWORD_VARIABLE = "PGSCHED_SQL_JOB_PASSWORD"  # noqa: S105 - its name, not a password
# How often the server checks, while a job's query runs, that the worker is still connected.
CHECK_INTERVAL_MS = 1000
# The server refused the connection for who is connecting: retrying cannot help until an
# operator changes a setting. (libpq gives these no SQLSTATE, only the server's message.)
_REFUSED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|role \S+ does not exist"
    r"|is not permitted to log in|permission denied for database|no password supplied",
)


@dataclass(frozen=True, slots=True)
class _Target:
    dsn: str
    # For messages: "the job role pgsched_job" or "DSN 'reporting'".
    label: str
    # What to set when the server refuses the connection.
    fix: str


def _target(payload: Mapping[str, object], ctx: JobContext) -> _Target | None:
    """Where and as whom the statement runs; None when the payload names an unknown DSN."""
    name = payload.get("dsn")
    if name is not None:
        by_name = {k.lower(): v for k, v in ctx.named_dsns.items()}
        dsn = by_name.get(str(name).lower())
        if dsn is None:
            return None
        variable = f"PGSCHED_SQL_DSN_{str(name).upper()}"
        return _Target(dsn, f"DSN {str(name)!r}", f"check {variable}")
    # The worker's database, as the job role: the worker's own user and password stay out, and
    # so do its startup options (a "-c role=…" there would be the worker's, not the job's).
    params = conninfo_to_dict(ctx.database_url)
    params.pop("password", None)
    params.pop("options", None)
    params["user"] = JOB_ROLE
    if password := ctx.environ.get(JOB_PASSWORD_VARIABLE):
        params["password"] = password
    fix = (
        f"set {JOB_PASSWORD_VARIABLE} (or let pg_hba.conf admit {JOB_ROLE}), or name a"
        ' database with "dsn" and PGSCHED_SQL_DSN_<NAME> (ADR 0021)'
    )
    return _Target(make_conninfo("", **params), f"the job role {JOB_ROLE}", fix)


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


# Run first on every job connection, before the statement. Session-level: the connection is
# this job's alone and closed afterwards, and with autocommit there is no transaction for a
# local setting to live in. pgsched.idempotency_key lets a statement deduplicate its own side
# effects: current_setting('pgsched.idempotency_key') is "run_id:attempt" (ADR 0004). The last
# columns say whether this session could act as pgsched (ADR 0021), for the current role and
# for the login (session_user) alike, since the statement may SET ROLE NONE back to the login:
# a current role that is not the login (a '-c role=...' in the DSN's options); a superuser or
# CREATEROLE role (which can grant itself any non-superuser role: GRANT pgsched_owner TO me);
# membership in a pgsched role, direct or inherited, used or not (pg_has_role 'MEMBER' is true
# for any chain of grants, and for a superuser whatever the role).
_SESSION = """
SELECT set_config('statement_timeout', %(timeout)s, false),
       set_config('pgsched.idempotency_key', %(key)s, false),
       CASE WHEN current_setting('server_version_num')::int >= 140000
            THEN set_config('client_connection_check_interval', %(check)s, false) END,
       current_user AS role,
       (SELECT string_agg(r.rolname, ', ' ORDER BY r.rolname) FROM pg_roles r
        WHERE r.rolname IN ('pgsched_owner', 'pgsched_api', 'pgsched_worker', 'pgsched_operator')
          AND (pg_has_role(current_user, r.oid, 'MEMBER')
               OR pg_has_role(session_user, r.oid, 'MEMBER'))) AS pgsched_roles,
       session_user AS login,
       (SELECT string_agg(u.rolname || ' is '
                          || CASE WHEN u.rolsuper THEN 'a superuser' ELSE 'CREATEROLE' END,
                          '; ' ORDER BY u.rolname)
        FROM pg_roles u
        WHERE u.rolname IN (current_user, session_user)
          AND (u.rolsuper OR u.rolcreaterole)) AS powers
"""


def _why_refused(session: Sequence[object] | None) -> str | None:
    """Why this job session could act as pgsched (from _SESSION's row), or None."""
    if session is None:
        return "its session could not be checked"
    role, roles, login, powers = session[3], session[4], session[5], session[6]
    if login != role:
        return f"its login {login} is not its role {role} (SET ROLE NONE leads back to it)"
    if powers is not None:
        return f"{powers}"
    if roles is not None:
        return f"it can act as {roles}"
    return None


class _Refused(Exception):
    """The job's session could act as one of pgsched's roles; the statement was not run."""


async def _execute(
    target: _Target, payload: Mapping[str, object], ctx: JobContext, timeout_ms: int, masker: Masker
) -> str:
    params = payload.get("params")
    async with await psycopg.AsyncConnection.connect(
        target.dsn,
        # VACUUM, CREATE INDEX CONCURRENTLY and friends refuse to run in a transaction block.
        autocommit=payload.get("autocommit") is True,
        # Visible in pg_stat_activity, so a DBA can tell whose statement this is.
        application_name=f"pgsched {ctx.schedule_name} {ctx.idempotency_key}"[:63],
        connect_timeout=max(1, math.ceil(ctx.timeout_seconds)),
    ) as conn:
        async with conn.cursor() as cur:
            await cur.execute(
                _SESSION,
                {
                    "timeout": f"{timeout_ms}ms",
                    "key": ctx.idempotency_key,
                    "check": f"{CHECK_INTERVAL_MS}ms",
                },
            )
            session = await cur.fetchone()
            why = _why_refused(session)
            if why is not None:
                role = session[3] if session else "?"
                raise _Refused(
                    f"refusing to run as {role} on {target.label}: {why};"
                    f" sql jobs run as a role outside pgsched's (ADR 0021)"
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
    target = _target(payload, ctx)
    if target is None:
        name = str(payload.get("dsn"))
        return Outcome(
            "failed",
            retryable=False,
            error=f"unknown DSN name {name!r} (set PGSCHED_SQL_DSN_{name.upper()})",
        )
    secret = _password(target.dsn)
    if secret:
        masker = masker.with_values([secret])
    timeout_ms = max(1, math.ceil(ctx.timeout_seconds * 1000))
    try:
        async with asyncio.timeout(ctx.timeout_seconds + BACKSTOP_SECONDS):
            output = await _execute(target, payload, ctx, timeout_ms, masker)
    except TimeoutError:
        return Outcome("timeout", retryable=True, error=timeout_error(ctx.timeout_seconds))
    except (_Refused, psycopg.Error) as exc:
        return _failure(exc, target, ctx, masker)
    return Outcome(
        "succeeded", retryable=False, output=clip_head(masker.mask(output), MAX_OUTPUT_BYTES)
    )


def _failure(
    exc: _Refused | psycopg.Error, target: _Target, ctx: JobContext, masker: Masker
) -> Outcome:
    if isinstance(exc, _Refused):
        return Outcome("failed", retryable=False, error=masker.mask(str(exc)))
    if isinstance(exc, psycopg.errors.QueryCanceled):
        # 57014: our statement_timeout (or a DBA's pg_cancel_backend); either way, time.
        return Outcome(
            "timeout",
            retryable=True,
            error=masker.mask(f"{timeout_error(ctx.timeout_seconds)}: {_message(exc)}"),
        )
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        text = str(exc).strip()
        if _REFUSED.search(text):
            first = (text.splitlines() or [""])[0]
            return Outcome(
                "failed",
                retryable=False,
                error=masker.mask(f"cannot connect as {target.label}: {first}; {target.fix}"),
            )
    code = exc.sqlstate or ""
    return Outcome(
        "failed",
        retryable=code[:2] not in _PERMANENT_CLASSES,
        error=masker.mask(_message(exc)),
    )


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.sqlstate else None
    text = primary or str(exc) or type(exc).__name__
    return f"SQLSTATE {exc.sqlstate}: {text}" if exc.sqlstate else f"{type(exc).__name__}: {text}"
