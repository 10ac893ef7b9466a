"""Test harness: a real PostgreSQL for every test (ADR 0007, the test-database ladder).

The server comes from the first rung that works:
1. `PGSCHED_TEST_DSN` (a superuser DSN; CI points it at the machine's server);
2. testcontainers, when a Docker engine answers;
3. a throwaway local cluster from the installed binaries (app.localpg);
4. otherwise the database tests are skipped, unless `PGSCHED_REQUIRE_DB=1`, which fails the run.

A template database is migrated once per session with `alembic upgrade head`; each test that asks
for `dsn` gets its own `CREATE DATABASE … TEMPLATE` copy, dropped afterwards, so tests may commit,
use several connections, LISTEN/NOTIFY and DDL freely.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgsched.app.db.store import Conn
from pgsched.app.settings import with_database

ROOT = Path(__file__).resolve().parents[1]

# Settings that would leak a developer's environment into the tests.
for _var in ("DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "PGSCHED_HTTP_PORT"):
    os.environ.pop(_var, None)


with_dbname = with_database


def _docker_answers() -> bool:
    """Whether a Docker engine answers; cheap and silent when there is none."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:  # any failure means "no engine here"
        return False
    return True


@contextlib.contextmanager
def _server() -> Iterator[str]:
    if dsn := os.environ.get("PGSCHED_TEST_DSN"):
        yield dsn
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from pgsched.app import localpg

    try:
        with localpg.throwaway(fast=True) as server:
            yield server.dsn()
    except localpg.LocalPostgresUnavailable as exc:
        reason = f"no PostgreSQL for tests: {exc}"
        if os.environ.get("PGSCHED_REQUIRE_DB") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A superuser DSN on the session's server (any database)."""
    with _server() as dsn:
        yield dsn


def migrate(dsn: str, target: str = "head", *, down: bool = False) -> None:
    """Run the packaged migrations against `dsn`, up (or down) to `target`."""
    from pgsched.app.db import migrations

    if down:
        migrations.downgrade(dsn, target)
    else:
        migrations.upgrade(dsn, target)


def _create_database(admin: str, name: str, template: str | None = None) -> None:
    with psycopg.connect(admin, autocommit=True) as c:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        c.execute(stmt)


def _drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    """A database migrated to head once per session; only ever copied, never connected to."""
    name = f"pgsched_tpl_{uuid.uuid4().hex[:10]}"
    _create_database(admin_dsn, name)
    try:
        migrate(with_dbname(admin_dsn, name))
        yield name
    finally:
        _drop_database(admin_dsn, name)


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    name = f"pgsched_t_{uuid.uuid4().hex[:12]}"
    _create_database(admin_dsn, name)
    try:
        yield with_dbname(admin_dsn, name)
    finally:
        _drop_database(admin_dsn, name)


@pytest.fixture
def dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own (superuser DSN)."""
    name = f"pgsched_t_{uuid.uuid4().hex[:12]}"
    _create_database(admin_dsn, name, template_db)
    try:
        yield with_dbname(admin_dsn, name)
    finally:
        _drop_database(admin_dsn, name)


async def connect(dsn: str, *, role: str | None = None) -> Conn:
    """An autocommit connection; with `role`, it acts as that application role (SET ROLE)."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    if role:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return conn


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[Conn]:
    """A superuser connection to this test's database."""
    c = await connect(dsn)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Conn]:
    """A connection to this test's database, with `public.job_log`, where the python jobs of
    tests/workers/jobs_for_tests.py record every execution (so tests count real executions)."""
    conn = await connect(dsn)
    await conn.execute(
        "CREATE TABLE public.job_log (id bigserial, idempotency_key text, note text, pid int,"
        " at timestamptz DEFAULT clock_timestamp())"
    )
    try:
        yield conn
    finally:
        await conn.close()
