"""Chaos soak (issue 12): real processes, kill -9 and database crashes, checked from outside.

    python -m bench.soak [--runs 10000] [--minutes 10] [--workers 4] [--slots 5] [--tickers 1]
                         [--kills 24] [--ticker-kills 2] [--pg-restarts 3] [--outages 5,15,40]
                         [--lease 10] [--drain-seconds 240] [--seed 12] [--quick] [--keep]
                         [--out soak.json]

Not part of the test suite: run it on demand (~11-13 minutes with the defaults on 2 cores; `--quick`
is a ~4-minute smoke check with smaller numbers). What it does:

- **Its own PostgreSQL.** A private cluster (`app.localpg`, durable settings: fsync and
  synchronous_commit on) in a temporary directory on a free port, migrated with
  `pgsched migrate`. The shared server is never touched. A "crash-restart" is
  `localpg.stop(mode="immediate")` (SIGQUIT to the postmaster, what `pg_ctl stop -m immediate`
  sends), an outage of a given length, then `localpg.start` on the same port (crash recovery).
- **Real processes.** `--workers` `pgsched worker` processes (`--slots` each,
  PGSCHED_LEASE_SECONDS=`--lease`), `--tickers` `pgsched ticker` processes and one `pgsched api`,
  each a subprocess with its own log file. The harness is their supervisor: a process that exits
  on its own (not killed by the harness) is recorded ("self-exit": role, exit code, when,
  whether the database was down) and restarted after a capped backoff (1, 2, 4 … 10 s), as a
  service manager with a restart policy would.
- **Runs through the product's own paths.** Schedules are created over the REST API (admin token
  from `pgsched token create`): `N` interval schedules every 1 s (phases spread over the
  second; N follows from `--runs`), four cron schedules in four zones (`* * * * *` UTC,
  `* * * * *` Asia/Kolkata, `*/2 * * * *` Australia/Lord_Howe, `*/3 * * * *` America/St_Johns),
  all with `missed_policy` `all`, so every occurrence must become exactly one run. A client
  thread POSTs one trigger per second (each with its own Idempotency-Key, retried with the same
  key until answered) and, every 20 s, a backfill of the last 40 s to 10 s of a disabled 1-s
  schedule (overlapping ranges: a backfill must not create an occurrence twice).
- **The job** is a `command` job, a bash script (`job.sh` in the temporary directory) that
  records every execution outside pgsched: it takes a non-blocking `flock` on a per-run lock
  file (held by the job's processes until they all exit, however they die), then appends
  `start <run> <attempt> <pid> <worker pid> <epoch s> <lock held 1/0>` to `exec.log` (O_APPEND;
  one short write per line), sleeps, appends `end <run> <attempt> <pid> <worker pid> <epoch s>
  <exit code>` and exits. Durations are seeded per run: 50-500 ms, and 1.5 % of runs 15-45 s
  (longer than the lease, so a killed worker's orphan can still run when its run is rescued);
  10 % of runs fail their first attempt (exit 1) and are retried after 1 s.
- **Faults** at seeded random times in the middle of the soak (the first 30 s and last 45 s
  are quiet): `--kills` `kill -9` of a random live worker (restarted 0.5-3 s later),
  `--ticker-kills` `kill -9` of a ticker (restarted 1-10 s later), `--pg-restarts` crash-restarts
  of the database with the outages of `--outages` (seeded order).
- **Drain.** After `--minutes`, the client thread stops, the tickers get SIGTERM, and the
  workers run until no run is waiting or running (or `--drain-seconds` pass; what is left is
  "lost"). Then the workers and the API get SIGTERM, orphaned job processes get up to 30 s to
  finish (then SIGKILL), and `pgsched verify` runs.

Checkers (independent of pgsched's own counters; each lists its first cases in the results):

- **lost**: runs not in a terminal state (succeeded, dead, cancelled) after the drain; also the
  dead runs, with their last error;
- **completions counted twice**: runs with more than one terminal event, and attempts with more
  than one attempt-ending event (succeeded, retry_scheduled, dead, cancelled, rescued, released
  after the same run.claimed);
- **overlapping executions** (target 0): two executions of one run alive at the same time. Proven
  either by the lock (an execution found the run's lock held by an earlier one) or by the records
  (an execution started before an earlier one's `end`); an execution killed before its `end`
  line counts only through the lock;
- **executions of a finished run**: an execution that started after the run's terminal event;
- **duplicate executions of one attempt**: more than one `start` for the same (run, attempt);
- **re-executed after a successful execution**: a run executed again after one of its executions
  had exited 0 (a finished result not recorded: the worker died, or gave up reporting), by cause
  (the worker of the successful execution was killed by the harness / the database was down
  between its end and the next execution / other);
- **occurrences missed or doubled**: for each interval and cron schedule, the expected occurrences
  (computed here: the 1-s grid from `starts_at`; cron minutes via zoneinfo, independently of
  `app.domain.occurrences`) from creation to 5 s before the tickers stopped, against the runs;
  for the backfill schedule the union of the acknowledged ranges; for triggers the acknowledged
  Idempotency-Keys. Missing, doubled (two runs for one occurrence or key) and unexpected runs;
- **work resumed after each database restart**: from the moment the database accepted
  connections again to the first execution start, the first `run.claimed`, the first
  `run.succeeded`, the first run the ticker created, the first answered API request, and the
  slowest worker's first claim; p50 and max over the restarts;
- **`pgsched verify`** exit code and difference count; the self-exits; log lines and tracebacks
  per role.

Results: bench/results/soak.json (or `--out`): parameters, seed, git commit, every fault with its
time, every figure and the first cases of each checker; a one-screen summary on stdout. Process
logs, the execution log and the server log go to bench/results/tmp/soak/ (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from bench._common import RESULTS, command_line, machine, now_iso, source_digests, write_results
from pgsched.app import localpg

ROOT = Path(__file__).resolve().parent.parent
LOGS = RESULTS / "tmp" / "soak"
TERMINAL = ("succeeded", "dead", "cancelled")
TERMINAL_EVENTS = {"run.succeeded", "run.dead", "run.cancelled"}
ATTEMPT_ENDS = TERMINAL_EVENTS | {"run.retry_scheduled", "run.rescued", "run.released"}
CRON = (
    ("* * * * *", "UTC", 1),
    ("* * * * *", "Asia/Kolkata", 1),
    ("*/2 * * * *", "Australia/Lord_Howe", 2),
    ("*/3 * * * *", "America/St_Johns", 3),
)
TRIGGER_EVERY = 1.0
BACKFILL_EVERY = 20.0
BACKFILL_RANGE = (40, 10)  # [now - 40 s, now - 10 s), whole seconds
LONG_PERMILLE = 15
LONG_MS = (15_000, 45_000)
FAIL_PCT = 10
QUIET_START, QUIET_END = 30.0, 45.0
LIST_CAP = 50

# Every execution of every run, recorded outside pgsched (see the module docstring).
JOB_SCRIPT = r"""#!/bin/bash
# One execution of a bench.soak run: lock, record, sleep, record (bench/soak.py).
r=$PGSCHED_RUN_ID; a=$PGSCHED_ATTEMPT; d=$SOAK_DIR
exec 9>>"$d/locks/$r"
if flock -n 9; then held=1; else held=0; fi
echo "start $r $a $$ $PPID $EPOCHREALTIME $held" >>"$d/exec.log"
# A seeded hash of the run id (murmur-style mixing), so a run keeps its duration on retry.
h=$(( (r + SOAK_SEED * 7919) * 2654435761 % 4294967296 ))
h=$(( (h ^ (h >> 15)) * 2246822519 % 4294967296 ))
h=$(( h ^ (h >> 13) ))
if (( h % 1000 < SOAK_LONG_PERMILLE )); then
  ms=$(( SOAK_LONG_MIN_MS + (h / 1000) % (SOAK_LONG_MAX_MS - SOAK_LONG_MIN_MS) ))
else
  ms=$(( 50 + (h / 1000) % 450 ))
fi
code=0
if (( a == 1 && (h >> 22) % 100 < SOAK_FAIL_PCT )); then code=1; fi
printf -v frac '%03d' $(( ms % 1000 ))
sleep "$(( ms / 1000 )).$frac"
echo "end $r $a $$ $PPID $EPOCHREALTIME $code" >>"$d/exec.log"
exit $code
"""


@dataclass
class Params:
    runs: int
    minutes: float
    workers: int
    slots: int
    tickers: int
    kills: int
    ticker_kills: int
    pg_restarts: int
    outages: list[float]
    lease: float
    drain_seconds: float
    seed: int
    quick: bool
    interval_schedules: int = 0


@dataclass
class Proc:
    role: str
    index: int
    generation: int
    popen: subprocess.Popen[bytes]
    log: Path
    started: float
    killed: bool = False  # by the harness (kill -9 or the final SIGTERM)


@dataclass
class Outage:
    down_at: float = 0.0  # epoch seconds
    up_at: float = 0.0
    planned_s: float = 0.0
    recovery_s: float = 0.0  # localpg.start, crash recovery included


@dataclass
class Harness:
    params: Params
    tmp: Path
    data_dir: Path
    # Every `at_s` in the results is seconds since this instant: the start of the soak proper.
    t0: float = field(default_factory=time.time)
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[tuple[str, int], Proc] = field(default_factory=dict)
    all_procs: list[Proc] = field(default_factory=list)
    restart_at: dict[tuple[str, int], float] = field(default_factory=dict)
    failures: dict[tuple[str, int], int] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    self_exits: list[dict[str, Any]] = field(default_factory=list)
    killed_pids: dict[int, float] = field(default_factory=dict)
    outages: list[Outage] = field(default_factory=list)
    db_down: bool = False
    api_port: int = 0
    pg: localpg.LocalPostgres | None = None

    # -- processes -----------------------------------------------------------------------

    def spawn(self, role: str, index: int) -> Proc:
        argv = [sys.executable, "-m", "pgsched", role]
        if role == "api":
            argv += ["--port", str(self.api_port), "--log-level", "warning"]
        generation = sum(1 for p in self.all_procs if (p.role, p.index) == (role, index))
        log = self.tmp / "logs" / f"{role}-{index}-{generation}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the harness only; it stops them in order
            )
        proc = Proc(role, index, generation, popen, log, time.time())
        self.procs[(role, index)] = proc
        self.all_procs.append(proc)
        return proc

    def kill9(self, role: str, index: int) -> int | None:
        proc = self.procs.get((role, index))
        if proc is None or proc.popen.poll() is not None:
            return None
        proc.killed = True
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        self.killed_pids[proc.popen.pid] = time.time()
        del self.procs[(role, index)]
        return proc.popen.pid

    def live(self, role: str) -> list[int]:
        return sorted(i for (r, i), p in self.procs.items() if r == role and p.popen.poll() is None)

    def supervise(self) -> None:
        """Record processes that exited on their own and restart them (capped backoff); start
        the ones whose restart is due."""
        now = time.time()
        for key, proc in list(self.procs.items()):
            code = proc.popen.poll()
            if code is None or proc.killed:
                continue
            # A process that ran a while before exiting starts its backoff afresh.
            n = self.failures.get(key, 0) if now - proc.started < 30 else 0
            self.failures[key] = n + 1
            last = self.outages[-1] if self.outages else None
            self.self_exits.append(
                {
                    "role": proc.role,
                    "index": proc.index,
                    "pid": proc.popen.pid,
                    "exit_code": code,
                    "at_s": round(now - self.t0, 1),
                    "ran_s": round(now - proc.started, 1),
                    "db_down": self.db_down,
                    "s_since_db_down": round(now - last.down_at, 1) if last else None,
                    "last_log_line": _last_line(proc.log),
                }
            )
            del self.procs[key]
            self.restart_at[key] = now + min(10.0, 2.0**n)
        for key, at in list(self.restart_at.items()):
            if at <= now:
                del self.restart_at[key]
                self.spawn(*key)

    def stop_all(self, role: str, timeout: float) -> dict[int, int | None]:
        """SIGTERM every live process of `role`, wait, SIGKILL what is left; their exit codes."""
        chosen = [(k, p) for k, p in self.procs.items() if k[0] == role]
        for key in [k for k in self.restart_at if k[0] == role]:
            del self.restart_at[key]
        for _, p in chosen:
            p.killed = True
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        codes: dict[int, int | None] = {}
        deadline = time.monotonic() + timeout
        for key, p in chosen:
            try:
                codes[p.popen.pid] = p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=10)
                codes[p.popen.pid] = None
            del self.procs[key]
        return codes

    def kill_everything(self) -> None:
        for p in self.all_procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=10)

    # -- the database ----------------------------------------------------------------------

    def pg_down(self) -> None:
        if self.pg is None:
            raise RuntimeError("no cluster to stop")
        self.outages.append(Outage(down_at=time.time()))
        self.db_down = True
        localpg.stop(self.pg, mode="immediate")

    def pg_up(self) -> None:
        if self.pg is None:
            raise RuntimeError("no cluster to start")
        started = time.monotonic()
        self.pg = localpg.start(self.data_dir, port=self.pg.port, timeout=120)
        out = self.outages[-1]
        out.up_at = time.time()
        out.recovery_s = time.monotonic() - started
        out.planned_s = out.up_at - out.down_at - out.recovery_s
        self.db_down = False


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the REST API client ----------------------------------------------------------------------


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except ValueError:
                return exc.code, raw.decode(errors="replace")


@dataclass
class ClientLog:
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> answer
    backfills: list[dict[str, Any]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    answered_at: list[float] = field(default_factory=list)  # epoch of every 2xx answer
    errors_5xx: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0


def client_loop(
    api: Api, trigger_id: int, backfill_id: int, stop: threading.Event, log: ClientLog
) -> None:
    """One trigger a second (retried with its key until answered), a backfill every 20 s."""
    n = 0
    key: str | None = None
    next_backfill = time.time() + BACKFILL_EVERY
    pending_backfill: tuple[str, str] | None = None
    while not stop.is_set():
        tick = time.time()
        if key is None:
            n += 1
            key = f"soak-{n}"
        if pending_backfill is None and tick >= next_backfill:
            end = datetime.fromtimestamp(math.floor(tick), UTC)
            pending_backfill = (
                (end - timedelta(seconds=BACKFILL_RANGE[0])).isoformat(),
                (end - timedelta(seconds=BACKFILL_RANGE[1])).isoformat(),
            )
            next_backfill = tick + BACKFILL_EVERY
        if pending_backfill is not None:
            start, end_s = pending_backfill
            status, body = _request(
                api,
                log,
                "POST",
                f"/v1/schedules/{backfill_id}/backfill",
                {"from": start, "to": end_s},
            )
            if 200 <= status < 300:
                log.backfills.append({"from": start, "to": end_s, "answer": body})
                pending_backfill = None
        if _trigger(api, log, trigger_id, key):
            key = None
        stop.wait(max(0.05, TRIGGER_EVERY - (time.time() - tick)))
    # A key sent but never answered may or may not have created a run: settle it with one more
    # try (the API is up at the end) so the trigger checker knows what to expect.
    if key is not None:
        for _ in range(20):
            if _trigger(api, log, trigger_id, key):
                break
            time.sleep(1)


def _trigger(api: Api, log: ClientLog, trigger_id: int, key: str) -> bool:
    """One trigger with its Idempotency-Key; whether it was acknowledged (then it is logged)."""
    status, body = _request(
        api,
        log,
        "POST",
        f"/v1/schedules/{trigger_id}/trigger",
        None,
        headers={"Idempotency-Key": key},
    )
    if 200 <= status < 300:
        log.triggers[key] = {"status": status, "run_id": body["id"]}
        return True
    return False


def _request(
    api: Api,
    log: ClientLog,
    method: str,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    try:
        status, answer = api.call(method, path, body, headers)
    except (OSError, ValueError) as exc:
        log.statuses[f"error:{type(exc).__name__}"] += 1
        return 0, None
    log.statuses[str(status)] += 1
    if 200 <= status < 300:
        log.answered_at.append(time.time())
    elif status >= 500 and status != 503 and len(log.errors_5xx) < LIST_CAP:
        log.errors_5xx.append(
            {"at_s": round(time.time() - log.t0, 1), "status": status, "path": path}
        )
    return status, answer


# -- setup --------------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgsched", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def create_schedules(api: Api, h: Harness, start: datetime) -> dict[str, Any]:
    p = h.params
    job = {
        "argv": [str(h.tmp / "job.sh")],
        "env": {
            "SOAK_DIR": str(h.tmp),
            "SOAK_SEED": str(p.seed),
            "SOAK_LONG_PERMILLE": str(LONG_PERMILLE),
            "SOAK_LONG_MIN_MS": str(LONG_MS[0]),
            "SOAK_LONG_MAX_MS": str(LONG_MS[1]),
            "SOAK_FAIL_PCT": str(FAIL_PCT),
            "LC_ALL": "C",  # EPOCHREALTIME with a decimal point
        },
    }
    common = {
        "job_type": "command",
        "payload": job,
        "max_attempts": 5,
        "retry_backoff": {"delay_seconds": 1, "factor": 1, "max_delay_seconds": 5},
        "timeout_seconds": 60,
        "missed_policy": "all",
        "missed_cap": 1000,
    }

    def create(body: dict[str, Any]) -> dict[str, Any]:
        status, answer = api.call("POST", "/v1/schedules", {**common, **body}, timeout=30)
        if status != 201:
            raise RuntimeError(f"creating schedule {body['name']}: {status} {answer}")
        return dict(answer)

    out: dict[str, Any] = {"interval": [], "cron": []}
    n = p.interval_schedules
    for i in range(n):
        at = start + timedelta(seconds=i / n)
        row = create(
            {"name": f"soak-every-1s-{i}", "interval_seconds": 1, "starts_at": at.isoformat()}
        )
        out["interval"].append({"id": row["id"], "starts_at": at})
    for expr, zone, step in CRON:
        row = create({"name": f"soak-cron-{zone}", "cron": expr, "timezone": zone})
        out["cron"].append(
            {
                "id": row["id"],
                "cron": expr,
                "timezone": zone,
                "step": step,
                "created": datetime.now(UTC),
            }
        )
    backfill_anchor = start.replace(microsecond=0) - timedelta(minutes=5)
    row = create(
        {
            "name": "soak-backfill",
            "interval_seconds": 1,
            "starts_at": backfill_anchor.isoformat(),
            "enabled": False,
        }
    )
    out["backfill"] = {"id": row["id"], "starts_at": backfill_anchor}
    row = create({"name": "soak-trigger", "interval_seconds": 86400, "enabled": False})
    out["trigger"] = {"id": row["id"]}
    return out


def plan_faults(p: Params, soak_s: float, rng: random.Random) -> list[tuple[float, str, Any]]:
    lo, hi = QUIET_START, soak_s - QUIET_END
    faults: list[tuple[float, str, Any]] = []
    outages = [p.outages[i % len(p.outages)] for i in range(p.pg_restarts)]
    rng.shuffle(outages)
    if p.pg_restarts:
        seg = (hi - lo) / p.pg_restarts
        for i, outage in enumerate(outages):
            a, b = lo + i * seg, lo + (i + 1) * seg - outage - 10
            faults.append((rng.uniform(a, max(a, b)), "pg_restart", outage))
    faults += [(rng.uniform(lo, hi), "worker_kill", None) for _ in range(p.kills)]
    faults += [(rng.uniform(lo, hi), "ticker_kill", None) for _ in range(p.ticker_kills)]
    return sorted(faults, key=lambda f: f[0])


# -- the soak -------------------------------------------------------------------------------------


def soak(p: Params, tmp: Path) -> dict[str, Any]:
    soak_s = p.minutes * 60
    others = (
        soak_s / TRIGGER_EVERY
        + (soak_s - BACKFILL_RANGE[0])
        + sum(soak_s / 60 / step for _, _, step in CRON)
    )
    p.interval_schedules = max(1, math.ceil((p.runs * 1.03 - others) / soak_s))

    (tmp / "locks").mkdir()
    (tmp / "logs").mkdir()
    (tmp / "exec.log").touch()
    script = tmp / "job.sh"
    script.write_text(JOB_SCRIPT)
    script.chmod(0o755)

    h = Harness(p, tmp, data_dir=tmp / "pgdata")
    t = time.monotonic()
    try:
        pg = h.pg = localpg.start(h.data_dir, port=_free_port(), fast=False)
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE soak")
        dsn = pg.dsn("soak")
        h.api_port = _free_port()
        h.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PGSCHED_"))},
            "DATABASE_URL": dsn,
            "PGSCHED_LEASE_SECONDS": str(p.lease),
            "PGSCHED_WORKER_SLOTS": str(p.slots),
            "PGSCHED_SHUTDOWN_GRACE_SECONDS": "20",
            "PGSCHED_QUEUES": "default",
            "PYTHONUNBUFFERED": "1",
        }
        done = cli(h.env, "migrate")
        if done.returncode != 0:
            raise RuntimeError(f"pgsched migrate failed: {done.stderr.strip()}")
        done = cli(h.env, "token", "create", "--name", "soak", "--role", "admin")
        if done.returncode != 0:
            raise RuntimeError(f"pgsched token create failed: {done.stderr.strip()}")
        ctx = Soak(p, h, Api(h.api_port, done.stdout.strip()), dsn, random.Random(p.seed))
        ctx.setup["cluster_s"] = round(time.monotonic() - t, 1)
        print(f"cluster on port {pg.port}, data in {tmp}; migrated in {ctx.setup['cluster_s']} s")
        return _soak_body(ctx)
    finally:
        h.kill_everything()
        _kill_orphans(tmp)
        with contextlib.suppress(Exception):
            localpg.stop(h.data_dir, mode="immediate")
        _keep_logs(tmp)


@dataclass
class Soak:
    """One soak's moving parts."""

    p: Params
    h: Harness
    api: Api
    dsn: str
    rng: random.Random
    setup: dict[str, Any] = field(default_factory=dict)
    client: ClientLog = field(default_factory=ClientLog)
    pending_up: float | None = None  # when the database comes back (epoch s)


def _soak_body(ctx: Soak) -> dict[str, Any]:
    p, h, api = ctx.p, ctx.h, ctx.api
    h.spawn("api", 0)
    _wait_for(lambda: _api_ready(api), 60, "the API answers")
    start = datetime.fromtimestamp(math.ceil(time.time()) + 3, UTC)
    sched = create_schedules(api, h, start)
    print(
        f"{p.interval_schedules} interval schedules (every 1 s), {len(CRON)} cron, "
        "1 backfill target, 1 trigger target"
    )
    for i in range(p.tickers):
        h.spawn("ticker", i)
    for i in range(p.workers):
        h.spawn("worker", i)

    stop_client = threading.Event()
    thread = threading.Thread(
        target=client_loop,
        args=(api, sched["trigger"]["id"], sched["backfill"]["id"], stop_client, ctx.client),
        daemon=True,
    )
    soak_start = h.t0 = ctx.client.t0 = time.time()
    thread.start()
    _fault_loop(ctx, soak_start)

    # -- drain ----------------------------------------------------------------------------
    stop_client.set()
    thread.join(timeout=60)
    tickers = h.stop_all("ticker", 30)
    ticker_stopped = time.time()
    print(f"tickers stopped (exit codes {list(tickers.values())}); draining")
    drain_start = time.monotonic()
    remaining = -1
    while time.monotonic() - drain_start < p.drain_seconds:
        h.supervise()
        remaining = _remaining(ctx.dsn)
        if remaining == 0:
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - drain_start
    print(f"drained in {drain_s:.0f} s ({remaining} left)")
    workers = h.stop_all("worker", 40)
    apis = h.stop_all("api", 20)
    orphans_left = _wait_orphans(h.tmp, 30)

    final = read_history(ctx.dsn)
    verify = cli(h.env, "verify", timeout=600)
    verify_lines = verify.stdout.strip().splitlines()
    result = check(h, final, sched, ctx.client, (soak_start, ticker_stopped))
    result["setup"] = ctx.setup
    result["drain"] = {
        "seconds": round(drain_s, 1),
        "left_when_stopped": remaining,
        "orphan_job_processes_killed_at_end": orphans_left,
        "final_exit_codes": {
            "ticker": list(tickers.values()),
            "worker": list(workers.values()),
            "api": list(apis.values()),
        },
    }
    result["verify"] = {
        "exit_code": verify.returncode,
        "summary": verify_lines[-1] if verify_lines else verify.stderr.strip(),
        "first_differences": verify_lines[:-1][:LIST_CAP],
    }
    return result


def _fault_loop(ctx: Soak, soak_start: float) -> None:
    """Until the soak's end: inject the planned faults, bring the database back, supervise."""
    h = ctx.h
    soak_s = ctx.p.minutes * 60
    faults = plan_faults(ctx.p, soak_s, ctx.rng)
    end = soak_start + soak_s
    next_report = soak_start + 30
    print(f"soak for {soak_s:.0f} s: {len(faults)} faults planned")
    while time.time() < end or ctx.pending_up is not None:
        now = time.time()
        rel = now - soak_start
        while faults and faults[0][0] <= rel:
            fault = faults.pop(0)
            if not _inject(ctx, fault[1], fault[2], now, rel):
                faults.insert(0, (rel + 1, fault[1], fault[2]))  # nothing to kill: a bit later
                break
        if ctx.pending_up is not None and now >= ctx.pending_up:
            h.pg_up()
            ctx.pending_up = None
            o = h.outages[-1]
            print(
                f"  [{rel:5.0f} s] database back after {o.up_at - o.down_at:.1f} s "
                f"(recovery {o.recovery_s:.1f} s)"
            )
        h.supervise()
        if now >= next_report:
            next_report += 30
            print(f"  [{rel:5.0f} s] {_progress(ctx.dsn, h)}")
        time.sleep(0.1)


def _inject(ctx: Soak, kind: str, arg: Any, now: float, rel: float) -> bool:
    """One fault; False when there is nothing to kill right now."""
    h = ctx.h
    if kind == "pg_restart":
        if ctx.pending_up is None:  # never two outages at once
            h.pg_down()
            ctx.pending_up = now + arg
            h.faults.append({"kind": kind, "at_s": round(rel, 1), "outage_s": arg})
        return True
    role = "worker" if kind == "worker_kill" else "ticker"
    live = h.live(role)
    if not live:
        return False
    index = ctx.rng.choice(live)
    pid = h.kill9(role, index)
    back = ctx.rng.uniform(0.5, 3.0) if role == "worker" else ctx.rng.uniform(1.0, 10.0)
    h.restart_at[(role, index)] = now + back
    h.faults.append(
        {
            "kind": kind,
            "at_s": round(rel, 1),
            "index": index,
            "pid": pid,
            "restart_after_s": round(back, 1),
        }
    )
    return True


def _api_ready(api: Api) -> bool:
    try:
        status, _ = api.call("GET", "/v1/schedules?limit=1", timeout=2)
    except OSError:
        return False
    return status == 200


def _wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {within} s waiting until {what}")
        time.sleep(0.2)


def _remaining(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgsched.run WHERE state IN ('waiting', 'running')"
            ).fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else -1


def _progress(dsn: str, h: Harness) -> str:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            rows = conn.execute("SELECT state, count(*) FROM pgsched.run GROUP BY 1").fetchall()
        states = ", ".join(f"{s} {n}" for s, n in sorted(rows))
    except psycopg.Error as exc:
        states = f"database unreachable ({type(exc).__name__})"
    kills = Counter(f["kind"] for f in h.faults)
    return (
        f"runs: {states}; faults so far {dict(kills)}; self-exits {len(h.self_exits)}; "
        f"load {os.getloadavg()[0]:.1f}"
    )


def _job_pids(tmp: Path) -> dict[int, bool]:
    """pid -> still alive, for every execution that logged a start and no end."""
    started: dict[int, bool] = {}
    for line in (tmp / "exec.log").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] in ("start", "end"):
            started[int(parts[3])] = parts[0] == "start"
    out: dict[int, bool] = {}
    for pid, open_ in started.items():
        if open_:
            out[pid] = _is_our_job(pid, tmp)
    return out


def _is_our_job(pid: int, tmp: Path) -> bool:
    try:
        return str(tmp / "job.sh") in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
            errors="replace"
        )
    except OSError:
        return False


def _wait_orphans(tmp: Path, within: float) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_job_pids(tmp).values()):
            return 0
        time.sleep(0.5)
    return _kill_orphans(tmp)


def _kill_orphans(tmp: Path) -> int:
    """SIGKILL the process group of every job execution still alive (each is a session
    leader: the command job starts it in a new session)."""
    killed = 0
    with contextlib.suppress(OSError):
        for pid, alive in _job_pids(tmp).items():
            if alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                    killed += 1
    return killed


def _keep_logs(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        if LOGS.exists():
            shutil.rmtree(LOGS)
        LOGS.mkdir(parents=True)
        shutil.copytree(tmp / "logs", LOGS / "logs")
        shutil.copy(tmp / "exec.log", LOGS / "exec.log")
        pglog = tmp / "pgdata.log"
        if pglog.exists():
            shutil.copy(pglog, LOGS / "postgres.log")


# -- the record ----------------------------------------------------------------------------------


def read_history(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        runs = conn.execute(
            "SELECT id, schedule_id, due_at, adhoc, origin, state, attempt, max_attempts,"
            " worker_id, created_at, finished_at, idempotency_key, outcome->>'error' AS error,"
            " outcome->>'exit_code' AS exit_code, left(outcome->>'output', 200) AS output,"
            " outcome->>'worker_id' AS outcome_worker_id"
            " FROM pgsched.run"
        ).fetchall()
        events = conn.execute(
            "SELECT id, occurred_at, stream_id, type, data, meta FROM pgsched.event"
            " WHERE stream = 'run' ORDER BY id"
        ).fetchall()
        missed = conn.execute(
            "SELECT stream_id, count(*) AS n FROM pgsched.event"
            " WHERE type = 'schedule.occurrence_missed' GROUP BY 1"
        ).fetchall()
        workers = conn.execute("SELECT id, pid, started_at, state FROM pgsched.worker").fetchall()
    return {"runs": runs, "events": events, "missed": missed, "workers": workers}


@dataclass
class Execution:
    run: int
    attempt: int
    pid: int
    worker_pid: int
    start: float
    held: bool
    end: float | None = None
    code: int | None = None


def read_executions(path: Path) -> list[Execution]:
    by_pid: dict[int, Execution] = {}
    out: list[Execution] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 7:
            continue
        kind, run, attempt, pid, ppid, at, extra = parts
        if kind == "start":
            e = Execution(int(run), int(attempt), int(pid), int(ppid), float(at), extra == "1")
            by_pid[e.pid] = e
            out.append(e)
        elif kind == "end" and int(pid) in by_pid:
            e = by_pid.pop(int(pid))
            e.end, e.code = float(at), int(extra)
    return out


def _epoch(t: datetime) -> float:
    return t.timestamp()


def check(
    h: Harness,
    final: dict[str, Any],
    sched: dict[str, Any],
    client: ClientLog,
    window: tuple[float, float],
) -> dict[str, Any]:
    """Every checker over the final read and the execution records (module docstring)."""
    soak_start, ticker_stopped = window
    # Only the soak's own schedules: the ticker also installs the built-in hourly maintenance
    # schedule (a python job with no execution record here), whose runs are listed apart.
    own = {
        s["id"] for s in (*sched["interval"], *sched["cron"], sched["backfill"], sched["trigger"])
    }
    others = [
        {k: r[k] for k in ("id", "schedule_id", "origin", "state", "due_at")}
        for r in final["runs"]
        if r["schedule_id"] not in own
    ]
    foreign = {o["id"] for o in others}
    final = {
        **final,
        "runs": [r for r in final["runs"] if r["schedule_id"] in own],
        "events": [e for e in final["events"] if e["stream_id"] not in foreign],
    }
    runs = {r["id"]: r for r in final["runs"]}
    events_by_run: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in final["events"]:
        events_by_run[e["stream_id"]].append(e)
    execs = read_executions(h.tmp / "exec.log")
    execs_by_run: dict[int, list[Execution]] = defaultdict(list)
    for e in execs:
        execs_by_run[e.run].append(e)

    lost = [
        {"run": r["id"], "state": r["state"], "attempt": r["attempt"]}
        for r in runs.values()
        if r["state"] not in TERMINAL
    ]
    dead = [
        {"run": r["id"], "attempt": r["attempt"], "error": r["error"]}
        for r in runs.values()
        if r["state"] == "dead"
    ]
    terminal_at, completions = check_completions(events_by_run)
    executions = check_executions(execs_by_run, terminal_at, h)
    # A run pgsched says succeeded that no execution record knows of: with what it reported.
    never_executed = [
        {
            "run": r,
            "attempt": run["attempt"],
            "exit_code": run["exit_code"],
            "output": run["output"],
            "worker_id": run["outcome_worker_id"],
            "origin": run["origin"],
        }
        for r, run in runs.items()
        if run["state"] == "succeeded" and r not in execs_by_run
    ]
    p = h.params
    return {
        "runs": {
            "total": len(runs),
            "by_origin": dict(Counter(r["origin"] for r in runs.values())),
            "by_state": dict(Counter(r["state"] for r in runs.values())),
            "executions": len(execs),
            "executions_without_end": sum(1 for e in execs if e.end is None),
            "succeeded_without_execution_record": len(never_executed),
            "succeeded_without_execution_record_first": never_executed[:LIST_CAP],
            "run_event_types": dict(Counter(e["type"] for e in final["events"])),
            "runs_of_other_schedules": others,
        },
        "faults": {
            "planned": {
                "worker_kills": p.kills,
                "ticker_kills": p.ticker_kills,
                "pg_restarts": p.pg_restarts,
            },
            "done": dict(Counter(f["kind"] for f in h.faults)),
            "list": h.faults,
            "outages": [
                {
                    "down_at_s": round(o.down_at - h.t0, 1),
                    "down_s": round(o.up_at - o.down_at, 1),
                    "recovery_s": round(o.recovery_s, 2),
                }
                for o in h.outages
            ],
        },
        "checks": {
            "lost": {"count": len(lost), "first": lost[:LIST_CAP]},
            "dead": {
                "count": len(dead),
                "errors": dict(Counter((d["error"] or "")[:80] for d in dead)),
                "first": dead[:LIST_CAP],
            },
            "completions_twice": completions,
            **executions,
            "occurrences": check_occurrences(final, sched, client, ticker_stopped),
            "resumption": check_resumption(h, final, execs, client),
        },
        "processes": {
            "self_exits": h.self_exits,
            "self_exits_by_role": dict(Counter(s["role"] for s in h.self_exits)),
            "spawned_by_role": dict(Counter(pr.role for pr in h.all_procs)),
            "logs": _log_stats(h),
        },
        "api_client": {
            "statuses": dict(client.statuses),
            "triggers_acknowledged": len(client.triggers),
            "backfills_acknowledged": len(client.backfills),
            "unexpected_5xx": client.errors_5xx,
        },
        "soak_window_s": round(ticker_stopped - soak_start, 1),
    }


def check_completions(
    events_by_run: dict[int, list[dict[str, Any]]],
) -> tuple[dict[int, float], dict[str, Any]]:
    """When each run first reached a terminal event; runs with two terminal events, attempts
    with two endings (after one run.claimed)."""
    terminal_at: dict[int, float] = {}
    twice_run, twice_attempt = [], []
    for run_id, evs in events_by_run.items():
        terminals = [e for e in evs if e["type"] in TERMINAL_EVENTS]
        if terminals:
            terminal_at[run_id] = _epoch(terminals[0]["occurred_at"])
        if len(terminals) > 1:
            twice_run.append({"run": run_id, "events": [e["type"] for e in terminals]})
        attempt, ends = 0, 0
        for e in evs:
            if e["type"] == "run.claimed":
                attempt, ends = int(e["data"].get("attempt", attempt + 1)), 0
            elif e["type"] in ATTEMPT_ENDS and attempt:
                ends += 1
                if ends == 2:
                    twice_attempt.append({"run": run_id, "attempt": attempt})
    return terminal_at, {
        "runs_with_two_terminal_events": len(twice_run),
        "attempts_with_two_endings": len(twice_attempt),
        "first": (twice_run + twice_attempt)[:LIST_CAP],
    }


def find_overlaps(ex: list[Execution], killed: dict[int, float], t0: float) -> list[dict[str, Any]]:
    """Executions of one run (sorted by start) that ran while an earlier one was alive: proven by
    the records (started before an earlier one's end line) or, failing that, by the lock (found
    it held; the holder is taken to be the latest earlier execution without an end line). One
    entry per later execution."""
    found = []
    for j, later in enumerate(ex):
        earlier_ones = ex[:j]
        by_records = [e for e in earlier_ones if e.end is not None and later.start < e.end]
        unended = [e for e in earlier_ones if e.end is None]
        if by_records:
            earlier, proof = by_records[-1], "records"
        elif not later.held and unended:
            earlier, proof = unended[-1], "lock"
        else:
            continue
        overlap = None
        if earlier.end is not None:
            overlap = round(min(earlier.end, later.end or earlier.end) - later.start, 3)
        found.append(
            {
                "run": later.run,
                "attempts": [earlier.attempt, later.attempt],
                "pids": [earlier.pid, later.pid],
                "worker_pids": [earlier.worker_pid, later.worker_pid],
                "earlier_worker_killed": earlier.worker_pid in killed,
                "overlap_s": overlap,
                "proof": proof,
                "at_s": round(later.start - t0, 1),
            }
        )
    return found


def _rerun_after_success(ex: list[Execution], h: Harness) -> dict[str, Any] | None:
    """The first execution that started after an earlier one of the same run exited 0."""
    for i, ok in enumerate(ex):
        if ok.code != 0 or ok.end is None:
            continue
        again = [e for e in ex[i + 1 :] if e.start >= ok.end]
        if not again:
            continue
        nxt = again[0]
        if ok.worker_pid in h.killed_pids and h.killed_pids[ok.worker_pid] <= nxt.start:
            cause = "worker killed"
        elif any(o.down_at < nxt.start and o.up_at > ok.end for o in h.outages):
            cause = "database outage"
        else:
            cause = "other"
        return {
            "run": ok.run,
            "succeeded_attempt": ok.attempt,
            "next_attempt": nxt.attempt,
            "gap_s": round(nxt.start - ok.end, 2),
            "cause": cause,
        }
    return None


def check_executions(
    execs_by_run: dict[int, list[Execution]], terminal_at: dict[int, float], h: Harness
) -> dict[str, Any]:
    overlaps: list[dict[str, Any]] = []
    after_finish: list[dict[str, Any]] = []
    reruns: list[dict[str, Any]] = []
    dup_attempts: list[dict[str, Any]] = []
    for run_id, ex in execs_by_run.items():
        ex.sort(key=lambda e: e.start)
        attempts = Counter(e.attempt for e in ex)
        dup_attempts += [
            {"run": run_id, "attempt": a, "starts": n} for a, n in attempts.items() if n > 1
        ]
        overlaps += find_overlaps(ex, h.killed_pids, h.t0)
        finished = terminal_at.get(run_id)
        after_finish += [
            {
                "run": run_id,
                "attempt": e.attempt,
                "started_after_terminal_s": round(e.start - finished, 3),
            }
            for e in ex
            if finished is not None and e.start > finished
        ]
        if (rerun := _rerun_after_success(ex, h)) is not None:
            reruns.append(rerun)
    return {
        "overlapping_executions": {
            "count": len(overlaps),
            "runs": len({o["run"] for o in overlaps}),
            "proved_by_lock_only": sum(1 for o in overlaps if o["proof"] == "lock"),
            "earlier_worker_killed": sum(1 for o in overlaps if o["earlier_worker_killed"]),
            "max_overlap_s": max(
                (o["overlap_s"] for o in overlaps if o["overlap_s"] is not None), default=None
            ),
            "list": overlaps[:LIST_CAP],
        },
        "executions_of_finished_run": {
            "count": len(after_finish),
            "first": after_finish[:LIST_CAP],
        },
        "duplicate_executions_of_one_attempt": {
            "count": len(dup_attempts),
            "first": dup_attempts[:LIST_CAP],
        },
        "re_executed_after_success": {
            "count": len(reruns),
            "by_cause": dict(Counter(r["cause"] for r in reruns)),
            "first": reruns[:LIST_CAP],
        },
    }


def _cron_due(step: int, zone: str, t: datetime) -> bool:
    """Whether UTC minute `t` is an occurrence of `*/step * * * *` in `zone` (every zone used
    here is a whole or half hour off UTC, so local minutes start on UTC minutes)."""
    return t.astimezone(ZoneInfo(zone)).minute % step == 0


def check_occurrences(
    final: dict[str, Any], sched: dict[str, Any], client: ClientLog, ticker_stopped: float
) -> dict[str, Any]:
    by_schedule: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in final["runs"]:
        by_schedule[r["schedule_id"]].append(r)
    missed_events = {m["stream_id"]: m["n"] for m in final["missed"]}
    window_end = datetime.fromtimestamp(ticker_stopped - 5, UTC)

    def compare(
        schedule_id: int, expected: set[datetime], lo: datetime, hi: datetime | None
    ) -> dict[str, Any]:
        runs = [r for r in by_schedule[schedule_id] if not r["adhoc"]]
        due = Counter(r["due_at"] for r in runs)
        in_window = {t for t in due if t >= lo and (hi is None or t < hi)}
        missing = sorted(expected - set(due))
        return {
            "expected": len(expected),
            "runs": len(runs),
            "missing": len(missing),
            "doubled": sum(1 for n in due.values() if n > 1),
            "unexpected": len(in_window - expected),
            "occurrence_missed_events": missed_events.get(schedule_id, 0),
            "first_missing": [t.isoformat() for t in missing[:10]],
        }

    out: dict[str, Any] = {"interval": [], "cron": []}
    for s in sched["interval"]:
        start: datetime = s["starts_at"]
        n = max(0, math.ceil((window_end - start).total_seconds()))
        expected = {start + timedelta(seconds=k) for k in range(n)}
        expected = {t for t in expected if t < window_end}
        out["interval"].append({"id": s["id"], **compare(s["id"], expected, start, window_end)})
    for s in sched["cron"]:
        # From the first whole minute after the harness had its 201 (a minute between sending
        # the request and the answer may or may not be the schedule's first: left out).
        grid_lo = (s["created"] + timedelta(minutes=1)).replace(second=0, microsecond=0)
        t = grid_lo
        expected = set()
        while t < window_end:
            if _cron_due(s["step"], s["timezone"], t):
                expected.add(t)
            t += timedelta(minutes=1)
        out["cron"].append(
            {
                "id": s["id"],
                "cron": s["cron"],
                "timezone": s["timezone"],
                **compare(s["id"], expected, grid_lo, window_end),
            }
        )
    # backfill: the union of the acknowledged ranges, on the 1-s grid from starts_at
    expected_bf: set[datetime] = set()
    for b in client.backfills:
        lo, hi = datetime.fromisoformat(b["from"]), datetime.fromisoformat(b["to"])
        t = lo
        while t < hi:
            expected_bf.add(t)
            t += timedelta(seconds=1)
    bf = compare(sched["backfill"]["id"], expected_bf, datetime.min.replace(tzinfo=UTC), None)
    out["backfill"] = bf
    # triggers: one run per acknowledged key, no run without a key
    trig = [r for r in by_schedule[sched["trigger"]["id"]] if r["adhoc"]]
    keys = Counter(r["idempotency_key"] for r in trig)
    acknowledged = set(client.triggers)
    out["trigger"] = {
        "acknowledged_keys": len(acknowledged),
        "runs": len(trig),
        "missing": len(acknowledged - set(keys)),
        "doubled": sum(1 for n in keys.values() if n > 1),
        "unacknowledged_runs": len(set(keys) - acknowledged),
        "answers_200_repeat": sum(1 for t in client.triggers.values() if t["status"] == 200),
    }
    totals = Counter[str]()
    for group in ("interval", "cron"):
        for row in out[group]:
            for k in ("expected", "runs", "missing", "doubled", "unexpected"):
                totals[f"{group}_{k}"] += row[k]
    out["totals"] = dict(totals)
    return out


def check_resumption(
    h: Harness, final: dict[str, Any], execs: list[Execution], client: ClientLog
) -> dict[str, Any]:
    claims = sorted(
        (_epoch(e["occurred_at"]), e["data"].get("worker_id"))
        for e in final["events"]
        if e["type"] == "run.claimed"
    )
    succeeded = sorted(
        _epoch(e["occurred_at"]) for e in final["events"] if e["type"] == "run.succeeded"
    )
    ticked = sorted(
        _epoch(r["created_at"]) for r in final["runs"] if r["origin"] in ("schedule", "catchup")
    )
    claimed_at = {
        (e["stream_id"], e["data"].get("attempt")): _epoch(e["occurred_at"])
        for e in final["events"]
        if e["type"] == "run.claimed"
    }
    # (claimed at, started at) per execution: "work resumed" is the first execution of an
    # attempt claimed after the database came back (executions of attempts claimed before the
    # outage may start during it, from a worker's buffer).
    started = sorted(
        (claimed_at[(e.run, e.attempt)], e.start) for e in execs if (e.run, e.attempt) in claimed_at
    )
    answered = sorted(client.answered_at)
    workers = {w["id"]: w for w in final["workers"]}

    def first_after(times: list[float], t: float) -> float | None:
        later = [x for x in times if x > t]
        return round(later[0] - t, 2) if later else None

    per_restart = []
    for o in h.outages:
        if not o.up_at:
            continue
        alive_before = [
            wid
            for wid, w in workers.items()
            if _epoch(w["started_at"]) < o.down_at
            and (w["pid"] not in h.killed_pids or h.killed_pids[w["pid"]] > o.up_at)
        ]
        slowest = []
        never = 0
        for wid in alive_before:
            wc = [c for c, w in claims if w == wid and c > o.up_at]
            if wc:
                slowest.append(wc[0] - o.up_at)
            else:
                never += 1
        per_restart.append(
            {
                "down_s": round(o.up_at - o.down_at, 1),
                "execution_s": first_after(sorted(s for c, s in started if c > o.up_at), o.up_at),
                "claim_s": first_after([c for c, _ in claims], o.up_at),
                "succeeded_s": first_after(succeeded, o.up_at),
                "ticker_created_run_s": first_after(ticked, o.up_at),
                "api_answered_s": first_after(answered, o.up_at),
                "slowest_worker_claim_s": round(max(slowest), 2) if slowest else None,
                "workers_never_claimed_again": never,
            }
        )

    def stats(key: str) -> dict[str, Any]:
        vals = [r[key] for r in per_restart if r[key] is not None]
        if not vals:
            return {"p50": None, "max": None}
        return {"p50": round(statistics.median(vals), 2), "max": round(max(vals), 2)}

    keys = (
        "execution_s",
        "claim_s",
        "succeeded_s",
        "ticker_created_run_s",
        "api_answered_s",
        "slowest_worker_claim_s",
    )
    return {"per_restart": per_restart, **{k: stats(k) for k in keys}}


def _log_stats(h: Harness) -> dict[str, Any]:
    """Per role: log lines, tracebacks, lines written while the database was down (or within
    5 s of its return; JSON lines with a timestamp only), and finished results a worker gave up
    reporting ("could not report")."""
    keys = ("lines", "tracebacks", "lines_while_db_down", "results_given_up")
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    windows = [(o.down_at, o.up_at + 5) for o in h.outages if o.up_at]
    for pr in h.all_procs:
        try:
            text = pr.log.read_text(errors="replace")
        except OSError:
            continue
        stats = out[pr.role]
        stats["lines"] += text.count("\n")
        stats["tracebacks"] += text.count("Traceback (most recent call last)")
        stats["results_given_up"] += text.count("could not report")
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                at = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            stats["lines_while_db_down"] += any(a <= at <= b for a, b in windows)
    return dict(out)


# -- output -----------------------------------------------------------------------------------


def summary(result: dict[str, Any]) -> str:
    c = result["checks"]
    occ = c["occurrences"]
    tot = occ["totals"]
    res = c["resumption"]
    ov = c["overlapping_executions"]
    lines = [
        f"runs {result['runs']['total']:,} ({result['runs']['by_origin']}), "
        f"executions {result['runs']['executions']:,} "
        f"({result['runs']['executions_without_end']} without an end)",
        f"faults done {result['faults']['done']}; outages "
        + ", ".join(f"{o['down_s']} s" for o in result["faults"]["outages"]),
        f"lost {c['lost']['count']}; dead {c['dead']['count']} {c['dead']['errors']}",
        f"completions twice: {c['completions_twice']['runs_with_two_terminal_events']} runs, "
        f"{c['completions_twice']['attempts_with_two_endings']} attempts",
        f"OVERLAPPING executions {ov['count']} in {ov['runs']} runs (lock-only proof "
        f"{ov['proved_by_lock_only']}, earlier worker killed {ov['earlier_worker_killed']}, "
        f"max overlap {ov['max_overlap_s']} s)",
        f"executions of a finished run {c['executions_of_finished_run']['count']}; duplicate "
        f"executions of one attempt {c['duplicate_executions_of_one_attempt']['count']}",
        f"re-executed after a successful execution {c['re_executed_after_success']['count']} "
        f"{c['re_executed_after_success']['by_cause']}",
        f"interval occurrences: expected {tot.get('interval_expected', 0):,}, missing "
        f"{tot.get('interval_missing', 0)}, doubled {tot.get('interval_doubled', 0)}, unexpected "
        f"{tot.get('interval_unexpected', 0)}",
        f"cron occurrences: expected {tot.get('cron_expected', 0)}, missing "
        f"{tot.get('cron_missing', 0)}, doubled {tot.get('cron_doubled', 0)}, unexpected "
        f"{tot.get('cron_unexpected', 0)}",
        f"backfill: expected {occ['backfill']['expected']}, missing {occ['backfill']['missing']}, "
        f"doubled {occ['backfill']['doubled']}; triggers: acknowledged "
        f"{occ['trigger']['acknowledged_keys']}, missing {occ['trigger']['missing']}, doubled "
        f"{occ['trigger']['doubled']}",
        "resumed after DB back (p50 / max s): "
        + ", ".join(
            f"{k.removesuffix('_s')} {res[k]['p50']} / {res[k]['max']}"
            for k in (
                "execution_s",
                "claim_s",
                "slowest_worker_claim_s",
                "ticker_created_run_s",
                "api_answered_s",
            )
        ),
        f"self-exits {result['processes']['self_exits_by_role']}; logs "
        f"{result['processes']['logs']}",
        f"API statuses {result['api_client']['statuses']}",
        f"pgsched verify: exit {result['verify']['exit_code']}, {result['verify']['summary']}",
        f"drain {result['drain']['seconds']} s, left {result['drain']['left_when_stopped']}, "
        f"orphans killed at the end {result['drain']['orphan_job_processes_killed_at_end']}",
    ]
    return "\n".join(lines)


def git_commit() -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": run("rev-parse", "HEAD"),
        "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(run("status", "--porcelain", "--", "app", "workers", "otel", "alembic")),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a ~4-minute smoke check")
    ap.add_argument("--runs", type=int, help="runs to create (default 10000; quick 1500)")
    ap.add_argument("--minutes", type=float, help="soak length (default 10; quick 2)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slots", type=int, default=5)
    ap.add_argument("--tickers", type=int, default=1)
    ap.add_argument("--kills", type=int, help="kill -9 of workers (default 24; quick 5)")
    ap.add_argument("--ticker-kills", type=int, help="kill -9 of a ticker (default 2; quick 1)")
    ap.add_argument("--pg-restarts", type=int, help="database crash-restarts (default 3; quick 2)")
    ap.add_argument("--outages", help="outage lengths in s, cycled (default 5,15,40; quick 5,15)")
    ap.add_argument("--lease", type=float, default=10.0, help="PGSCHED_LEASE_SECONDS")
    ap.add_argument("--drain-seconds", type=float, help="drain deadline (default 240; quick 120)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default="soak.json", help="results file name in bench/results/")
    return ap.parse_args(argv)


def params(args: argparse.Namespace) -> Params:
    q = args.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    return Params(
        runs=pick(args.runs, 10_000, 1_500),
        minutes=pick(args.minutes, 10.0, 2.0),
        workers=args.workers,
        slots=args.slots,
        tickers=args.tickers,
        kills=pick(args.kills, 24, 5),
        ticker_kills=pick(args.ticker_kills, 2, 1),
        pg_restarts=pick(args.pg_restarts, 3, 2),
        outages=[float(x) for x in pick(args.outages, "5,15,40", "5,15").split(",")],
        lease=args.lease,
        drain_seconds=pick(args.drain_seconds, 240.0, 120.0),
        seed=args.seed,
        quick=q,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    p = params(args)
    started = now_iso()
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="pgsched-soak-"))
    tmp.chmod(0o711)  # the cluster's owner (postgres, when root) must reach pgdata inside

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = soak(p, tmp)
    except KeyboardInterrupt:
        print("interrupted: processes stopped, cluster stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    payload = {
        "benchmark": "soak",
        "command": command_line("bench.soak"),
        "started": started,
        "finished": now_iso(),
        "git": git_commit(),
        "machine": {**info, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "sources": source_digests("app", "workers", "bench/soak.py"),
        "parameters": {
            **p.__dict__,
            "job": {
                "short_ms": [50, 500],
                "long_permille": LONG_PERMILLE,
                "long_ms": list(LONG_MS),
                "fail_first_attempt_pct": FAIL_PCT,
                "max_attempts": 5,
                "retry_delay_s": 1,
            },
            "trigger_every_s": TRIGGER_EVERY,
            "backfill_every_s": BACKFILL_EVERY,
            "cron": [list(c) for c in CRON],
        },
        **result,
    }
    path = write_results(args.out, payload)
    print()
    print(summary(payload))
    print(f"\nresults: {path.relative_to(ROOT)}; logs: {LOGS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
