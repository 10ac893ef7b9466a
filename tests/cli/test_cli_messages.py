"""What the CLI says in the small moments of a first hour: a schedule already paused, a list
with no match, an unknown run id, a reader that closes the pipe early.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from pgsched.app import cli
from pgsched.app.db import store
from tests.cli.test_commands import DEADLINE, main, main_json, one_line_refusal, run_cli
from tests.conftest import ROOT, connect


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


async def _stderr(dsn: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`pgsched ARGS` in process, which must succeed: its stderr."""
    code = await asyncio.to_thread(cli.main, list(args), {"DATABASE_URL": dsn})
    err = capsys.readouterr().err
    assert code == 0, err
    return err


async def test_work_put_in_a_queue_no_live_worker_serves_is_warned_about(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ingest.yaml"
    path.write_text(
        "manager: ingest\n"
        "schedules:\n"
        "  - {name: fetch, job_type: noop, cron: '0 * * * *', queue: ingest}\n"
        "  - {name: tidy, job_type: noop, cron: '0 * * * *'}\n"
    )
    warning = "pgsched: WARNING: no live worker serves queue 'ingest'"
    applied = run_cli(dsn, "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stderr.splitlines() == [
        "pgsched: WARNING: no live worker serves queue 'default': its runs wait until one does "
        "(`pgsched worker --queues default`, or PGSCHED_QUEUES naming it for `pgsched run`)",
        warning + ": its runs wait until one does (`pgsched worker --queues ingest`, or "
        "PGSCHED_QUEUES naming it for `pgsched run`)",
    ]
    queued = run_cli(dsn, "queue", "ingest", "--max-running", "3")
    assert queued.returncode == 0 and queued.stderr.startswith(warning), queued.stderr

    db = await connect(dsn)
    try:  # a live worker for `default` only: `ingest` is still unserved, `default` is served
        await store.register_worker(
            db, name="w", host="h", pid=1, version="t", queues=["default"], slots=1, now=None
        )
        assert await _stderr(dsn, capsys, "schedules", "trigger", "tidy") == ""
        assert (await _stderr(dsn, capsys, "schedules", "trigger", "fetch")).startswith(warning)
        # A worker that stopped heartbeating 31 s ago (by the database clock) is not live.
        await db.execute("UPDATE pgsched.worker SET heartbeat_at = now() - interval '31 s'")
        assert "queue 'default'" in await _stderr(dsn, capsys, "schedules", "trigger", "tidy")
    finally:
        await db.close()
