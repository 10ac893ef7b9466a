"""``sql`` jobs on a real PostgreSQL: a fresh migrated database per test (``dsn`` fixture)."""

from __future__ import annotations

import json

import psycopg

from tests.jobs.conftest import MakeCtx
from workers.jobs import execute


async def test_statements_run_commit_and_report_rowcounts(dsn: str, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(database_url=dsn)
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


async def test_statement_timeout_is_the_job_timeout(dsn: str, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(database_url=dsn, timeout_seconds=0.5)
    shown = await execute("sql", {"statement": "SHOW statement_timeout"}, ctx)
    assert shown.output is not None
    assert shown.output.splitlines()[-1] == "500ms"
    slept = await execute("sql", {"statement": "SELECT pg_sleep(5)"}, ctx)
    assert (slept.status, slept.retryable) == ("timeout", True)
    assert slept.error is not None
    assert slept.error.startswith("timed out after 0.5 s: SQLSTATE 57014")
    assert slept.duration_ms < 3_000


async def test_nothing_is_committed_when_the_statement_fails(dsn: str, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(database_url=dsn)
    statement = "CREATE TABLE public.u (a int); SELECT 1 / 0"
    outcome = await execute("sql", {"statement": statement}, ctx)
    assert (outcome.status, outcome.retryable) == ("failed", False)  # 22012: data exception
    assert outcome.error == "SQLSTATE 22012: division by zero"
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT to_regclass('public.u')")
        assert await cur.fetchone() == (None,)


async def test_syntax_error_is_not_retryable(dsn: str, make_ctx: MakeCtx) -> None:
    outcome = await execute("sql", {"statement": "SELEC 1"}, make_ctx(database_url=dsn))
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("SQLSTATE 42601: syntax error")


async def test_named_dsn_and_unknown_name(dsn: str, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(named_dsns={"reporting": dsn})  # database_url points nowhere
    named = await execute("sql", {"statement": "SELECT 1 AS one", "dsn": "REPORTING"}, ctx)
    assert named.status == "succeeded"
    unknown = await execute("sql", {"statement": "SELECT 1", "dsn": "billing"}, ctx)
    assert (unknown.status, unknown.retryable) == ("failed", False)
    assert unknown.error == "unknown DSN name 'billing' (set PGSCHED_SQL_DSN_BILLING)"


async def test_autocommit_runs_what_a_transaction_block_refuses(
    dsn: str, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx(database_url=dsn)
    refused = await execute("sql", {"statement": "VACUUM pgsched.schedule"}, ctx)
    assert (refused.status, refused.retryable) == ("failed", False)
    assert refused.error is not None
    assert refused.error.startswith("SQLSTATE 25001")
    ok = await execute("sql", {"statement": "VACUUM pgsched.schedule", "autocommit": True}, ctx)
    assert (ok.status, ok.output) == ("succeeded", "VACUUM; rowcount -1")


async def test_the_idempotency_key_is_visible_to_the_statement(dsn: str, make_ctx: MakeCtx) -> None:
    statement = "SELECT current_setting('pgsched.idempotency_key') AS k, application_name"
    statement += " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    outcome = await execute("sql", {"statement": statement}, make_ctx(database_url=dsn))
    assert (
        outcome.output
        == "SELECT 1; rowcount 1\nk | application_name\n7:2 | pgsched test-schedule 7:2"
    )


async def test_unreachable_database_is_retryable(make_ctx: MakeCtx) -> None:
    outcome = await execute("sql", {"statement": "SELECT 1"}, make_ctx(timeout_seconds=2))
    assert (outcome.status, outcome.retryable) == ("failed", True)


async def test_params_carry_secrets_and_results_are_masked(dsn: str, make_ctx: MakeCtx) -> None:
    secret = "pg-s3cret-value"  # noqa: S105 - a test value
    ctx = make_ctx(database_url=dsn, environ={"PGSCHED_SECRET_DB_TOKEN": secret})
    payload = {
        "statement": "SELECT %s::text AS v, length(%s)",
        "params": [{"$secret": "DB_TOKEN"}] * 2,
    }
    outcome = await execute("sql", payload, ctx)
    assert outcome.status == "succeeded"
    assert outcome.output == "SELECT 1; rowcount 1\nv | length\n*** | 15"
    assert secret not in json.dumps(outcome.as_json())
