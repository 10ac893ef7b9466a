"""Test harness: a real PostgreSQL for every test (ADR 0007, the ladder; ADR 0026, the tiers).

The server, migrations and database helpers live in tests/support/db.py; this file only turns
them into fixtures. Two tiers of database, by what a test needs:

- `tx` (cheap): a connection to ONE migrated database shared by the whole session (each xdist
  worker is a session of its own), inside a transaction rolled back after the test. Nothing a
  test does there is ever seen by another. For tests that need no commit, no second connection,
  no LISTEN/NOTIFY and no subprocess; the database clock (`now()`) stands still for the whole
  test, so pass explicit instants (`now=`) where time matters. Code under test may use
  `conn.transaction()` freely (psycopg nests it as a savepoint); `conn.commit()` is refused.
- `dsn` / `conn` (full): a `CREATE DATABASE … TEMPLATE` copy of the session's migrated template,
  dropped afterwards, so a test may commit, open several connections, LISTEN/NOTIFY, run DDL and
  start subprocesses. It costs a CREATE and a DROP DATABASE per test (~0.15 s).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from psycopg.pq import TransactionStatus

from pgsched.app.db.store import Conn
from tests.support.db import (
    ROOT,
    connect,
    create_database,
    database,
    drop_database,
    fresh_name,
    migrate,
    server,
    with_dbname,
)

# Test modules import these from here (`from tests.conftest import ROOT, connect`), as does
# bench/event_guard.py (`migrate`); new code should import them from tests.support.db.
__all__ = ["ROOT", "connect", "migrate", "with_dbname"]

# Settings that would leak a developer's environment into the tests.
for _var in ("DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "PGSCHED_HTTP_PORT"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A superuser DSN on the session's server (any database)."""
    with server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    """A database migrated to head once per session; only ever copied, never connected to."""
    name = fresh_name("pgsched_tpl")
    create_database(admin_dsn, name)
    try:
        migrate(with_dbname(admin_dsn, name))
        yield name
    finally:
        drop_database(admin_dsn, name)


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    with database(admin_dsn) as dsn:
        yield dsn


@pytest.fixture
def dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own (superuser DSN)."""
    with database(admin_dsn, template_db) as dsn:
        yield dsn


class SharedDatabase:
    """The session's one migrated database behind `tx`; replaced if a test ever commits to it."""

    def __init__(self, admin: str, template: str) -> None:
        self.admin, self.template = admin, template
        self.name = fresh_name("pgsched_shared")
        create_database(admin, self.name, template)

    @property
    def dsn(self) -> str:
        return with_dbname(self.admin, self.name)

    def replace(self) -> None:
        """A clean copy instead of this one, so one test's leak cannot fail the ones after it."""
        drop_database(self.admin, self.name)
        self.name = fresh_name("pgsched_shared")
        create_database(self.admin, self.name, self.template)

    def drop(self) -> None:
        drop_database(self.admin, self.name)


@pytest.fixture(scope="session")
def shared_db(admin_dsn: str, template_db: str) -> Iterator[SharedDatabase]:
    """The migrated database every `tx` test of this session (or xdist worker) runs in."""
    shared = SharedDatabase(admin_dsn, template_db)
    try:
        yield shared
    finally:
        shared.drop()


@pytest.fixture
async def tx(shared_db: SharedDatabase) -> AsyncIterator[Conn]:
    """A superuser connection to the session's shared database, inside a transaction that is
    rolled back after the test (the cheap tier; see the module docstring for what it excludes).

    The connection is in autocommit mode with a transaction block open (psycopg's
    `transaction()`), so code under test that opens `conn.transaction()` gets a savepoint and
    code that calls `conn.commit()` fails at once. A test that ends the transaction anyway (a
    raw COMMIT) fails here, and the shared database is replaced before the next test."""
    conn = await connect(shared_db.dsn)
    leaked = False
    try:
        async with conn.transaction(force_rollback=True):
            yield conn
            leaked = conn.info.transaction_status == TransactionStatus.IDLE
    finally:
        await conn.close()
    if leaked:
        shared_db.replace()
        pytest.fail("a `tx` test ended its transaction: it needs `conn` (a database of its own)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tx: `conn` is the rolled-back tier (`tx`) in these tests (mark a module with"
        " `pytestmark = pytest.mark.tx`)",
    )
    config.addinivalue_line(
        "markers", "own_database: `conn` is a database of the test's own, even under `tx`"
    )


@pytest.fixture
def conn(request: pytest.FixtureRequest) -> Conn:
    """A superuser connection (autocommit) for the test: by default to a database of its own
    (`own_conn`, the full tier); in tests marked `tx` (and not `own_database`), the rolled-back
    tier `tx`. A module converts to the cheap tier with one line, and a test in it that needs
    more opts out with one decorator: no test body changes either way."""
    node = request.node
    if node.get_closest_marker("tx") and not node.get_closest_marker("own_database"):
        if "dsn" in request.fixturenames:
            raise pytest.UsageError(
                f"{node.nodeid}: marked `tx`, so `conn` is not on `dsn`; mark it `own_database`"
            )
        tx: Conn = request.getfixturevalue("tx")
        return tx
    own: Conn = request.getfixturevalue("own_conn")
    return own


@pytest.fixture
async def own_conn(dsn: str) -> AsyncIterator[Conn]:
    """A superuser connection to this test's own database (autocommit; the full tier)."""
    c = await connect(dsn)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Conn]:
    """A connection to this test's database, with `public.job_log`, where the python jobs of
    tests/workers/jobs_for_tests.py record every execution (so tests count real executions).

    Two fixtures are called `db`: under tests/api/ this one is overridden by
    tests/api/conftest.py's `db`, a plain superuser connection to the test's database with no
    `job_log` table. Both are connections to the same `dsn` the test gets."""
    conn = await connect(dsn)
    await conn.execute(
        "CREATE TABLE public.job_log (id bigserial, idempotency_key text, note text, pid int,"
        " at timestamptz DEFAULT clock_timestamp())"
    )
    try:
        yield conn
    finally:
        await conn.close()
