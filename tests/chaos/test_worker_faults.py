"""Issue 4: worker processes killed (SIGKILL) or paused (SIGSTOP) mid-run, with counts.

Worker A is a real `pgsched worker` process (`python -m pgsched worker`) with a short lease; the
fault is a signal sent to it while its jobs run. Worker B, in this process, has a fast rescue
loop and picks up what A left behind. The jobs are this module's own functions (the worker
imports `tests.chaos.test_worker_faults:slow_then_done`), and each execution writes "start" and
"end" rows into `public.job_log` keyed by `run_id:attempt`, so a test can count executions
across processes and crashes, independently of the scheduler's own tables.

- SIGKILL mid-run: every run is rescued after the lease and completes exactly once (attempt 2);
  the killed attempt started and never ended.
- SIGSTOP past the lease, then SIGCONT: B rescues and completes the run; A's late completion
  of attempt 1 is fenced (a `run.completion_fenced` event, no state change). At-least-once
  execution, exactly-once completion.
- SIGKILL with no attempts left: the rescue ends the run `dead` (`lease_expired`).
- SIGTERM twice: the first drains (jobs keep running within the grace period), the second
  ends the drain at once; the runs in flight go back to waiting without consuming an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from pgsched.app.services import schedules
from pgsched.workers.worker import Worker
from tests.conftest import ROOT
from tests.factories import make_schedule
from tests.support import worker as support
from tests.support.worker import running_worker

JOB = f"{__name__}:slow_then_done"
LEASE_A = 2.0  # worker A's lease: heartbeat every 2/3 s, expiry soon after a fault


# -- the job (imported by the worker processes as tests.chaos.test_worker_faults) -------------


async def slow_then_done(dsn: str, idempotency_key: str, seconds: float) -> str:
    """Log "start", sleep, log "end".

    The "end" row is written with a *blocking* connection on purpose: from the moment the sleep
    is over until the job returns, the worker's event loop runs nothing else. A worker resumed
    by SIGCONT has both this job's timer and its heartbeat's timer overdue; with a blocking end
    the job always returns (and the worker starts reporting it) before the heartbeat's
    statements can come back and cancel it as "lease lost", so the late completion reliably
    reaches the database, where it must be fenced. (With an async end the heartbeat won 4 out
    of 4 trials: it cancels the zombie as "lease lost" before its end, which is just as safe
    but leaves no trace in the database, only the worker's in-memory `stats.fenced`.)
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO public.job_log (idempotency_key, note, pid) VALUES (%s, 'start', %s)",
            [idempotency_key, os.getpid()],
        )
    await asyncio.sleep(seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.job_log (idempotency_key, note, pid) VALUES (%s, 'end', %s)",
            [idempotency_key, os.getpid()],
        )
    return "slept"


# -- fixtures and helpers --------------------------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def worker_process(
    dsn: str,
    tmp_path: Path,
    name: str,
    *,
    lease: float = LEASE_A,
    slots: int = 4,
    grace: float = 30.0,
) -> Iterator[WorkerProcess]:
    """A `pgsched worker` subprocess; always reaped, its output printed if the test fails."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PGSCHED_LEASE_SECONDS": str(lease),
        "PGSCHED_WORKER_SLOTS": str(slots),
        "PGSCHED_SHUTDOWN_GRACE_SECONDS": str(grace),
        "PGSCHED_QUEUES": "default",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / f"worker-{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgsched", "worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    wp = WorkerProcess(proc, log_path)
    try:
        yield wp
    except BaseException:
        print(f"--- worker {name} (pid {proc.pid}) output ---\n{wp.output()}")
        raise
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot die of SIGKILL
                proc.kill()
        proc.wait(timeout=10)


def rescuer(dsn: str, **settings: Any) -> contextlib.AbstractAsyncContextManager[Worker]:
    """Worker B, in this process: rescues every 0.3 s and claims promptly."""
    return running_worker(dsn, **{"slots": 8, "lease_seconds": 5.0, **settings})


async def eventually(what: str, check: Any, *, within: float = 20.0, proc: Any = None) -> Any:
    """`tests.support.worker.eventually`, failing at once if the worker process `proc` exits."""

    def alive() -> str | None:
        if proc is not None and proc.proc.poll() is not None:
            return f"worker process exited ({proc.proc.returncode})"
        return None

    return await support.eventually(what, check, within=within, alive=alive)


async def fetch(conn: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def worker_id_of(conn: Conn, wp: WorkerProcess) -> int:
    async def registered() -> int | None:
        rows = await fetch(conn, "SELECT id FROM pgsched.worker WHERE pid = %s", [wp.pid])
        return rows[0]["id"] if rows else None

    return int(await eventually(f"worker pid {wp.pid} registers", registered, proc=wp))


async def make_job_schedule(conn: Conn, dsn: str, seconds: float, **over: Any) -> dict[str, Any]:
    return await make_schedule(
        conn,
        now=datetime.now(UTC),
        job_type="python",
        payload={"target": JOB, "kwargs": {"dsn": dsn, "seconds": seconds}},
        retry_delay_seconds=0.2,  # the rescue's backoff before the next attempt
        retry_factor=1,
        **over,
    )


async def trigger(conn: Conn, schedule_id: int) -> int:
    run, _ = await schedules.trigger(conn, schedule_id, actor="test", now=None)
    return int(run["id"])


async def runs(conn: Conn, ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = await fetch(conn, "SELECT * FROM pgsched.run WHERE id = ANY(%s)", [ids])
    return {r["id"]: r for r in rows}


async def events(conn: Conn, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    rows = await fetch(
        conn,
        "SELECT stream_id, type, data, meta, occurred_at FROM pgsched.event"
        " WHERE stream = 'run' AND stream_id = ANY(%s) ORDER BY id",
        [ids],
    )
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in rows:
        out[r["stream_id"]].append(r)
    return out


async def job_log(conn: Conn) -> Counter[tuple[str, str]]:
    """(run_id:attempt, note) -> how many times it was written."""
    rows = await fetch(conn, "SELECT idempotency_key, note FROM public.job_log")
    return Counter((r["idempotency_key"], r["note"]) for r in rows)


def report(capsys: pytest.CaptureFixture[str], title: str, counts: dict[str, Any]) -> None:
    with capsys.disabled():
        print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in counts.items()))


async def _running_in(db: Conn, ids: list[int], worker_id: int) -> bool:
    """Every run of `ids` is running in `worker_id`, its job started once, on attempt 1."""
    rs = (await runs(db, ids)).values()
    started = await job_log(db)
    return all(
        r["state"] == "running"
        and r["worker_id"] == worker_id
        and started[(f"{r['id']}:1", "start")] == 1
        for r in rs
    )


# -- the tests -------------------------------------------------------------------------------


async def test_sigkill_mid_run_rescued_and_completed_exactly_once(
    db: Conn, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 8
    s = await make_job_schedule(db, dsn, seconds=2.0, max_attempts=3)
    with worker_process(dsn, tmp_path, "A", slots=n) as a:
        a_id = await worker_id_of(db, a)
        ids = [await trigger(db, s["id"]) for _ in range(n)]

        async def all_running_in_a() -> bool:
            return await _running_in(db, ids, a_id)

        await eventually(f"all {n} runs running in worker A", all_running_in_a, proc=a)
        os.kill(a.pid, signal.SIGKILL)
        assert a.proc.wait(timeout=10) == -signal.SIGKILL
        killed_at = (await fetch(db, "SELECT clock_timestamp() AS t"))[0]["t"]
        in_flight_at_kill = sum(
            1 for r in (await runs(db, ids)).values() if r["state"] == "running"
        )

        async with rescuer(dsn) as b:

            async def all_finished() -> bool:
                rs = (await runs(db, ids)).values()
                return all(r["state"] in {"succeeded", "dead", "cancelled"} for r in rs)

            await eventually("every run finishes under worker B", all_finished, within=30)

    final = await runs(db, ids)
    evs = await events(db, ids)
    logged = await job_log(db)
    per_run_types = {i: Counter(e["type"] for e in evs[i]) for i in ids}

    for i in ids:
        run = final[i]
        types = [e["type"] for e in evs[i]]
        assert run["state"] == "succeeded", (i, run["state"], types)
        assert run["attempt"] == 2, (i, run["attempt"])
        assert run["worker_id"] == b.worker_id and run["outcome"]["worker_id"] == b.worker_id
        assert types == [
            "run.created",
            "run.claimed",
            "run.rescued",
            "run.claimed",
            "run.succeeded",
        ]
        claims = [e["data"]["worker_id"] for e in evs[i] if e["type"] == "run.claimed"]
        assert claims == [a_id, b.worker_id]
        # The killed attempt started and never ended; the rescued one ran once, to the end.
        assert logged[(f"{i}:1", "start")] == 1 and logged[(f"{i}:1", "end")] == 0
        assert logged[(f"{i}:2", "start")] == 1 and logged[(f"{i}:2", "end")] == 1
    assert sum(logged.values()) == 3 * n, "no other executions"
    assert b.stats.succeeded == n and b.stats.fenced == 0
    assert await replay.verify(db) == []

    rescued_at = [e["occurred_at"] for i in ids for e in evs[i] if e["type"] == "run.rescued"]
    recovered_at = [
        [e for e in evs[i] if e["type"] == "run.claimed"][-1]["occurred_at"] for i in ids
    ]
    report(
        capsys,
        "SIGKILL mid-run",
        {
            "runs": n,
            "in_flight_at_kill": in_flight_at_kill,
            "rescued": sum(t["run.rescued"] for t in per_run_types.values()),
            "succeeded": sum(t["run.succeeded"] for t in per_run_types.values()),
            "runs_with_2_succeeded": sum(
                1 for t in per_run_types.values() if t["run.succeeded"] > 1
            ),
            "lost": sum(1 for r in final.values() if r["state"] != "succeeded"),
            "executions": sum(v for (_, note), v in logged.items() if note == "start"),
            "killed_executions": sum(
                1 for i in ids if logged[(f"{i}:1", "start")] and not logged[(f"{i}:1", "end")]
            ),
            "duplicate_executions": sum(
                v for (key, note), v in logged.items() if note == "start" and key.endswith(":2")
            ),
            "rescue_after_kill_s": round(
                max((t - killed_at).total_seconds() for t in rescued_at), 2
            ),
            "pickup_after_kill_s": round(
                max((t - killed_at).total_seconds() for t in recovered_at), 2
            ),
        },
    )


def _executed_at_least_once(logged: Counter[tuple[str, str]], run_id: int, path: str) -> None:
    """Attempt 2 ran to its end; attempt 1 too when its result reached the database. When A
    learned first that its lease was lost, attempt 1 was stopped, or had just finished its work
    on the same wake-up and its result was abandoned: 0 or 1 ends."""
    ends_of_first = logged[(f"{run_id}:1", "end")]
    assert ends_of_first == 1 if path == "complete" else ends_of_first in {0, 1}
    assert +(logged - Counter({(f"{run_id}:1", "end"): ends_of_first})) == Counter(
        {(f"{run_id}:1", "start"): 1, (f"{run_id}:2", "start"): 1, (f"{run_id}:2", "end"): 1}
    )


async def test_sigstopped_worker_past_its_lease_is_fenced(
    db: Conn, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await make_job_schedule(db, dsn, seconds=1.5, max_attempts=3)
    with worker_process(dsn, tmp_path, "A") as a:
        a_id = await worker_id_of(db, a)
        run_id = await trigger(db, s["id"])

        async def attempt_1_started() -> bool:
            run = (await runs(db, [run_id]))[run_id]
            started = (await job_log(db))[(f"{run_id}:1", "start")]
            return run["state"] == "running" and run["worker_id"] == a_id and started == 1

        await eventually("worker A runs attempt 1", attempt_1_started, proc=a)
        os.kill(a.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            async with rescuer(dsn) as b:

                async def done_by_b() -> bool:
                    run = (await runs(db, [run_id]))[run_id]
                    return run["state"] in {"succeeded", "dead", "cancelled"}

                await eventually("worker B rescues and completes the run", done_by_b, within=20)
                mid = (await runs(db, [run_id]))[run_id]
                assert mid["state"] == "succeeded" and mid["attempt"] == 2, mid
                assert mid["outcome"]["worker_id"] == b.worker_id
                # A never ran while stopped: attempt 1 has not ended.
                assert (await job_log(db))[(f"{run_id}:1", "end")] == 0
        finally:
            paused = time.monotonic() - stopped_at
            os.kill(a.pid, signal.SIGCONT)
        assert paused > LEASE_A, "paused past its lease"

        async def fenced_recorded() -> list[dict[str, Any]]:
            return [
                e
                for e in (await events(db, [run_id]))[run_id]
                if e["type"] == "run.completion_fenced"
            ]

        fenced = await eventually(
            "A's late completion is fenced", fenced_recorded, within=15, proc=a
        )
        # Whatever else A writes, it writes before it exits: its exit is what the checks
        # below wait for.
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=20) == 0, "A drains and exits cleanly after SIGTERM"
        a_output = a.output()

    final = (await runs(db, [run_id]))[run_id]
    evs = (await events(db, [run_id]))[run_id]
    types = Counter(e["type"] for e in evs)
    logged = await job_log(db)

    # Exactly-once completion: the late result of attempt 1 changed nothing.
    assert final["state"] == "succeeded" and final["attempt"] == 2
    assert final["worker_id"] == b.worker_id and final["outcome"]["worker_id"] == b.worker_id
    assert final["outcome"]["status"] == "succeeded"
    assert types["run.succeeded"] == 1
    assert types["run.completion_fenced"] == 1
    (zombie,) = fenced
    # On SIGCONT two timers of A are overdue at once: the job's end and the heartbeat. Whichever
    # the loop runs first decides how A learns it lost the lease; both paths are fenced. Either
    # the job's result reaches the database and is refused ("complete"), or the heartbeat finds
    # the lease gone first and A abandons the attempt ("lease_lost", the job stopped unfinished).
    path = zombie["meta"]["transition"]
    assert zombie["meta"]["attempt"] == 1 and path in {"complete", "lease_lost"}, zombie
    assert zombie["data"] == {}, "a fenced result changes nothing"
    assert [e["type"] for e in evs] == [
        "run.created",
        "run.claimed",
        "run.rescued",
        "run.claimed",
        "run.succeeded",
        "run.completion_fenced",
    ]
    assert ("completion fenced" if path == "complete" else "lease lost") in a_output, a_output
    _executed_at_least_once(logged, run_id, path)
    state_a = await fetch(db, "SELECT state FROM pgsched.worker WHERE id = %s", [a_id])
    assert state_a == [{"state": "stopped"}] and b.stats.rescued == 1 and b.stats.succeeded == 1
    assert await replay.verify(db) == []
    report(
        capsys,
        "SIGSTOP zombie",
        {
            "runs": 1,
            "paused_s": round(paused, 2),
            "executions": sum(v for (_, note), v in logged.items() if note == "start"),
            "executions_ended": sum(v for (_, note), v in logged.items() if note == "end"),
            "rescued": types["run.rescued"],
            "succeeded_events": types["run.succeeded"],
            "stale_completions_fenced": types["run.completion_fenced"],
            "fenced_by": path,
            "final_attempt": final["attempt"],
            "a_exit_code": a.proc.returncode,
        },
    )


async def test_sigkill_with_no_attempts_left_goes_dead(
    db: Conn, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await make_job_schedule(db, dsn, seconds=3.0, max_attempts=1)
    with worker_process(dsn, tmp_path, "A") as a:
        a_id = await worker_id_of(db, a)
        run_id = await trigger(db, s["id"])

        async def started() -> bool:
            run = (await runs(db, [run_id]))[run_id]
            return run["state"] == "running" and (await job_log(db))[(f"{run_id}:1", "start")] == 1

        await eventually("worker A runs the only attempt", started, proc=a)
        os.kill(a.pid, signal.SIGKILL)
        assert a.proc.wait(timeout=10) == -signal.SIGKILL

        async with rescuer(dsn) as b:

            async def finished() -> bool:
                run = (await runs(db, [run_id]))[run_id]
                return run["state"] not in {"waiting", "running"}

            await eventually("the rescue ends the run", finished, within=15)
            # A dead run must stay dead: B looks for work twice more and must not claim it.
            looked = b.claim_idle.passes
            await support.signalled(
                b.claim_idle.until(lambda: b.claim_idle.passes >= looked + 2),
                "worker B looks for work twice more",
            )

    final = (await runs(db, [run_id]))[run_id]
    evs = (await events(db, [run_id]))[run_id]
    types = [e["type"] for e in evs]
    logged = await job_log(db)
    assert final["state"] == "dead" and final["attempt"] == 1
    assert final["outcome"]["status"] == "lease_expired"
    assert final["finished_at"] is not None and final["lease_expires_at"] is None
    assert types == ["run.created", "run.claimed", "run.dead"]
    assert evs[1]["data"]["worker_id"] == a_id
    assert logged == Counter({(f"{run_id}:1", "start"): 1})
    assert b.stats.claimed == 0 and b.stats.rescued == 1
    assert await replay.verify(db) == []
    report(
        capsys,
        "SIGKILL, attempts spent",
        {
            "runs": 1,
            "dead": int(final["state"] == "dead"),
            "dead_events": types.count("run.dead"),
            "rescued_events": types.count("run.rescued"),
            "executions": sum(logged.values()),
            "outcome": final["outcome"]["status"],
        },
    )


async def test_a_second_sigterm_stops_at_once_and_releases_the_runs_in_flight(
    db: Conn, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ADR 0013, shutdown: the first SIGTERM stops claiming and lets jobs finish within the
    grace period (60 s here); a second one skips what is left of it. The jobs (60 s each) are
    stopped, their runs released (`run.released`, attempt not consumed), the worker `stopped`,
    long before the grace period would have ended."""
    n = 2
    s = await make_job_schedule(db, dsn, seconds=60.0, max_attempts=3)
    with worker_process(dsn, tmp_path, "A", grace=60.0) as a:
        a_id = await worker_id_of(db, a)
        ids = [await trigger(db, s["id"]) for _ in range(n)]

        async def all_started_in_a() -> bool:
            return await _running_in(db, ids, a_id)

        async def a_state() -> str:
            rows = await fetch(db, "SELECT state FROM pgsched.worker WHERE id = %s", [a_id])
            return str(rows[0]["state"])

        async def a_stopping() -> bool:
            return await a_state() == "stopping"

        await eventually(f"all {n} runs running in worker A", all_started_in_a, proc=a)
        a.proc.send_signal(signal.SIGTERM)
        await eventually("worker A drains after the first SIGTERM", a_stopping, proc=a)
        # Draining: the jobs keep running, nothing is released while the grace period lasts.
        # A deliberate wait (there is no event for "nothing happened"): a second of the grace
        # period passes before the checks.
        await asyncio.sleep(1.0)
        assert a.proc.poll() is None, "the first SIGTERM only drains"
        assert {r["state"] for r in (await runs(db, ids)).values()} == {"running"}

        second = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)

        async def exited() -> bool:
            return a.proc.poll() is not None

        await eventually("worker A exits after the second SIGTERM", exited, within=10)
        took = time.monotonic() - second
        assert a.proc.returncode == 0, a.output()
        assert await a_state() == "stopped"

    final = await runs(db, ids)
    evs = await events(db, ids)
    logged = await job_log(db)
    for i in ids:
        types = [e["type"] for e in evs[i]]
        assert final[i]["state"] == "waiting", (i, final[i]["state"], types)
        assert final[i]["attempt"] == 0, "a released attempt is not consumed"
        assert types == ["run.created", "run.claimed", "run.released"], types
        assert logged[(f"{i}:1", "start")] == 1 and logged[(f"{i}:1", "end")] == 0
    assert await replay.verify(db) == []
    report(capsys, "second SIGTERM", {"runs": n, "released": n, "exit_after_s": round(took, 2)})
