"""``command`` jobs against real processes: output, exit codes, bounds, env, timeouts, cancel,
the supervisor's own bounds (timeout and lease while the worker's loop is stuck) and reaping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pgsched.workers.jobs import MAX_OUTPUT_BYTES, execute
from pgsched.workers.jobs.base import LeaseDeadline
from tests.jobs.conftest import MakeCtx, process_gone, wait_for_file

# Appends "tick <wall time>" to ./ticks every 20 ms until killed: when it last ran.
TICKER = (
    "import time\n"
    "while True:\n"
    "    with open('ticks', 'a') as f:\n"
    "        f.write(f'tick {time.time()}\\n')\n"
    "    time.sleep(0.02)\n"
)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _exists(pid: int) -> bool:
    """Alive, or dead and not yet reaped (a zombie has its /proc entry too)."""
    return Path(f"/proc/{pid}").exists()


def _last_tick(path: Path) -> float:
    return float(path.read_text().split()[-1])


async def test_success_keeps_output_and_exit_code(make_ctx: MakeCtx) -> None:
    outcome = await execute("command", {"argv": ["echo", "hello"]}, make_ctx())
    assert outcome.status == "succeeded"
    assert outcome.exit_code == 0
    assert outcome.output == "hello\n"
    assert outcome.error is None
    assert 0 < outcome.duration_ms < 5_000


async def test_non_zero_exit_is_a_retryable_failure_with_stderr(make_ctx: MakeCtx) -> None:
    payload = {"argv": ["sh", "-c", "echo out; echo oops >&2; exit 3"]}
    outcome = await execute("command", payload, make_ctx())
    assert (outcome.status, outcome.retryable, outcome.exit_code) == ("failed", True, 3)
    assert outcome.error == "exit code 3"
    assert outcome.output == "out\noops\n"  # stdout and stderr, interleaved


async def test_argv_never_goes_through_a_shell(make_ctx: MakeCtx) -> None:
    outcome = await execute("command", {"argv": ["echo", "$HOME; ls `id`"]}, make_ctx())
    assert outcome.output == "$HOME; ls `id`\n"


async def test_output_keeps_head_and_tail_within_10_kib(make_ctx: MakeCtx) -> None:
    script = "import sys; sys.stdout.write('START' + 'x' * 60000 + 'END')"
    outcome = await execute("command", {"argv": [sys.executable, "-c", script]}, make_ctx())
    assert outcome.status == "succeeded"
    assert outcome.output is not None
    assert len(outcome.output.encode()) <= MAX_OUTPUT_BYTES
    assert outcome.output.startswith("START")
    assert outcome.output.endswith("END")
    assert "bytes omitted ...]" in outcome.output


async def test_output_just_under_the_limit_is_kept_whole(make_ctx: MakeCtx) -> None:
    script = f"import sys; sys.stdout.write('y' * {MAX_OUTPUT_BYTES})"
    outcome = await execute("command", {"argv": [sys.executable, "-c", script]}, make_ctx())
    assert outcome.output == "y" * MAX_OUTPUT_BYTES


async def test_env_is_clean_plus_payload_and_cwd_is_used(make_ctx: MakeCtx, tmp_path: Path) -> None:
    script = 'echo "$FOO"; echo "${DATABASE_URL:-unset}"; pwd; echo "$PGSCHED_IDEMPOTENCY_KEY"'
    ctx = make_ctx(environ={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://leak"})
    payload = {"argv": ["sh", "-c", script], "env": {"FOO": "bar baz"}, "cwd": str(tmp_path)}
    outcome = await execute("command", payload, ctx)
    assert outcome.output == f"bar baz\nunset\n{tmp_path}\n7:2\n"


async def test_missing_program_and_missing_cwd_are_not_retryable(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    missing = await execute("command", {"argv": ["no-such-program-pgsched"]}, make_ctx())
    assert (missing.status, missing.retryable) == ("failed", False)
    assert missing.error is not None
    assert missing.error.startswith("cannot start 'no-such-program-pgsched'")
    payload = {"argv": ["true"], "cwd": str(tmp_path / "nope")}
    no_cwd = await execute("command", payload, make_ctx())
    assert (no_cwd.status, no_cwd.retryable) == ("failed", False)


async def test_timeout_terminates_the_process(make_ctx: MakeCtx, tmp_path: Path) -> None:
    payload = {"argv": ["sh", "-c", "echo $$ > leader; exec sleep 60"], "cwd": str(tmp_path)}
    outcome = await execute("command", payload, make_ctx(timeout_seconds=0.5))
    assert (outcome.status, outcome.retryable) == ("timeout", True)
    assert outcome.exit_code == -15
    assert outcome.error == "timed out after 0.5 s; terminated (SIGTERM)"
    assert outcome.duration_ms < 3_000
    assert await process_gone(int((tmp_path / "leader").read_text()))


async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    # TERM is ignored by the shell and, inherited, by its sleeping child.
    script = 'trap "" TERM; echo $$ > leader; sleep 60 & echo $! > child; wait'
    payload = {"argv": ["sh", "-c", script], "cwd": str(tmp_path), "kill_after_seconds": 0.5}
    outcome = await execute("command", payload, make_ctx(timeout_seconds=0.3))
    assert outcome.status == "timeout"
    assert outcome.exit_code == -9
    assert outcome.error == "timed out after 0.3 s; killed (SIGKILL) after a 0.5 s grace"
    assert 750 <= outcome.duration_ms < 3_000
    assert await process_gone(int((tmp_path / "leader").read_text()))
    assert await process_gone(int((tmp_path / "child").read_text()))


async def test_children_left_behind_by_a_finished_command_are_killed(make_ctx: MakeCtx) -> None:
    # The background sleep keeps our pipe open; without the group kill this would hang.
    outcome = await execute("command", {"argv": ["sh", "-c", "sleep 60 & echo $!"]}, make_ctx())
    assert outcome.status == "succeeded"
    assert outcome.duration_ms < 3_000
    assert outcome.output is not None
    assert await process_gone(int(outcome.output))


async def test_cancellation_kills_the_process_and_reraises(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    payload = {"argv": ["sh", "-c", "echo $$ > leader; exec sleep 60"], "cwd": str(tmp_path)}
    task = asyncio.create_task(execute("command", payload, make_ctx(timeout_seconds=30)))
    pid = int(await wait_for_file(tmp_path / "leader"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await process_gone(pid)


async def test_a_second_cancel_during_the_grace_still_kills(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    script = 'trap "" TERM; echo $$ > leader; exec sleep 60'
    payload = {"argv": ["sh", "-c", script], "cwd": str(tmp_path), "kill_after_seconds": 30}
    task = asyncio.create_task(execute("command", payload, make_ctx(timeout_seconds=30)))
    pid = int(await wait_for_file(tmp_path / "leader"))
    # Every process from the job up to (not including) us: the job, and whatever runs it.
    chain = [pid]
    while (parent := _ppid(chain[-1])) != os.getpid():
        chain.append(parent)
    task.cancel()
    await asyncio.sleep(0.1)  # now inside the 30 s grace
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Dead *and reaped* by the time the cancel comes back: a child of ours left for a
    # background reaper was reaped (or warned about, ResourceWarning) during a later test.
    assert [p for p in chain if _exists(p)] == []


async def test_a_grandchild_that_left_the_session_is_killed_too(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    # setsid: a session and process group of its own, re-parented when the subshell exits;
    # the job ends once the grandchild has written its pid (so it has left the group).
    script = (
        "(setsid sh -c 'echo $$ > grandchild; exec sleep 60' >/dev/null 2>&1 &);"
        " while [ ! -s grandchild ]; do sleep 0.01; done"
    )
    payload = {"argv": ["sh", "-c", script], "cwd": str(tmp_path)}
    outcome = await execute("command", payload, make_ctx())
    assert outcome.status == "succeeded"
    assert await process_gone(int((tmp_path / "grandchild").read_text()))


async def test_the_job_cannot_read_the_worker_environment_from_its_parent(
    make_ctx: MakeCtx,
) -> None:
    # The worker's environment holds the database URL and PGSCHED_SECRET_*; $PPID is the
    # supervisor, started with an empty one.
    script = "tr '\\0' '\\n' < /proc/$PPID/environ; echo end"
    outcome = await execute("command", {"argv": ["sh", "-c", script]}, make_ctx())
    assert outcome.status == "succeeded"
    assert outcome.output == "end\n"


async def test_the_timeout_holds_while_the_worker_loop_is_stuck(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    payload = {"argv": [sys.executable, "-c", TICKER], "cwd": str(tmp_path)}
    task = asyncio.create_task(execute("command", payload, make_ctx(timeout_seconds=0.5)))
    await wait_for_file(tmp_path / "ticks")
    started = time.time()
    time.sleep(3)  # noqa: ASYNC251 - the point: the worker's event loop runs nothing
    assert _last_tick(tmp_path / "ticks") < started + 1.5, "killed on time by its supervisor"
    outcome = await task
    assert outcome.status == "timeout"
    assert outcome.error == "timed out after 0.5 s; terminated (SIGTERM)"


async def test_a_lease_not_renewed_in_time_stops_the_job_while_the_loop_is_stuck(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    lease = LeaseDeadline(time.monotonic() + 1.0, 0.25, time.monotonic)  # stop at +0.75 s
    payload = {"argv": [sys.executable, "-c", TICKER], "cwd": str(tmp_path)}
    ctx = make_ctx(timeout_seconds=30, lease=lease)
    task = asyncio.create_task(execute("command", payload, ctx))
    await wait_for_file(tmp_path / "ticks")
    started = time.time()
    time.sleep(3)  # noqa: ASYNC251 - a worker that cannot renew (SIGSTOP, a stuck loop)
    assert _last_tick(tmp_path / "ticks") < started + 1.0, "killed before the lease expired"
    outcome = await task
    assert (outcome.status, outcome.retryable, outcome.exit_code) == ("failed", True, -9)
    assert outcome.error == "killed (SIGKILL): the worker's lease was not renewed in time"


async def test_lease_renewals_keep_the_job_running(make_ctx: MakeCtx) -> None:
    lease = LeaseDeadline(time.monotonic() + 0.6, 0.2, time.monotonic)  # stop at +0.4 s
    payload = {"argv": ["sleep", "1.5"]}
    task = asyncio.create_task(execute("command", payload, make_ctx(lease=lease)))
    while not task.done():
        lease.renewed(time.monotonic() + 0.6)  # as a heartbeat every 0.2 s would
        await asyncio.sleep(0.2)
    outcome = await task
    assert (outcome.status, outcome.exit_code) == ("succeeded", 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a worker running as root")
async def test_pgsched_command_user_runs_the_job_as_that_user(make_ctx: MakeCtx) -> None:
    # As another user the job can read neither this (root) process's environment nor its
    # supervisor's; $HOME is the user's.
    script = (
        f"id -u; echo $HOME; cat /proc/{os.getpid()}/environ >/dev/null 2>&1"
        " && echo read || echo denied"
    )
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGSCHED_COMMAND_USER": "nobody"}
    ctx = make_ctx(environ=environ)
    outcome = await execute("command", {"argv": ["sh", "-c", script]}, ctx)
    assert outcome.status == "succeeded", outcome
    assert outcome.output == "65534\n/nonexistent\ndenied\n"
    unknown = {**environ, "PGSCHED_COMMAND_USER": "no-such-user-pgsched"}
    missing = await execute("command", {"argv": ["true"]}, make_ctx(environ=unknown))
    assert (missing.status, missing.retryable) == ("failed", False)
    assert missing.error == (
        "cannot start 'true': PGSCHED_COMMAND_USER names no user ('no-such-user-pgsched')"
    )


# A job that starts an escapee in a session of its own (it writes its pid to ./escapee), then
# does to its supervisor ($PPID) what $1 says: kill -9 it, or stop it.
ESCAPE = (
    "setsid sh -c 'echo $$ > escapee; exec sleep 3005' >/dev/null 2>&1 &"
    " while [ ! -s escapee ]; do sleep 0.01; done; kill -$1 $PPID; sleep 1"
)


def _kill_if_alive(path: Path) -> None:
    """Test hygiene: the escapee must not outlive a failed test."""
    if path.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(path.read_text()), signal.SIGKILL)


async def test_a_job_that_kills_its_supervisor_leaves_nothing_running(
    make_ctx: MakeCtx, tmp_path: Path
) -> None:
    # The escapee's parents die with the supervisor; it is re-parented to this process (a
    # subreaper), not to PID 1, and killed before the outcome comes back.
    payload = {"argv": ["sh", "-c", ESCAPE, "job", "9"], "cwd": str(tmp_path)}
    try:
        outcome = await execute("command", payload, make_ctx(timeout_seconds=30))
        escapee = int((tmp_path / "escapee").read_text())
        assert _dead_now(escapee), "the escapee is dead by the time the outcome is known"
        assert (outcome.status, outcome.retryable) == ("failed", True)
        assert outcome.error == (
            "the job's supervisor ended without a result (terminated by signal SIGKILL)"
        )
    finally:
        _kill_if_alive(tmp_path / "escapee")


async def test_a_job_that_stops_its_supervisor_is_killed(make_ctx: MakeCtx, tmp_path: Path) -> None:
    # A stopped supervisor enforces nothing (timeout, lease, the worker's death): the worker
    # notices and kills it, the job and the escapee, well before the 30 s timeout.
    payload = {"argv": ["sh", "-c", ESCAPE, "job", "STOP"], "cwd": str(tmp_path)}
    try:
        started = time.monotonic()
        outcome = await execute("command", payload, make_ctx(timeout_seconds=30))
        assert time.monotonic() - started < 10
        escapee = int((tmp_path / "escapee").read_text())
        assert _dead_now(escapee)
        assert (outcome.status, outcome.retryable) == ("failed", True)
        assert outcome.error == (
            "the job's supervisor was stopped (SIGSTOP); it and the job were killed"
        )
    finally:
        _kill_if_alive(tmp_path / "escapee")


def _dead_now(pid: int) -> bool:
    """Gone, or a zombie, right now (no waiting: the outcome must come after its death)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")
