"""Bad input to the long-running commands: refused at once, one line, exit 2, nothing started.

Each test runs the real CLI in a subprocess. A command that does not refuse its input starts
serving instead, so the subprocess is given a deadline: running past it is the failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import ROOT

DEADLINE = 30.0


def _cli(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGSCHED_", "OTEL_"))},
        "DATABASE_URL": dsn,
        "OTEL_SDK_DISABLED": "true",
        **env,
    }
    try:
        return subprocess.run(
            [sys.executable, "-m", "pgsched", *args],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            check=False,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgsched {' '.join(args)} was still running after {DEADLINE} s")


def _refused(out: subprocess.CompletedProcess[str], reason: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pgsched") and reason in lines[0], lines[0]


def _workers(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgsched.worker").fetchone()
    return int(row[0]) if row else 0


def test_run_with_its_port_taken_starts_nothing(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _cli(dsn, "run", PGSCHED_HTTP_PORT=str(port))
    _refused(out, f"cannot listen on 127.0.0.1:{port}")
    assert "running" not in out.stdout
    assert _workers(dsn) == 0, "no worker registered, none left active"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--slots", "0"), "--slots must be a whole number 1..10000, got '0'"),
        (("--slots", "-3"), "--slots must be a whole number 1..10000, got '-3'"),
        (("--queues", ""), "--queues must be comma-separated queue names"),
        (("--queues", "a,,b"), "--queues must be comma-separated queue names"),
        # Not "database error: integer out of range" from the worker's registration.
        (("--slots", "99999999999"), "--slots must be a whole number 1..10000"),
        (("--slots", "10001"), "--slots must be a whole number 1..10000"),
    ],
)
def test_worker_refuses_options_that_would_fall_back_to_defaults(
    dsn: str, args: tuple[str, ...], reason: str
) -> None:
    _refused(_cli(dsn, "worker", *args), reason)
    assert _workers(dsn) == 0


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"PGSCHED_WORKER_SLOTS": "0"}, "PGSCHED_WORKER_SLOTS must be a whole number 1..10000"),
        ({"PGSCHED_QUEUES": ""}, "PGSCHED_QUEUES must be comma-separated queue names"),
        ({"PGSCHED_LEASE_SECONDS": "soon"}, "PGSCHED_LEASE_SECONDS must be a number"),
        (
            {"PGSCHED_SHUTDOWN_GRACE_SECONDS": "-1"},
            "PGSCHED_SHUTDOWN_GRACE_SECONDS must be a number of seconds >= 0",
        ),
        (
            {"PGSCHED_WORKER_SLOTS": "99999999999"},
            "PGSCHED_WORKER_SLOTS must be a whole number 1..10000, got '99999999999'",
        ),
    ],
)
def test_worker_refuses_settings_that_would_fall_back_or_crash(
    dsn: str, env: dict[str, str], reason: str
) -> None:
    _refused(_cli(dsn, "worker", **env), reason)


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_api_refuses_a_port_outside_the_range(dsn: str, port: str) -> None:
    _refused(
        _cli(dsn, "api", "--port", port), f"--port must be a port number 1..65535, got '{port}'"
    )


@pytest.mark.parametrize("command", ["api", "run"])
def test_a_port_setting_outside_the_range_is_refused(dsn: str, command: str) -> None:
    out = _cli(dsn, command, PGSCHED_HTTP_PORT="70000")
    _refused(out, "PGSCHED_HTTP_PORT must be a port number 1..65535, got '70000'")
    assert _workers(dsn) == 0


@pytest.mark.parametrize("command", ["worker", "api", "ticker", "run"])
def test_a_dsn_the_server_refuses_is_not_an_outage(dsn: str, command: str) -> None:
    """An unknown role (as a bad password would) or host: waiting would never end."""
    port = str(_free_port())  # `run` binds its port first
    role = dsn.replace("postgresql://postgres@", "postgresql://no_such_role@")
    _refused(_cli(role, command, PGSCHED_HTTP_PORT=port), 'role "no_such_role" does not exist')
    host = dsn.replace("@127.0.0.1:", "@no-such-host.invalid:")
    _refused(_cli(host, command, PGSCHED_HTTP_PORT=port), "no-such-host.invalid")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_api_with_its_port_taken_says_so_in_one_line(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _cli(dsn, "api", PGSCHED_HTTP_PORT=str(port))
    _refused(out, f"cannot listen on 127.0.0.1:{port}")
    assert out.stdout == "", "nothing printed as if it were serving"


def test_api_on_a_host_that_is_no_address_says_so_in_one_line(dsn: str) -> None:
    port = _free_port()
    out = _cli(dsn, "api", PGSCHED_HTTP_HOST="256.1.1.1", PGSCHED_HTTP_PORT=str(port))
    _refused(out, f"cannot listen on 256.1.1.1:{port}")
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("worker", "--slots", "abc"), "argument --slots: invalid int value: 'abc'"),
        (("api", "--port", "http"), "argument --port: invalid int value: 'http'"),
        (("queue", "q"), "the following arguments are required: --max-running"),
        (("no-such-command",), "invalid choice: 'no-such-command'"),
    ],
)
def test_arguments_argparse_refuses_are_one_line_too(
    dsn: str, args: tuple[str, ...], reason: str
) -> None:
    _refused(_cli(dsn, *args), reason)


@pytest.mark.parametrize("name", ["", "q" * 101])
def test_queue_refuses_a_name_before_the_database_does(dsn: str, name: str) -> None:
    out = _cli(dsn, "queue", name, "--max-running", "1")
    _refused(out, f"the queue name must be 1..100 characters, got {name!r}")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgsched.queue").fetchone() == (0,)
