"""Command jobs whose worker is killed (SIGKILL) or stopped (SIGSTOP): no orphan, no overlap.

Worker A is a real `pgsched worker` process; the fault is a signal sent to it while it runs a
`command` job. The job is a Python program that records its own execution in a directory of
this test, outside pgsched: "start <wall time> <pid>" when it starts, then "tick <wall time>"
every 20 ms while it runs (so the last tick says when it stopped running, however it was
killed), and the pid of a grandchild that double-forked into a session of its own. Worker B,
in this process, rescues the run and executes attempt 2, which only records "start" and ends.

What must hold (ADR 0020): the job's processes, the escaped grandchild included, die with
their worker; a job whose worker is stopped is killed before its lease can expire, and its
timeout holds; so attempt 2 never starts before attempt 1's last tick. And a job that walks
up its parents' `/proc/<pid>/environ` to the worker finds no secret (the worker runs without
capabilities there, see `unprivileged_worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from pgsched.app.db.store import Conn
from tests.chaos.test_worker_faults import (
    WorkerProcess,
    eventually,
    fetch,
    rescuer,
    runs,
    trigger,
    worker_id_of,
    worker_process,
)
from tests.conftest import ROOT
from tests.factories import make_schedule
from tests.jobs.conftest import process_gone

# The job: argv[1] is the record directory, argv[2] how long attempt 1 runs. It double-forks a
# grandchild into a session of its own (re-parented when its parent exits), then ticks.
JOB = """
import os, sys, time
record, seconds = sys.argv[1], float(sys.argv[2])
key = os.environ["PGSCHED_IDEMPOTENCY_KEY"].replace(":", "-")
def note(text):
    with open(os.path.join(record, key), "a") as f:
        f.write(text + "\\n")
note(f"start {time.time()} {os.getpid()}")
if os.environ["PGSCHED_ATTEMPT"] != "1":
    sys.exit(0)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        note(f"grandchild {os.getpid()}")
        time.sleep(600)
    os._exit(0)
os.wait()
end = time.time() + seconds
while time.time() < end:
    note(f"tick {time.time()}")
    time.sleep(0.02)
note("end")
"""


def record_of(record: Path, run_id: int, attempt: int) -> dict[str, Any]:
    """What attempt `attempt` of run `run_id` wrote: start time, pid, grandchild, last tick."""
    path = record / f"{run_id}-{attempt}"
    if not path.exists():
        return {}
    out: dict[str, Any] = {"ticks": 0}
    for line in path.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "start":
            out["start"], out["pid"] = float(rest[0]), int(rest[1])
        elif kind == "grandchild":
            out["grandchild"] = int(rest[0])
        elif kind == "tick":
            out["last"] = float(rest[0])
            out["ticks"] += 1
        elif kind == "end":
            out["end"] = True
    return out


async def command_schedule(conn: Conn, record: Path, seconds: float, **over: Any) -> int:
    s = await make_schedule(
        conn,
        now=datetime.now().astimezone(),
        job_type="command",
        payload={"argv": [sys.executable, "-c", JOB, str(record), str(seconds)]},
        retry_delay_seconds=0.2,
        retry_factor=1,
        max_attempts=3,
        **over,
    )
    return int(s["id"])


async def started_in(db: Conn, record: Path, wp: WorkerProcess, run_id: int) -> dict[str, Any]:
    """Wait until attempt 1 runs in `wp` with its grandchild forked and ticking."""

    async def ready() -> dict[str, Any] | None:
        got = record_of(record, run_id, 1)
        return got if "grandchild" in got and got.get("ticks", 0) >= 3 else None

    return dict(await eventually(f"run {run_id} attempt 1 ticks", ready, proc=wp))


async def no_overlap(
    db: Conn, dsn: str, record: Path, run_id: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run B until the run succeeds on attempt 2; both attempts' records."""
    async with rescuer(dsn):

        async def finished() -> bool:
            run = (await runs(db, [run_id]))[run_id]
            return run["state"] == "succeeded"

        await eventually("worker B completes attempt 2", finished, within=40)
    first, second = record_of(record, run_id, 1), record_of(record, run_id, 2)
    assert "end" not in first, "attempt 1 was stopped, it did not run to its end"
    assert second["start"] > first["last"], (
        f"attempt 2 started {second['start'] - first['last']:.3f} s after attempt 1's last tick"
    )
    return first, second


# -- the tests -------------------------------------------------------------------------------


async def test_sigkill_of_the_worker_kills_its_command_job_and_its_grandchild(
    db: Conn, dsn: str, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    schedule = await command_schedule(db, record, seconds=60)
    with worker_process(dsn, tmp_path, "A", lease=3.0) as a:
        await worker_id_of(db, a)
        run_id = await trigger(db, schedule)
        first = await started_in(db, record, a, run_id)
        os.kill(a.pid, signal.SIGKILL)
        killed_at = time.time()
        assert a.proc.wait(timeout=10) == -signal.SIGKILL
        assert await process_gone(first["pid"], within=2.0), "the job died with its worker"
        assert await process_gone(first["grandchild"], within=2.0), "and its grandchild"
    assert record_of(record, run_id, 1)["last"] < killed_at + 2.0
    await no_overlap(db, dsn, record, run_id)


async def test_a_stopped_worker_s_command_job_is_killed_before_its_lease_expires(
    db: Conn, dsn: str, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    schedule = await command_schedule(db, record, seconds=60)
    with worker_process(dsn, tmp_path, "A", lease=3.0) as a:
        await worker_id_of(db, a)
        run_id = await trigger(db, schedule)
        first = await started_in(db, record, a, run_id)
        os.kill(a.pid, signal.SIGSTOP)
        try:
            # A renewal sent just before the stop may still land; then nothing changes.
            time.sleep(0.5)  # noqa: ASYNC251 - nothing of ours runs meanwhile
            (row,) = await fetch(
                db,
                "SELECT extract(epoch FROM lease_expires_at) AS t FROM pgsched.run WHERE id = %s",
                [run_id],
            )
            expires = float(row["t"])
            assert await process_gone(first["pid"], within=5.0), "killed while A is stopped"
            assert await process_gone(first["grandchild"], within=2.0)
            last = record_of(record, run_id, 1)["last"]
            assert last < expires, f"last ran {last - expires:.3f} s after its lease expired"
            await no_overlap(db, dsn, record, run_id)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=20) == 0, "A drains and exits cleanly"
        assert "lease lost" in a.output(), a.output()
    run = (await runs(db, [run_id]))[run_id]
    assert run["state"] == "succeeded" and run["attempt"] == 2


async def test_the_timeout_holds_while_the_worker_is_stopped(
    db: Conn, dsn: str, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    schedule = await command_schedule(db, record, seconds=60, timeout_seconds=2.0)
    # A lease far longer than the timeout: only the timeout can stop the job.
    with worker_process(dsn, tmp_path, "A", lease=60.0) as a:
        await worker_id_of(db, a)
        run_id = await trigger(db, schedule)
        first = await started_in(db, record, a, run_id)
        os.kill(a.pid, signal.SIGSTOP)
        try:
            assert await process_gone(first["pid"], within=6.0), "stopped on time, A or not"
            assert await process_gone(first["grandchild"], within=2.0)
            last = record_of(record, run_id, 1)["last"]
            assert last < first["start"] + 2.0 + 1.0, "SIGTERM at the timeout ended it"
        finally:
            os.kill(a.pid, signal.SIGCONT)

        async def timed_out() -> dict[str, Any] | None:
            run = (await runs(db, [run_id]))[run_id]
            return run if run["outcome"] else None

        run = await eventually("A reports the timeout", timed_out, proc=a)
        assert run["outcome"]["status"] == "timeout", run["outcome"]
        assert run["outcome"]["error"] == "timed out after 2 s; terminated (SIGTERM)"


# Attempt 1 forks an escapee into a session of its own, which ticks into ./escapee every
# 20 ms, then SIGKILLs its own supervisor ($PPID) and waits; attempt 2 records its start.
SABOTEUR = """
import os, signal, sys, time
record = sys.argv[1]
def note(name, text):
    with open(os.path.join(record, name), "a") as f:
        f.write(text + "\\n")
note(os.environ["PGSCHED_IDEMPOTENCY_KEY"].replace(":", "-"), f"start {time.time()}")
if os.environ["PGSCHED_ATTEMPT"] != "1":
    sys.exit(0)
if os.fork() == 0:
    os.setsid()
    note("escapee", f"pid {os.getpid()}")
    while True:
        note("escapee", f"tick {time.time()}")
        time.sleep(0.02)
time.sleep(0.3)
os.kill(os.getppid(), signal.SIGKILL)
time.sleep(30)
"""


async def test_a_job_that_kills_its_supervisor_does_not_run_beside_its_retry(
    db: Conn, dsn: str, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    s = await make_schedule(
        db,
        now=datetime.now().astimezone(),
        job_type="command",
        payload={"argv": [sys.executable, "-c", SABOTEUR, str(record)]},
        retry_delay_seconds=0.2,
        retry_factor=1,
        max_attempts=3,
    )
    escapee = record / "escapee"
    try:
        with worker_process(dsn, tmp_path, "A", lease=5.0) as a:
            await worker_id_of(db, a)
            run_id = await trigger(db, int(s["id"]))

            async def succeeded() -> dict[str, Any] | None:
                run = (await runs(db, [run_id]))[run_id]
                return run if run["state"] == "succeeded" else None

            run = await eventually("the retry succeeds", succeeded, within=30, proc=a)
        lines = escapee.read_text().split("\n")
        pid = int(lines[0].split()[1])
        assert await process_gone(pid, within=2.0), "the escapee is dead"
        last_tick = max(float(line.split()[1]) for line in lines if line.startswith("tick"))
        second = float((record / f"{run_id}-2").read_text().split()[1])
        assert run["attempt"] == 2
        assert second > last_tick, f"attempt 2 began {last_tick - second:.3f} s before its end"
    finally:
        if escapee.exists():
            with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
                os.kill(int(escapee.read_text().split("\n")[0].split()[1]), signal.SIGKILL)


# -- secrets ---------------------------------------------------------------------------------

# Walk up from $PPID, printing each process's environment, to PID 1.
WALK = (
    'p=$PPID; while [ "$p" -gt 1 ]; do echo "pid $p";'
    " tr '\\0' '\\n' < /proc/$p/environ 2>&1;"
    " p=$(cut -d' ' -f4 /proc/$p/stat); done; true"
)
SECRET = "s3cret-value-of-the-worker"  # noqa: S105 - a test value, to be found or not
PASSWORD = "db-password-of-the-worker"  # noqa: S105 - a test value


_PR_CAPBSET_DROP = 24


def _no_capabilities() -> None:
    """In the forked child, before exec: empty the capability bounding set. A uid-0 process
    exec'd after that holds no capability, so for the kernel's /proc and ptrace checks it is
    an ordinary user (of uid 0): no CAP_SYS_PTRACE, no CAP_DAC_*."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last one: ignored


@contextlib.contextmanager
def unprivileged_worker(dsn: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A `pgsched worker` process without capabilities, with a secret and a password in its
    environment that no job names.

    The tests run as root, and root with CAP_SYS_PTRACE reads any process's environment
    (ADR 0020 asks deployments to run workers as an ordinary user). A real other user cannot
    run this checkout's interpreter (it lives under /root); uid 0 without any capability
    meets the same checks an ordinary user does.
    """
    env = {"PGSCHED_SECRET_UNUSED": SECRET, "PGSCHED_LEASE_SECONDS": "5"}
    with unprivileged(dsn, tmp_path, ["worker"], env) as wp:
        yield wp


@contextlib.contextmanager
def unprivileged(
    dsn: str, tmp_path: Path, command: list[str], extra: dict[str, str]
) -> Iterator[WorkerProcess]:
    """`pgsched <command>` without capabilities (see `unprivileged_worker`), with the
    database password in its environment and `extra`; killed and reaped at the end."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": dsn,
        "PGPASSWORD": PASSWORD,
        "PGSCHED_QUEUES": "default",
        "OTEL_SDK_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    log_path = tmp_path / f"{command[0]}-unprivileged.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgsched", *command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_no_capabilities,  # noqa: PLW1509 - this test's process is not threaded
        )
    wp = WorkerProcess(proc, log_path)
    try:
        yield wp
    except BaseException:
        print(f"--- unprivileged {command[0]} (pid {proc.pid}) output ---\n{wp.output()}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_a_job_walking_up_to_the_worker_finds_no_secret(
    db: Conn, dsn: str, tmp_path: Path
) -> None:
    schedule = await make_schedule(
        db,
        now=datetime.now().astimezone(),
        job_type="command",
        payload={"argv": ["sh", "-c", WALK]},
        max_attempts=1,
    )
    with unprivileged_worker(dsn, tmp_path) as a:
        await worker_id_of(db, a)
        run_id = await trigger(db, int(schedule["id"]))

        async def finished() -> dict[str, Any] | None:
            run = (await runs(db, [run_id]))[run_id]
            return run if run["state"] in {"succeeded", "dead"} else None

        run = await eventually("the walking job finishes", finished, proc=a)
    output = run["outcome"]["output"]
    assert run["state"] == "succeeded", run["outcome"]
    assert f"pid {a.pid}\n" in output, f"the walk reached the worker: {output}"
    assert SECRET not in output and PASSWORD not in output and dsn not in output, output
    leaked = await fetch(
        db,
        "SELECT count(*) AS n FROM pgsched.event WHERE data::text LIKE %s",
        [f"%{SECRET}%"],
    )
    assert leaked == [{"n": 0}]


# Every process's environment on the host, searched for $1, $2 and $3 (given as arguments,
# so they are in no environment of the job's): "leak <pid>" for each hit, "denied <pid>" for
# each of the pids in $4 whose environment it could not read.
SCAN = (
    "for f in /proc/[0-9]*/environ; do p=${f#/proc/}; p=${p%/environ};"
    " if env=$(tr '\\0' '\\n' < \"$f\"); then"
    ' case "$env" in *"$1"*|*"$2"*|*"$3"*) echo "leak $p";; esac;'
    ' else case " $4 " in *" $p "*) echo "denied $p";; esac; fi;'
    " done 2>/dev/null; echo scanned"
)


async def test_a_job_scanning_every_process_finds_no_secret_of_any_pgsched_process(
    db: Conn, dsn: str, tmp_path: Path
) -> None:
    # Values of this test only: another checkout's test may run meanwhile with its own.
    secret = f"s3cret-of-{tmp_path.name}-{os.getpid()}"
    password = f"password-of-{tmp_path.name}-{os.getpid()}"
    env = {"PGSCHED_SECRET_UNUSED": secret, "PGPASSWORD": password}
    port = str(_free_port())
    with (
        unprivileged(dsn, tmp_path, ["api"], {**env, "PGSCHED_HTTP_PORT": port}) as api,
        unprivileged(dsn, tmp_path, ["ticker"], env) as ticker,
        unprivileged(dsn, tmp_path, ["worker"], {**env, "PGSCHED_LEASE_SECONDS": "5"}) as a,
    ):

        async def serving() -> bool:
            return "pgsched api on" in api.output() and "ticker is running" in ticker.output()

        await eventually("the api and the ticker start", serving, proc=api)
        await worker_id_of(db, a)
        pids = [api.pid, ticker.pid, a.pid]
        schedule = await make_schedule(
            db,
            now=datetime.now().astimezone(),
            job_type="command",
            payload={
                "argv": ["sh", "-c", SCAN, "scan", secret, password, dsn, " ".join(map(str, pids))]
            },
            max_attempts=1,
        )
        run_id = await trigger(db, int(schedule["id"]))

        async def finished() -> dict[str, Any] | None:
            run = (await runs(db, [run_id]))[run_id]
            return run if run["state"] in {"succeeded", "dead"} else None

        run = await eventually("the scanning job finishes", finished, proc=a)
    output = run["outcome"]["output"]
    assert run["state"] == "succeeded", run["outcome"]
    assert output.endswith("scanned\n"), output
    leaks = [line for line in output.splitlines() if line.startswith("leak")]
    assert leaks == [], f"{leaks}; api {api.pid}, ticker {ticker.pid}, worker {a.pid}"
    # The reading was tried, and refused, for each of them (in the glob's order).
    denied = "".join(f"denied {p}\n" for p in sorted(map(str, pids)))
    assert output == denied + "scanned\n", output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- in-process jobs -------------------------------------------------------------------------


async def wait_cancellable(dsn: str, idempotency_key: str, seconds: float) -> str:
    """A `python` job (imported by the worker as tests.chaos.test_orphans): logs "start",
    sleeps, logs "end"; logs "cancelled" if it is cancelled meanwhile."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO public.job_log (idempotency_key, note) VALUES (%s, 'start')",
            [idempotency_key],
        )
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with psycopg.connect(dsn, autocommit=True) as sync:
            sync.execute(
                "INSERT INTO public.job_log (idempotency_key, note) VALUES (%s, 'cancelled')",
                [idempotency_key],
            )
        raise
    return "slept"


async def test_an_in_process_job_stops_before_a_lease_it_cannot_renew_expires(
    db: Conn, dsn: str
) -> None:
    lease = 2.0
    s = await make_schedule(
        db,
        now=datetime.now().astimezone(),
        job_type="python",
        payload={
            "target": f"{__name__}:wait_cancellable",
            "kwargs": {"dsn": dsn, "seconds": 30},
        },
    )
    async with rescuer(dsn, lease_seconds=lease, rescue_every_seconds=60) as worker:
        run_id = await trigger(db, int(s["id"]))

        async def noted(note: str) -> bool:
            rows = await fetch(db, "SELECT 1 FROM public.job_log WHERE note = %s", [note])
            return bool(rows)

        await eventually("the job starts", lambda: noted("start"))
        # The heartbeat's renewal now waits for this lock, as it would for a database that
        # does not answer: the lease cannot be renewed, and will expire.
        async with await psycopg.AsyncConnection.connect(dsn) as blocker:
            await blocker.execute("SELECT 1 FROM pgsched.run WHERE id = %s FOR UPDATE", [run_id])
            locked_at = time.monotonic()
            await eventually("the job is cancelled", lambda: noted("cancelled"), within=10)
            stopped_after = time.monotonic() - locked_at
            await blocker.rollback()
        assert stopped_after < lease, "stopped before the lease (renewed before the lock) ran out"
        assert not await noted("end")
        assert worker.stats.fenced == 1


async def test_jobs_longer_than_the_lease_run_to_their_end_while_it_is_renewed(
    db: Conn, dsn: str
) -> None:
    # Each heartbeat's renewal must reach the lease watch and each command's supervisor, or
    # these would be stopped after ~1.1 s.
    now = datetime.now().astimezone()
    command = await make_schedule(
        db, now=now, job_type="command", payload={"argv": ["sleep", "4"]}, max_attempts=1
    )
    python = await make_schedule(
        db,
        now=now,
        job_type="python",
        payload={"target": f"{__name__}:wait_cancellable", "kwargs": {"dsn": dsn, "seconds": 4}},
        max_attempts=1,
    )
    async with rescuer(dsn, lease_seconds=1.5) as worker:
        ids = [await trigger(db, int(s["id"])) for s in (command, python)]

        async def finished() -> bool:
            return all(
                r["state"] != "running" and r["finished_at"] for r in (await runs(db, ids)).values()
            )

        await eventually("both runs finish", finished, within=20)
    final = await runs(db, ids)
    assert [(final[i]["state"], final[i]["attempt"]) for i in ids] == [("succeeded", 1)] * 2
    assert worker.stats.fenced == 0
