"""`pgsched apply`, `pgsched export` and `pgsched run --apply` as a user runs them: the real
command in a subprocess against a migrated database; the plan on stdout, refusals as one line
and exit 2, nothing applied."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.cli.test_cli_input import _cli, _refused
from tests.conftest import ROOT

FILE = """\
manager: nightly
schedules:
  - name: report
    job_type: http
    payload: {url: "https://${REPORT_HOST}/run"}
    cron: "30 2 * * *"
    labels: {team: finance}
  - name: cleanup
    job_type: noop
    interval_seconds: 3600
"""


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _events(dsn: str) -> int:
    return _count(dsn, "SELECT count(*) FROM pgsched.event")


def test_apply_dry_run_then_apply_then_export_round_trip(dsn: str, tmp_path: Path) -> None:
    assert _cli(dsn, "migrate").returncode == 0
    path = tmp_path / "nightly.yaml"
    path.write_text(FILE)
    before = _events(dsn)
    out = _cli(dsn, "apply", str(path), "--dry-run", REPORT_HOST="reports.example.com")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "create     report",
        "create     cleanup",
        "dry run of manager 'nightly', nothing changed: 2 to create, 0 to update, "
        "0 to delete, 0 unchanged",
    ]
    assert _events(dsn) == before
    out = _cli(dsn, "apply", str(path), REPORT_HOST="reports.example.com")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].startswith("applied manager 'nightly' (sha256 ")
    assert _count(dsn, "SELECT count(*) FROM pgsched.schedule WHERE managed_by = 'nightly'") == 2
    assert _cli(dsn, "verify").returncode == 0

    # Without --manager: refused, naming the managers (a file of every schedule would not
    # apply back unchanged).
    _refused(_cli(dsn, "export"), "export needs --manager NAME, so that applying the file")
    assert "(managers here: nightly)" in _cli(dsn, "export").stderr
    exported = tmp_path / "exported.toml"
    out = _cli(dsn, "export", "--manager", "nightly", "--format", "toml", "-o", str(exported))
    assert out.returncode == 0, out.stderr
    assert 'manager = "nightly"' in exported.read_text()
    after = _events(dsn)
    out = _cli(dsn, "apply", str(exported), "--prune")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["unchanged  report", "unchanged  cleanup"]
    assert _events(dsn) == after


def test_a_file_that_cannot_apply_is_one_line_and_applies_nothing(dsn: str, tmp_path: Path) -> None:
    assert _cli(dsn, "migrate").returncode == 0
    path = tmp_path / "nightly.yaml"
    path.write_text(FILE + "  - {name: third, job_type: noop, cron: '0 0 31 2 *'}\n")
    before = _events(dsn)
    _refused(_cli(dsn, "apply", str(path)), "environment variable REPORT_HOST is not set")
    _refused(
        _cli(dsn, "apply", str(path), REPORT_HOST="h.example"),
        "nothing applied: schedule 'third': cron:",
    )
    missing = _cli(dsn, "apply", str(tmp_path / "none.yaml"))
    _refused(missing, "cannot read it")
    assert missing.stderr.count("none.yaml") == 1, missing.stderr  # the path, said once
    loop = tmp_path / "loop.yaml"
    loop.write_text(
        "schedules:\n"
        + "".join(
            f"  - {{name: {a}, job_type: noop, cron: '0 * * * *', depends_on: [{b}]}}\n"
            for a, b in ("ab", "bc", "ca")
        )
    )
    _refused(
        _cli(dsn, "apply", str(loop), "--dry-run"),
        "nothing applied: schedule 'a': depends_on: would make a cycle: a -> b -> c -> a",
    )
    _refused(
        _cli(dsn, "apply", str(loop), "--prune"),
        "nothing applied: --prune needs the file to name its `manager:`",
    )
    assert _events(dsn) == before


def test_adopting_an_api_made_schedule_needs_adopt(dsn: str, tmp_path: Path) -> None:
    assert _cli(dsn, "migrate").returncode == 0
    path = tmp_path / "adopt.yaml"
    path.write_text(
        "manager: ops\nschedules:\n  - {name: mine, job_type: noop, cron: '0 1 * * *'}\n"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "WITH s AS (INSERT INTO pgsched.schedule (name, job_type, kind, cron, created_at,"
            " updated_at, depends_on, dependency_timeout_seconds, labels) VALUES ('mine', 'noop',"
            " 'cron', '0 1 * * *', now(), now(), '{}', 3600, '{}') RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'schedule', s.id, 'schedule.created', 'test', to_jsonb(s) FROM s"
        )
    _refused(
        _cli(dsn, "apply", str(path)),
        "nothing applied: schedule 'mine' was made outside apply (API, CLI or console): manager "
        "'ops' would adopt it",
    )
    out = _cli(dsn, "apply", str(path), "--adopt")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["update     mine", '    managed_by: null -> "ops"']
    assert _count(dsn, "SELECT count(*) FROM pgsched.schedule WHERE managed_by = 'ops'") == 1


def test_run_refuses_a_bad_schedules_file_before_starting(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("schedules: [{name: a, job_type: noop, colour: red}]\n")
    out = _cli(dsn, "run", "--apply", str(path))
    _refused(out, "unknown field `colour`")
    assert "running" not in out.stdout


@pytest.mark.timeout(300)  # a whole service starts and stops, on a machine shared with others
def test_run_applies_the_file_of_its_setting_at_start(dsn: str, tmp_path: Path) -> None:
    """PGSCHED_APPLY_FILE (as `--apply`): applied after the migrations, before serving."""
    path = tmp_path / "nightly.yaml"
    path.write_text(FILE)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGSCHED_", "OTEL_"))},
        "DATABASE_URL": dsn,
        "OTEL_SDK_DISABLED": "true",
        "PGSCHED_HTTP_PORT": port,
        "PGSCHED_APPLY_FILE": str(path),
        "REPORT_HOST": "reports.example.com",
        "PGSCHED_SHUTDOWN_GRACE_SECONDS": "0",
    }
    # Its logs to a file: a pipe nobody reads while it starts would fill up and stall it.
    log = tmp_path / "stderr.log"
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "pgsched", "run"],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as service,
    ):
        assert service.stdout is not None
        seen = []
        for line in service.stdout:  # until it serves, or exits (the test's timeout bounds it)
            seen.append(line)
            if line.startswith("pgsched is running"):
                break
        applied = _count(dsn, "SELECT count(*) FROM pgsched.schedule WHERE managed_by = 'nightly'")
        service.send_signal(signal.SIGTERM)
        try:
            service.communicate(timeout=90)
        except subprocess.TimeoutExpired:  # a slow drain is not what this test is about
            service.kill()
            service.communicate()
    assert any(s.startswith("applied manager 'nightly'") for s in seen), (seen, log.read_text())
    assert applied == 2
