"""What the CLI says in the small moments of a first hour: a schedule already paused, a list
with no match, an unknown run id, a reader that closes the pipe early.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.test_commands import DEADLINE, main, main_json, one_line_refusal, run_cli
from tests.conftest import ROOT


async def test_pause_and_resume_say_already_when_nothing_changes(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await main_json(
        dsn, capsys, "schedules", "create", "hello", "--job-type", "noop", "--cron", "0 * * * *"
    )
    code, out = await main(dsn, capsys, "schedules", "pause", "hello")
    assert code == 0 and out.strip().endswith("'hello' paused (paused)"), out
    code, out = await main(dsn, capsys, "schedules", "pause", "hello")
    assert code == 0 and out.strip().endswith("'hello' already paused"), out
    code, out = await main(dsn, capsys, "schedules", "resume", "hello")
    assert code == 0 and out.strip().endswith("'hello' resumed (enabled)"), out
    code, out = await main(dsn, capsys, "schedules", "resume", "hello")
    assert code == 0 and out.strip().endswith("'hello' already enabled"), out


async def test_lists_with_no_match_say_so_and_json_stays_empty(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await main(dsn, capsys, "runs", "list", "--queue", "nowhere")
    assert (code, out) == (0, "no run matches\n")
    code, out = await main(dsn, capsys, "schedules", "list", "--queue", "nowhere")
    assert (code, out) == (0, "no schedule matches\n")
    assert await main_json(dsn, capsys, "runs", "list", "--queue", "nowhere") == []
    assert await main_json(dsn, capsys, "schedules", "list", "--queue", "nowhere") == []


@pytest.mark.parametrize("verb", ["retry", "cancel"])
def test_an_unknown_run_id_is_one_line_and_exit_2(dsn: str, verb: str) -> None:
    one_line_refusal(run_cli(dsn, "runs", verb, "99999"), "run 99999 does not exist")


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(dsn: str) -> None:
    # `pgsched schedules show hello | head -30`: the reader is gone before the writer writes.
    env = {"PYTHONPATH": str(ROOT), "DATABASE_URL": dsn, "OTEL_SDK_DISABLED": "true"}
    with subprocess.Popen(
        [sys.executable, "-m", "pgsched", "runs", "list", "--json"],
        cwd=str(ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the process has imported anything, let alone printed
        try:
            err = proc.stderr.read()
            code = proc.wait(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert err == "" and code == 0, err
