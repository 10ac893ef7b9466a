"""``sql`` jobs on a real PostgreSQL: a fresh migrated database per test (``dsn`` fixture).

A job without "dsn" logs in as ``pgsched_job`` (ADR 0021), which may do in a test database what
an operator grants it: here CREATE on the schema public (the ``job_dsn`` fixture), nothing on
pgsched's schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsched.workers.jobs import execute
from pgsched.workers.jobs.sql import JOB_ROLE, _target
from tests.conftest import ROOT, connect
from tests.db.roles import as_user, login_role
from tests.jobs.conftest import MakeCtx


@pytest.fixture
async def job_dsn(dsn: str) -> AsyncIterator[str]:
    """The test database, where the job role may create tables in public (an operator's grant);
    jobs are given this superuser DSN as the worker's and log in as pgsched_job themselves."""
    conn = await connect(dsn)
    try:
        await conn.execute("GRANT CREATE ON SCHEMA public TO pgsched_job")
    finally:
        await conn.close()
    yield dsn


async def test_statements_run_commit_and_report_rowcounts(job_dsn: str, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(database_url=job_dsn)
    setup = "CREATE TABLE public.t (a int); INSERT INTO public.t SELECT generate_series(1, 12)"
    outcome = await execute("sql", {"statement": setup}, ctx)
    assert outcome.status == "succeeded"
    assert outcome.output == "CREATE TABLE; rowcount -1\nINSERT 0 12; rowcount 12"
    # committed: a second job (a new connection) sees the rows
    select = await execute(
        "sql", {"statement": "SELECT a, a * 2 AS b FROM public.t ORDER BY a"}, ctx
    )
    assert select.output == "\n".join(
        [
            "SELECT 12; rowcount 12",
            "a | b",
            "1 | 2",
            "2 | 4",
            "3 | 6",
            "4 | 8",
            "5 | 10",
            "(7 more rows)",
        ]
    )
    update = await execute("sql", {"statement": "UPDATE public.t SET a = a + 1 WHERE a > 10"}, ctx)
    assert update.output == "UPDATE 2; rowcount 2"


async def test_statement_timeout_is_the_job_timeout(job_dsn: str, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(database_url=job_dsn, timeout_seconds=0.5)
    shown = await execute("sql", {"statement": "SHOW statement_timeout"}, ctx)
    assert shown.output is not None
    assert shown.output.splitlines()[-1] == "500ms"
    slept = await execute("sql", {"statement": "SELECT pg_sleep(5)"}, ctx)
    assert (slept.status, slept.retryable) == ("timeout", True)
    assert slept.error is not None
    assert slept.error.startswith("timed out after 0.5 s: SQLSTATE 57014")
    assert slept.duration_ms < 3_000


async def test_nothing_is_committed_when_the_statement_fails(
    job_dsn: str, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx(database_url=job_dsn)
    statement = "CREATE TABLE public.u (a int); SELECT 1 / 0"
    outcome = await execute("sql", {"statement": statement}, ctx)
    assert (outcome.status, outcome.retryable) == ("failed", False)  # 22012: data exception
    assert outcome.error == "SQLSTATE 22012: division by zero"
    async with await psycopg.AsyncConnection.connect(job_dsn) as conn:
        cur = await conn.execute("SELECT to_regclass('public.u')")
        assert await cur.fetchone() == (None,)


async def test_syntax_error_is_not_retryable(job_dsn: str, make_ctx: MakeCtx) -> None:
    outcome = await execute("sql", {"statement": "SELEC 1"}, make_ctx(database_url=job_dsn))
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("SQLSTATE 42601: syntax error")


async def test_named_dsn_and_unknown_name(dsn: str, make_ctx: MakeCtx) -> None:
    async with login_role(dsn) as reporting:  # a role of the operator's, outside pgsched's
        ctx = make_ctx(named_dsns={"reporting": reporting})  # database_url points nowhere
        named = await execute("sql", {"statement": "SELECT 1 AS one", "dsn": "REPORTING"}, ctx)
        assert named.status == "succeeded"
    unknown = await execute("sql", {"statement": "SELECT 1", "dsn": "billing"}, ctx)
    assert (unknown.status, unknown.retryable) == ("failed", False)
    assert unknown.error == "unknown DSN name 'billing' (set PGSCHED_SQL_DSN_BILLING)"


async def test_autocommit_runs_what_a_transaction_block_refuses(
    job_dsn: str, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx(database_url=job_dsn)
    made = await execute("sql", {"statement": "CREATE TABLE public.v (a int)"}, ctx)
    assert made.status == "succeeded", made.error
    refused = await execute("sql", {"statement": "VACUUM public.v"}, ctx)
    assert (refused.status, refused.retryable) == ("failed", False)
    assert refused.error is not None
    assert refused.error.startswith("SQLSTATE 25001")
    ok = await execute("sql", {"statement": "VACUUM public.v", "autocommit": True}, ctx)
    assert (ok.status, ok.output) == ("succeeded", "VACUUM; rowcount -1")


async def test_the_idempotency_key_is_visible_to_the_statement(
    job_dsn: str, make_ctx: MakeCtx
) -> None:
    statement = "SELECT current_setting('pgsched.idempotency_key') AS k, application_name"
    statement += " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    outcome = await execute("sql", {"statement": statement}, make_ctx(database_url=job_dsn))
    assert (
        outcome.output
        == "SELECT 1; rowcount 1\nk | application_name\n7:2 | pgsched test-schedule 7:2"
    )


async def test_unreachable_database_is_retryable(make_ctx: MakeCtx) -> None:
    outcome = await execute("sql", {"statement": "SELECT 1"}, make_ctx(timeout_seconds=2))
    assert (outcome.status, outcome.retryable) == ("failed", True)


async def test_params_carry_secrets_and_results_are_masked(job_dsn: str, make_ctx: MakeCtx) -> None:
    secret = "pg-s3cret-value"  # noqa: S105 - a test value
    ctx = make_ctx(database_url=job_dsn, environ={"PGSCHED_SECRET_DB_TOKEN": secret})
    payload = {
        "statement": "SELECT %s::text AS v, length(%s)",
        "params": [{"$secret": "DB_TOKEN"}] * 2,
    }
    outcome = await execute("sql", payload, ctx)
    assert outcome.status == "succeeded"
    assert outcome.output == "SELECT 1; rowcount 1\nv | length\n*** | 15"
    assert secret not in json.dumps(outcome.as_json())


async def test_a_job_logs_in_as_the_job_role(job_dsn: str, make_ctx: MakeCtx) -> None:
    """The worker's DSN is a superuser's here; the job is not."""
    statement = "SELECT current_user, session_user"
    outcome = await execute("sql", {"statement": statement}, make_ctx(database_url=job_dsn))
    assert outcome.output == "SELECT 1; rowcount 1\ncurrent_user | session_user\n" + (
        f"{JOB_ROLE} | {JOB_ROLE}"
    )


FORGED_REVOCATION = (
    "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor)"
    " VALUES (now(), 'system', 1, 'token.revoked', 'admin')"
)


@pytest.mark.parametrize(
    "statement",
    [
        FORGED_REVOCATION,
        "SELECT count(*) FROM pgsched.event",
        "SELECT count(*) FROM pgsched.schedule",
        "UPDATE pgsched.run SET state = 'succeeded'",
        "INSERT INTO pgsched.worker (name, host, pid, version, queues, slots, started_at,"
        " heartbeat_at) VALUES ('w', 'h', 1, 'v', '{default}', 1, now(), now())",
        "SELECT * FROM pgsched.maintain_v2(0, '0 days', '0 days')",
        # SET ROLE is no way out: the job role is a member of no pgsched role.
        "RESET ROLE; SET ROLE pgsched_worker; " + FORGED_REVOCATION,
        "SET ROLE pgsched_owner",
    ],
)
async def test_a_job_can_neither_read_nor_write_pgsched(
    job_dsn: str, make_ctx: MakeCtx, statement: str
) -> None:
    """A forged `token.revoked` (ADR 0021), and its relatives, through the real executor."""
    conn = await connect(job_dsn)
    try:
        cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event")
        before = await cur.fetchone()
        outcome = await execute("sql", {"statement": statement}, make_ctx(database_url=job_dsn))
        assert (outcome.status, outcome.retryable) == ("failed", False)
        assert outcome.error is not None
        assert outcome.error.startswith("SQLSTATE 42501"), outcome.error  # insufficient privilege
        cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event")
        assert await cur.fetchone() == before
    finally:
        await conn.close()


@pytest.mark.parametrize("who", ["superuser", "pgsched_worker", "pgsched_api", "pgsched_owner"])
async def test_a_dsn_that_can_act_as_pgsched_is_refused(
    job_dsn: str, make_ctx: MakeCtx, who: str
) -> None:
    """An operator's named DSN (or a misconfigured job role) that could become one of pgsched's
    roles is refused before its statement runs: SET ROLE would be no boundary."""
    statement = "CREATE TABLE public.leak (a int)"
    async with contextlib.AsyncExitStack() as stack:
        named = job_dsn
        if who != "superuser":
            named = await stack.enter_async_context(login_role(job_dsn, who))
        ctx = make_ctx(named_dsns={"ops": named})
        outcome = await execute("sql", {"statement": statement, "dsn": "ops"}, ctx)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("refusing to run as "), outcome.error
    assert "on DSN 'ops'" in outcome.error and "ADR 0021" in outcome.error
    conn = await connect(job_dsn)
    try:
        cur = await conn.execute("SELECT to_regclass('public.leak') AS t")
        assert await cur.fetchone() == {"t": None}
    finally:
        await conn.close()


_FORGE = (
    "INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta)"
    " VALUES (now(), 'system', 'token.revoked', 'admin', '{\"token\": \"ops\"}')"
)


@pytest.mark.parametrize("how", ["superuser login, plain role", "createrole login"])
async def test_a_dsn_whose_login_can_become_pgsched_is_refused(
    job_dsn: str, make_ctx: MakeCtx, how: str
) -> None:
    """The current role alone proves nothing: a superuser login whose DSN sets a harmless role
    (options '-c role=...') can SET ROLE NONE; a CREATEROLE login can grant itself
    pgsched_owner. Either is refused before its statement appends a forged event."""
    async with login_role(job_dsn) as plain:
        if how == "createrole login":
            admin = await connect(job_dsn)
            try:
                user = conninfo_to_dict(plain)["user"]
                await admin.execute(f'ALTER ROLE "{user}" CREATEROLE')
            finally:
                await admin.close()
            named = plain
            statement = f"GRANT pgsched_owner TO CURRENT_USER; SET ROLE pgsched_owner; {_FORGE}"
        else:
            user = conninfo_to_dict(plain)["user"]
            named = make_conninfo(job_dsn, options=f"-c role={user}")
            statement = f"SET ROLE NONE; {_FORGE}"
        ctx = make_ctx(named_dsns={"ops": named})
        outcome = await execute("sql", {"statement": statement, "dsn": "ops"}, ctx)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("refusing to run as "), outcome.error
    assert "ADR 0021" in outcome.error
    conn = await connect(job_dsn)
    try:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM pgsched.event WHERE type = 'token.revoked'"
        )
        assert await cur.fetchone() == {"n": 0}
    finally:
        await conn.close()


async def test_a_role_the_server_refuses_fails_without_retry(
    job_dsn: str, make_ctx: MakeCtx
) -> None:
    """Who is connecting is wrong: retrying cannot help, and the error says what to set."""
    ctx = make_ctx(named_dsns={"ghost": as_user(job_dsn, "pgsched_no_such_role")})
    outcome = await execute("sql", {"statement": "SELECT 1", "dsn": "ghost"}, ctx)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("cannot connect as DSN 'ghost': "), outcome.error
    assert 'role "pgsched_no_such_role" does not exist' in outcome.error
    assert outcome.error.endswith("check PGSCHED_SQL_DSN_GHOST")


def test_the_job_role_dsn_is_the_workers_database_without_its_credentials(
    make_ctx: MakeCtx,
) -> None:
    worker = (
        "postgresql://pgsched_w:worker-pw@db.example:5433/pgsched?sslmode=require"
        "&options=-c%20role%3Dpgsched_worker"
    )
    plain = _target({"statement": "SELECT 1"}, make_ctx(database_url=worker))
    assert plain is not None
    params = conninfo_to_dict(plain.dsn)
    assert params == {
        "user": JOB_ROLE,
        "host": "db.example",
        "port": "5433",
        "dbname": "pgsched",
        "sslmode": "require",
    }
    ctx = make_ctx(database_url=worker, environ={"PGSCHED_SQL_JOB_PASSWORD": "job-pw"})
    with_password = _target({"statement": "SELECT 1"}, ctx)
    assert with_password is not None
    assert conninfo_to_dict(with_password.dsn)["password"] == "job-pw"  # noqa: S105


KILLED_JOB = """
import asyncio, sys
from pgsched.workers.jobs import JobContext, execute
from pgsched.workers.netguard import NetPolicy

ctx = JobContext(run_id=7, attempt=2, schedule_name="kill-test", timeout_seconds=120,
                 database_url=sys.argv[1], named_dsns={}, http_policy=NetPolicy(), environ={})
asyncio.run(execute("sql", {"statement": "SELECT pg_sleep(60)"}, ctx))
"""


async def _backends(conn: psycopg.AsyncConnection[dict[str, object]], name: str) -> list[object]:
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
        [name],
    )
    return [r["pid"] for r in await cur.fetchall()]


async def test_a_killed_workers_query_stops_on_the_server(job_dsn: str) -> None:
    """kill -9 of the process running a sql job: its backend notices the vanished client
    (client_connection_check_interval) and ends, instead of sleeping out its 60 s."""
    name = "pgsched kill-test 7:2"
    conn = await connect(job_dsn)
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child to kill, not to wait on
        [sys.executable, "-c", KILLED_JOB, job_dsn], cwd=ROOT, env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 30
        while not await _backends(conn, name):
            assert proc.poll() is None, "the job process ended before its query started"
            assert time.monotonic() < deadline, "the job's query never started"
            await asyncio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        killed = time.monotonic()
        while await _backends(conn, name):
            assert time.monotonic() - killed < 15, "the backend ran on after its client died"
            await asyncio.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await conn.close()
