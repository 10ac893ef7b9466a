"""The first hour: after `pgsched run` started its own PostgreSQL, every other command finds it
with nothing set, and `run` says what to do next (not alembic's banner).

Real processes in a directory of their own, as a new user's checkout: a local cluster under
`.pgsched/pgdata` there (app.localpg), the CLI started with no DATABASE_URL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgsched.app import localpg
from tests.cli.test_commands import DEADLINE, one_line_refusal, run_cli
from tests.conftest import ROOT, migrate


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """A working directory like a fresh checkout's; its local cluster is stopped afterwards."""
    home = tmp_path / "checkout"
    home.mkdir()
    yield home
    localpg.stop(home / ".pgsched" / "pgdata", mode="immediate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_lines_of_run(home: Path, until: str) -> str:
    """`pgsched run` there, with no DATABASE_URL: its output up to the line holding `until`,
    then SIGTERM (a watchdog kills it at the deadline instead of hanging the test)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGSCHED_", "OTEL_"))},
        "OTEL_SDK_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
        "PGSCHED_HTTP_PORT": str(_free_port()),
    }
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsched", "run"],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(DEADLINE, proc.kill)
    watchdog.start()
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if until in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=DEADLINE)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert until in "".join(seen), "".join(seen)
    return "".join(seen) + rest


def test_commands_find_the_local_cluster_that_run_started(checkout: Path) -> None:
    nothing = run_cli(None, "token", "list", cwd=str(checkout))
    one_line_refusal(nothing, "no local PostgreSQL runs under .pgsched/pgdata here")
    down = run_cli(None, "status", cwd=str(checkout))
    assert down.returncode == 2 and down.stdout.startswith("CRITICAL: pgsched is unhealthy")

    # What `pgsched run` leaves behind: a running cluster with a migrated database `pgsched`.
    pg = localpg.start(checkout / ".pgsched" / "pgdata", fast=True)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE pgsched")
    migrate(pg.dsn("pgsched"))

    made = run_cli(None, "token", "create", "--name", "me", "--role", "admin", cwd=str(checkout))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("pgs_"), "the token, on stdout for TOKEN=$(...)"
    listed = run_cli(None, "token", "list", cwd=str(checkout))
    assert listed.returncode == 0 and "me" in listed.stdout
    created = run_cli(
        None, "schedules", "create", "tick", "--job-type", "noop", "--interval", "60",
        cwd=str(checkout),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    status = run_cli(None, "status", cwd=str(checkout))
    assert status.returncode == 1 and status.stdout.startswith("WARNING:"), "no worker yet"

    started = _first_lines_of_run(checkout, until="pgsched status")
    assert "alembic" not in started.lower(), "no tool banner"
    assert f"psql '{pg.dsn('pgsched')}'" in started
    assert "no DATABASE_URL needed here" in started
    # A token `me` exists already (a restart keeps the data): the suggestion names a new one.
    suggested = next(line for line in started.splitlines() if "token create" in line)
    assert '--name "me-$(date +%s)"' in suggested, suggested
    assert "/ui/" in started, "the console's address"
    assert "activate" in started, "how to reach the venv's pgsched"
    assert localpg.is_running(pg.data_dir), "`run` leaves a cluster it did not start running"
