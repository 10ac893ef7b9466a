"""Databases for the tests: the server ladder, migrations, and databases made and dropped.

The fixtures in tests/conftest.py are thin wrappers over these; scripts outside pytest
(bench/) use them too. The ladder (ADR 0007) takes the first rung that works:
1. `PGSCHED_TEST_DSN` (a superuser DSN; CI points it at the machine's server);
2. testcontainers, when a Docker engine answers;
3. a throwaway local cluster from the installed binaries (app.localpg);
4. otherwise the database tests are skipped, unless `PGSCHED_REQUIRE_DB=1`, which fails the run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgsched.app.db.store import Conn
from pgsched.app.settings import with_database

ROOT = Path(__file__).resolve().parents[2]

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
def server() -> Iterator[str]:
    """A superuser DSN on the first rung of the ladder that works (see the module docstring)."""
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
        with localpg.throwaway(fast=True) as local:
            yield local.dsn()
    except localpg.LocalPostgresUnavailable as exc:
        reason = f"no PostgreSQL for tests: {exc}"
        if os.environ.get("PGSCHED_REQUIRE_DB") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def migrate(dsn: str, target: str = "head", *, down: bool = False) -> None:
    """Run the packaged migrations against `dsn`, up (or down) to `target`."""
    from pgsched.app.db import migrations  # here: alembic is heavy, and unit tests never need it

    if down:
        migrations.downgrade(dsn, target)
    else:
        migrations.upgrade(dsn, target)


def fresh_name(prefix: str = "pgsched_t") -> str:
    """A database name no other test (or concurrent session on the same server) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(admin: str, name: str, template: str | None = None) -> None:
    """CREATE DATABASE `name` (a copy of `template`, when given) through the superuser `admin`."""
    with psycopg.connect(admin, autocommit=True) as c:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        c.execute(stmt)


def drop_database(admin: str, name: str) -> None:
    """DROP DATABASE `name`, ending any session still connected to it."""
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def database(
    admin: str, template: str | None = None, *, prefix: str = "pgsched_t"
) -> Iterator[str]:
    """A database of its own for the block (a copy of `template`, if given); its DSN."""
    name = fresh_name(prefix)
    create_database(admin, name, template)
    try:
        yield with_dbname(admin, name)
    finally:
        drop_database(admin, name)


async def connect(dsn: str, *, role: str | None = None) -> Conn:
    """An autocommit connection; with `role`, it acts as that application role (SET ROLE)."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    if role:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return conn
