"""Benchmark (issues 3 and 4): from due time to start, at a steady rate, pgsched and its peers.

    python -m bench.lag [--rate 500] [--seconds 20] [--schedules 500] [--ticker-seconds 30]
                        [--slots 32] [--repeat 2] [--procrastinate-polling S]
                        [--systems pgsched,pgqueuer,procrastinate] [--fast]

Targets: issue 4, p99 start latency under 50 ms at a steady 500 runs/s; issue 3, with the ticker
and a worker running, runs start within 100 ms of their due time at p99.

One private cluster (`app.localpg.throwaway`, durable settings unless `--fast`; restarted once
with max_connections 300 and pg_stat_statements, as bench.drain does), one fresh database per
scenario, everything in this one Python process and asyncio loop:

- **pgsched, steady** (issue 4): rate x seconds waiting runs of one noop schedule, materialised
  ahead through `store.insert_runs` with due_at = available_at spaced 1/rate apart, starting
  `--lead` seconds after the database's now; then the service loops (`app.service.serve` with
  `default_loops`: the ticker every 0.5 s and the partition keeper) and one `Worker`
  (SystemClock, `slots`) run until every run is done.
- **pgsched, ticker + worker** (issue 3): `--schedules` interval schedules (every 1 s, noop)
  whose phases are spread evenly over the second (`starts_at` = base + i/schedules s), so the
  ticker itself turns them into runs at a steady `schedules` runs/s; the same service loops and
  worker run for `--ticker-seconds`, then the ticker stops and the worker finishes what exists.
- **PgQueuer / procrastinate, steady** (issue 4, part c): the same number of no-op jobs with
  their own "not before" feature (PgQueuer `execute_after`, procrastinate `schedule_at`) spaced
  1/rate apart, and their worker with the same concurrency (bench/peers/). procrastinate uses
  its default `fetch_job_polling_interval` (5 s: a NOTIFY is sent when a job is deferred, not
  when it becomes due, so only polling finds scheduled jobs) unless `--procrastinate-polling`.

Every scenario runs `--repeat` times (default 2), interleaved, each time in a fresh database.

Latency per job, two ways:
- **claim**: by the database clock, the claiming transaction's now() minus the due time
  (pgsched `run.started_at - due_at`; PgQueuer's `picked` log row; procrastinate's `started`
  event), which is what issue 3 names. now() is when that transaction began, so a slow claim
  statement is not in it;
- **handler**: when the job's code began (this process's clock; same host as the server) minus
  the due time: what a user of each library would observe.
Reported: p50/p95/p99/max (nearest rank) over every job of every repeat, and each repeat's p99;
for the pre-materialised pgsched scenario also the plan of the claim's common path with that
backlog in place (EXPLAIN ANALYZE, rolled back). Results: bench/results/lag.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._common import command_line, machine, now_iso, table, version_of, write_results
from bench.drain import (
    INSERT_CHUNK,
    PACKAGES,
    PEERS,
    PGSCHED_REMAINING,
    _open_cte,
    cluster,
    connection,
    create_noop_schedule,
    explain_claim,
    vacuum_analyze,
)
from bench.peers import latency_summary, procrastinate_bench, scalar_rows, wait_until_zero
from pgsched.app.clock import SystemClock
from pgsched.app.db import store
from pgsched.app.domain import schedule
from pgsched.app.service import default_loops, serve
from pgsched.workers.jobs import JobContext, Outcome, execute
from pgsched.workers.worker import Worker, WorkerSettings

TEMPLATE = "pgsched_template"


class Pgsched:
    """A worker and the service loops in this process, with handler start times recorded."""

    def __init__(self, url: str, slots: int) -> None:
        self.url = url
        self.handler_at: dict[int, datetime] = {}
        clock = SystemClock()

        async def timed(job_type: str, payload: Mapping[str, object], ctx: JobContext) -> Outcome:
            self.handler_at[ctx.run_id] = datetime.now(UTC)
            return await execute(job_type, payload, ctx)

        self.worker = Worker(url, clock=clock, settings=WorkerSettings(slots=slots), executor=timed)
        self.stop_worker = asyncio.Event()
        self.stop_service = asyncio.Event()
        self.worker_task = asyncio.create_task(self.worker.run(self.stop_worker))
        self.service_task = asyncio.create_task(
            serve(url, clock, self.stop_service, default_loops(clock))
        )

    async def alive(self) -> None:
        stopped = self.stop_service.is_set()
        for task in (self.worker_task, *(() if stopped else (self.service_task,))):
            if task.done():
                task.result()
                raise RuntimeError("a pgsched loop stopped early")

    async def finish(self, within: float) -> None:
        try:
            await wait_until_zero(self.url, PGSCHED_REMAINING, within=within, on_tick=self.alive)
        finally:
            self.stop_service.set()
            self.stop_worker.set()
            await asyncio.wait_for(asyncio.gather(self.service_task, self.worker_task), 60)

    async def latencies(self, since: datetime | None = None) -> dict[str, Any]:
        rows = await scalar_rows(
            self.url,
            "SELECT id, due_at, started_at, origin FROM pgsched.run"
            " WHERE state = 'succeeded'"
            " AND (%(since)s::timestamptz IS NULL OR due_at >= %(since)s)",
            {"since": since},
        )
        origins: dict[str, int] = {}
        for *_, origin in rows:
            origins[origin] = origins.get(origin, 0) + 1
        return {
            "claim_s": [(started - due).total_seconds() for _, due, started, _ in rows],
            "handler_s": [
                (self.handler_at[i] - due).total_seconds()
                for i, due, _, _ in rows
                if i in self.handler_at
            ],
            "jobs": len(rows),
            "origins": origins,
        }


async def pgsched_steady(url: str, n: int, rate: float, lead: float, slots: int) -> dict[str, Any]:
    async with connection(url) as conn:
        schedule = await create_noop_schedule(conn, "bench-lag")
        t0 = await store.db_now(conn, None) + timedelta(seconds=lead)
        due = [t0 + timedelta(seconds=i / rate) for i in range(n)]
        for i in range(0, n, INSERT_CHUNK):
            async with conn.transaction():
                await store.insert_runs(
                    conn,
                    [(schedule["id"], t, t) for t in due[i : i + INSERT_CHUNK]],
                    origin="backfill",
                    actor="bench",
                    now=None,
                )
    await vacuum_analyze(url)
    # The claim's common path as planned with this backlog of future runs in place.
    plan = _open_cte(await explain_claim(url, slots // 2))
    p = Pgsched(url, slots)
    await p.finish(within=lead + n / rate + 120)
    return {**await p.latencies(), "claim_plan_open_cte_at_start": plan}


async def pgsched_ticker(
    url: str, count: int, seconds: float, slots: int, lead: float
) -> dict[str, Any]:
    """`count` every-second interval schedules, phases spread over the second; ticker + worker."""
    async with connection(url) as conn:
        base = await store.db_now(conn, None) + timedelta(seconds=lead + count * 0.004)
        for i in range(count):
            fields = schedule.complete(
                {
                    "name": f"bench-every-second-{i}",
                    "job_type": "noop",
                    "kind": "interval",
                    "interval_seconds": 1,
                    "starts_at": base + timedelta(seconds=i / count),
                }
            )
            fields["next_due_at"] = schedule.first_due(
                schedule.spec_of({**fields, "created_at": base}), base, grace_seconds=0
            )
            await store.create_schedule(conn, fields, actor="bench", now=None)
        created_by = await store.db_now(conn, None)
    await vacuum_analyze(url)
    if created_by >= base:
        raise RuntimeError("creating the schedules took longer than the lead; raise --lead")
    p = Pgsched(url, slots)
    await asyncio.sleep((base - created_by).total_seconds() + seconds)
    p.stop_service.set()  # no more runs; the worker finishes the ones that exist
    await p.finish(within=120)
    out = await p.latencies()
    ((missed,),) = await scalar_rows(
        url, "SELECT count(*) FROM pgsched.event WHERE type = 'schedule.occurrence_missed'"
    )
    out["occurrences_missed"] = int(missed)
    out["schedules"] = count
    out["window_s"] = seconds
    return out


def summarise(name: str, settings: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": name,
        "settings": settings,
        "jobs": out["jobs"],
        "claim": latency_summary(out["claim_s"]),
        "handler": latency_summary(out["handler_s"]),
        **{k: v for k, v in out.items() if k not in ("claim_s", "handler_s", "jobs")},
    }


class Scenario:
    """One scenario: a fresh database per repeat, set up and measured by `go(url)`."""

    def __init__(
        self, name: str, system: str, settings: dict[str, Any], go: Any, template: bool = False
    ) -> None:
        self.name, self.system, self.settings, self.go = name, system, settings, go
        self.template = template
        self.repeats: list[dict[str, Any]] = []
        self.claim_s: list[float] = []
        self.handler_s: list[float] = []


def scenarios(args: argparse.Namespace, n: int) -> list[Scenario]:
    out: list[Scenario] = []
    if "pgsched" in args.systems:
        out.append(
            Scenario(
                f"pgsched, {args.rate:g} runs/s pre-materialised",
                "pgsched",
                {"slots": args.slots, "ticker": "running (0.5 s)", "jobs": n},
                lambda url: pgsched_steady(url, n, args.rate, args.lead, args.slots),
                template=True,
            )
        )
        out.append(
            Scenario(
                f"pgsched, ticker + worker, {args.schedules} x every 1 s",
                "pgsched",
                {
                    "slots": args.slots,
                    "schedules": args.schedules,
                    "seconds": args.ticker_seconds,
                    "ticker": "app.service default_loops: tick every 0.5 s, 1 s look-ahead",
                },
                lambda url: pgsched_ticker(
                    url, args.schedules, args.ticker_seconds, args.slots, 3.0
                ),
                template=True,
            )
        )
    if "pgqueuer" in args.systems:
        out.append(
            Scenario(
                f"PgQueuer, {args.rate:g} jobs/s execute_after",
                "pgqueuer",
                {**PEERS["pgqueuer"].settings(args.slots), "jobs": n},
                lambda url: PEERS["pgqueuer"].lag(
                    url, n, rate=args.rate, lead=args.lead, concurrency=args.slots
                ),
            )
        )
    if "procrastinate" in args.systems:
        polling = args.procrastinate_polling
        label = "default polling (5 s)" if polling is None else f"polling {polling:g} s"
        out.append(
            Scenario(
                f"procrastinate, {args.rate:g} jobs/s schedule_at, {label}",
                "procrastinate",
                {**procrastinate_bench.settings(args.slots, polling), "jobs": n},
                lambda url: procrastinate_bench.lag(
                    url, n, rate=args.rate, lead=args.lead, concurrency=args.slots, polling=polling
                ),
            )
        )
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from pgsched.app.cli import migrate

    info = machine()
    n = int(args.rate * args.seconds)
    plan = scenarios(args, n)
    with cluster(args.fast) as c:
        info |= c.server_info()
        if any(s.template for s in plan):
            migrate(c.create(TEMPLATE))
        # Scenarios interleave within each repeat: a burst of load from a neighbour on this
        # shared machine lands on one repeat of each, not on every repeat of one.
        for repeat in range(args.repeat):
            for i, sc in enumerate(plan):
                dbname = f"lag_{sc.system}_{i}_{repeat}"
                url = c.create(dbname, template=TEMPLATE if sc.template else None)
                if not sc.template:
                    await PEERS[sc.system].install(url)
                load = os.getloadavg()[0]
                started = time.monotonic()
                out = await sc.go(url)
                c.drop(dbname)
                sc.claim_s += out["claim_s"]
                sc.handler_s += out["handler_s"]
                row = summarise(sc.name, {"load1_at_start": round(load, 2)}, out)
                row["repeat"] = repeat
                row["elapsed_s"] = round(time.monotonic() - started, 1)
                sc.repeats.append(row)
                claim, handler = row["claim"], row["handler"]
                print(
                    f"{sc.name:<58} #{repeat} {row['jobs']:>6} jobs | claim p50 "
                    f"{claim.get('p50_ms')} p99 {claim.get('p99_ms')} max {claim.get('max_ms')}"
                    f" ms | handler p50 {handler.get('p50_ms')} p99 {handler.get('p99_ms')} ms"
                    f" | load {load:.1f}",
                    flush=True,
                )
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results = [
        {
            "scenario": sc.name,
            "system": sc.system,
            "settings": sc.settings,
            "jobs": len(sc.claim_s),
            "repeats": len(sc.repeats),
            # Over every job of every repeat.
            "claim": latency_summary(sc.claim_s),
            "handler": latency_summary(sc.handler_s),
            "claim_p99_ms_per_repeat": [r["claim"].get("p99_ms") for r in sc.repeats],
            "handler_p99_ms_per_repeat": [r["handler"].get("p99_ms") for r in sc.repeats],
            "per_repeat": sc.repeats,
        }
        for sc in plan
    ]
    return {
        "benchmark": "lag",
        "date": now_iso(),
        "command": command_line("bench.lag"),
        "machine": info,
        "packages": {p: version_of(p) for p in ("pgsched", *PACKAGES)},
        "params": {
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "jobs_per_steady_scenario": n,
            "lead_s": args.lead,
            "slots_or_concurrency": args.slots,
            "ticker_schedules": args.schedules,
            "ticker_seconds": args.ticker_seconds,
            "repeat": args.repeat,
            "procrastinate_polling_s": args.procrastinate_polling,
            "durability": "fsync off (--fast)" if args.fast else "durable (fsync on)",
        },
        "targets": {
            "issue 4": "p99 start latency < 50 ms at a steady 500 runs/s",
            "issue 3": "with the ticker and a worker, p99 of started_at - due_at < 100 ms",
        },
        "verdicts": verdicts(results),
        "results": results,
    }


def verdicts(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in results:
        p99 = row["claim"].get("p99_ms")
        if row["scenario"].startswith("pgsched, ticker"):
            handler = row["handler"].get("p99_ms")
            out["issue 3 (ticker + worker, p99 < 100 ms)"] = {
                "p99_ms": p99,
                "handler_p99_ms": handler,
                "met": p99 is not None and p99 < 100,
                "met_at_handler_start": handler is not None and handler < 100,
            }
        elif row["scenario"].startswith("pgsched,"):
            handler = row["handler"].get("p99_ms")
            out["issue 4 (steady rate, p99 < 50 ms)"] = {
                "p99_ms": p99,
                "handler_p99_ms": handler,
                "met": p99 is not None and p99 < 50,
                "met_at_handler_start": handler is not None and handler < 50,
            }
    return out


def report(payload: dict[str, Any]) -> str:
    settings = payload["machine"]["settings"]
    rows = []
    for r in payload["results"]:
        claim, handler = r["claim"], r["handler"]
        rows.append(
            [
                r["scenario"],
                r["jobs"],
                claim.get("p50_ms"),
                claim.get("p95_ms"),
                claim.get("p99_ms"),
                claim.get("max_ms"),
                handler.get("p50_ms"),
                handler.get("p99_ms"),
                handler.get("max_ms"),
                " / ".join(str(x) for x in r["claim_p99_ms_per_repeat"]),
            ]
        )
    lines = [
        f"{payload['command']}   ({payload['date']}, PostgreSQL {settings.get('server_version')},"
        f" fsync {settings.get('fsync')}, {payload['machine']['cpus']} CPUs)",
        "",
        "Percentiles over every job of every repeat (ms after the due time):",
        "",
        table(
            [
                "scenario",
                "jobs",
                "claim p50 ms",
                "p95",
                "p99",
                "max",
                "handler p50 ms",
                "p99",
                "max",
                "claim p99 per repeat",
            ],
            rows,
        ),
        "",
    ]
    for name, v in payload["verdicts"].items():
        lines.append(
            f"{name}: claim (started_at) p99 {v['p99_ms']} ms -> "
            f"{'met' if v['met'] else 'NOT met'}; handler start p99 {v['handler_p99_ms']} ms -> "
            f"{'met' if v['met_at_handler_start'] else 'NOT met'}"
        )
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - {"pgsched", *PEERS}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown systems: {sorted(unknown)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lag", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=500.0, help="jobs becoming due per second")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the steady load")
    p.add_argument("--lead", type=float, default=2.0, help="seconds before the first is due")
    p.add_argument("--slots", type=int, default=32, help="worker slots / peer concurrency")
    p.add_argument("--schedules", type=int, default=500, help="every-second schedules (issue 3)")
    p.add_argument("--ticker-seconds", type=float, default=30.0)
    p.add_argument("--repeat", type=int, default=2, help="every scenario, interleaved")
    p.add_argument(
        "--procrastinate-polling",
        type=float,
        default=None,
        help="procrastinate's fetch_job_polling_interval (default: its own, 5 s)",
    )
    p.add_argument("--systems", type=_names, default=["pgsched", *PEERS])
    p.add_argument("--fast", action="store_true", help="fsync off (default: durable settings)")
    p.add_argument("--out", default="lag.json", help="results file name in bench/results/")
    args = p.parse_args(argv)
    payload = asyncio.run(run(args))
    path = write_results(args.out, payload)
    print()
    print(report(payload))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
