"""Benchmark: what the supervisor (workers/jobs/procguard.py, ADR 0020) costs a command job.

    python -m bench.command_spawn [--jobs 200] [--repeat 5] [--concurrency 1,4]

Per job, wall time from "start it" to "its exit and all its output are in": the same argv
(`true`, the worst case: a job that does nothing, so the fixed cost is all there is; and
`sleep 0.05`) run two ways, interleaved per repeat so a neighbour's burst of load spoils a
repeat of both, not one side:

- **direct**: `loop.subprocess_exec(argv, start_new_session=True)` with stdout piped, then
  wait for the exit and the pipe's end: what command jobs did before the supervisor (minus
  its output capture, which is the same on both sides);
- **supervised**: `workers.jobs.command.run_argv` (the supervisor's interpreter start, the
  socket, the job, the kill-and-reap at the end, the report), with a lease deadline attached
  as the worker attaches one.

`--concurrency C`: C jobs at once (a worker's slots), jobs/s over the whole batch. Reported:
median per-job ms per repeat (median over repeats), jobs/s, and the per-repeat ratio
supervised/direct (median over repeats). Results: bench/results/command_spawn.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench._common import command_line, machine, now_iso, source_digests, table, write_results
from pgsched.workers.jobs.base import LeaseDeadline
from pgsched.workers.jobs.command import run_argv

ARGVS = {"true": ["true"], "sleep 0.05": ["sleep", "0.05"]}
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


async def _direct(argv: list[str]) -> None:
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    closed: asyncio.Future[None] = loop.create_future()

    class Proto(asyncio.SubprocessProtocol):
        def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
            if not closed.done():
                closed.set_result(None)

        def process_exited(self) -> None:
            exited.set_result(None)

    transport, _ = await loop.subprocess_exec(
        Proto,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=ENV,
        start_new_session=True,
    )
    await exited
    await closed
    transport.close()


async def _supervised(argv: list[str]) -> None:
    lease = LeaseDeadline(time.monotonic() + 30, 3, time.monotonic)
    outcome = await run_argv(argv, env=ENV, cwd=None, timeout_seconds=60, lease=lease)
    if outcome.status != "succeeded":
        raise RuntimeError(f"{argv}: {outcome}")


MODES = {"direct": _direct, "supervised": _supervised}


async def batch(mode: str, argv: list[str], jobs: int, concurrency: int) -> dict[str, Any]:
    run = MODES[mode]
    times: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            t0 = time.perf_counter()
            await run(argv)
            times.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    wall = time.perf_counter() - started
    return {"median_ms": statistics.median(times), "jobs_per_s": jobs / wall, "ms": times}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    for mode in MODES:  # warm-up: imports, page cache
        await batch(mode, ["true"], 5, 1)
    results: list[dict[str, Any]] = []
    for concurrency in args.concurrency:
        for name, argv in ARGVS.items():
            repeats: list[dict[str, Any]] = []
            for _ in range(args.repeat):
                repeats.append({m: await batch(m, argv, args.jobs, concurrency) for m in MODES})
            results.append({"argv": name, "concurrency": concurrency, "repeats": repeats})
    return {"results": results}


def summary(payload: dict[str, Any]) -> str:
    rows = []
    for r in payload["results"]:
        reps = r["repeats"]
        med = {m: statistics.median(x[m]["median_ms"] for x in reps) for m in MODES}
        rate = {m: statistics.median(x[m]["jobs_per_s"] for x in reps) for m in MODES}
        ratio = statistics.median(
            x["supervised"]["median_ms"] / x["direct"]["median_ms"] for x in reps
        )
        rows.append(
            [
                r["argv"],
                r["concurrency"],
                f"{med['direct']:.1f}",
                f"{med['supervised']:.1f}",
                f"{med['supervised'] - med['direct']:+.1f}",
                f"{ratio:.2f}x",
                f"{rate['direct']:.0f}",
                f"{rate['supervised']:.0f}",
            ]
        )
    return table(
        [
            "job",
            "at once",
            "direct ms",
            "supervised ms",
            "added ms",
            "ratio",
            "direct jobs/s",
            "supervised jobs/s",
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4]
    )
    args = parser.parse_args(argv)
    payload = {
        "command": command_line("bench.command_spawn"),
        "date": now_iso(),
        "machine": machine(),
        "sources": source_digests("workers/jobs/command.py", "workers/jobs/procguard.py"),
        **asyncio.run(measure(args)),
    }
    text = summary(payload)
    path = write_results("command_spawn.json", payload)
    print(text)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
