"""Benchmark (issue 6): what telemetry costs a draining worker, exporters on vs off, as ratios.

    python -m bench.otel_overhead [--runs 5000] [--slots 32] [--repeat 5] [--fast]

Five modes, the same work (bench/drain.py's pgsched measurement, whose helpers this imports):
N no-op runs seeded through `store.insert_runs`, then one in-process `Worker(slots=S)` drains
them; drain seconds are read back from the runs (first start to last finish, database clock).

- **off**: no telemetry set up (what a process gets before `otel.setup`): no-op tracer and meter;
- **metrics**: `otel.setup` without an OTLP endpoint, the one-command default: the catalogue's
  instruments recorded, a Prometheus reader attached, no tracing;
- **traces+metrics**: an OTLP endpoint set: every claim, report, attempt (`process default`)
  and psycopg statement is a span, batched and exported over OTLP/HTTP to a sink in another
  process (it stands for the collector: reads each request and answers 200), plus metrics
  every second. The seeded runs carry a creator's trace context, so each attempt also carries
  a link;
- **traces-no-sql**: the same with `PGSCHED_TRACE_SQL=false` (no span per SQL statement);
- **traces-10%**: the same with `OTEL_TRACES_SAMPLER=parentbased_traceidratio`, ratio 0.1.

Measurements interleave per repeat (the five modes in the order above), each on a fresh copy
of one migrated template database, on a throwaway cluster from the installed binaries
(durable settings unless --fast). Reported: runs/s per mode (median over repeats) and the
ratios of each mode to off, paired per repeat (the headline is the median of the per-repeat
ratios: this machine is shared, and a neighbour's burst spoils one repeat, not the figure;
1.0 = no cost). Results:
bench/results/otel_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench._common import command_line, machine, now_iso, source_digests, table, write_results
from bench.drain import cluster, pgsched_drain_inprocess, pgsched_span, seed_runs, vacuum_analyze
from pgsched import otel
from pgsched.app.cli import migrate
from pgsched.otel.config import TelemetryConfig

MODES = ("off", "metrics", "traces+metrics", "traces-no-sql", "traces-10%")

# The collector stand-in: a separate process, so its CPU is not the worker's.
SINK = r"""
import signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
counts = {"requests": 0, "bytes": 0}
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        counts["requests"] += 1
        counts["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
def stop(*_):
    threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGTERM, stop)
server.serve_forever()
print(counts["requests"], counts["bytes"], flush=True)
"""


def _setup(mode: str, sink: str) -> None:
    os.environ.pop("OTEL_TRACES_SAMPLER", None)
    os.environ.pop("OTEL_TRACES_SAMPLER_ARG", None)
    if mode == "off":
        otel.shutdown()
        return
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "1000"}
    if mode.startswith("traces"):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink
    if mode == "traces-no-sql":
        env["PGSCHED_TRACE_SQL"] = "false"
    if mode == "traces-10%":
        # The SDK reads the sampler from the process environment (standard OTEL_* variables).
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0.1"
    otel.setup(TelemetryConfig.from_env(env, "worker"))


async def one(url: str, mode: str, n: int, slots: int, sink: str) -> dict[str, Any]:
    _setup(mode, sink)
    try:
        tracer = otel.current().tracer
        with tracer.start_as_current_span("seed"):  # the runs' creator (a backfill, say)
            await seed_runs(url, n)
        await vacuum_analyze(url)
        started = time.perf_counter()
        drained = await pgsched_drain_inprocess(url, n, slots)
        span = await pgsched_span(url)
        flush_started = time.perf_counter()
        otel.current().force_flush()
        flush_s = time.perf_counter() - flush_started
    finally:
        otel.shutdown()
    return {
        "mode": mode,
        "runs": n,
        "slots": slots,
        "drain_s": span["span_s"],
        "runs_per_s": n / span["span_s"],
        "wall_s": drained["wall_s"],
        "measure_s": time.perf_counter() - started,
        "final_flush_s": flush_s,
        "worker_stats": drained["worker_stats"],
    }


async def run(args: argparse.Namespace, sink: str) -> dict[str, Any]:
    raw: list[dict[str, Any]] = []
    with cluster(args.fast, statements=False) as c:
        template = "otel_tpl"
        migrate(c.create(template))
        server = c.server_info()
        for r in range(args.repeat):
            for mode in MODES:
                name = f"otel_{r}_{mode.replace('+', '_')}"
                url = c.create(name, template=template)
                result = await one(url, mode, args.runs, args.slots, sink)
                result["repeat"] = r
                raw.append(result)
                print(
                    f"repeat {r} {mode:15} {result['runs_per_s']:8.0f} runs/s",
                    file=sys.stderr,
                    flush=True,
                )
                c.drop(name)
    medians = {m: statistics.median(x["runs_per_s"] for x in raw if x["mode"] == m) for m in MODES}
    per_repeat = {
        m: [
            a["runs_per_s"] / b["runs_per_s"]
            for a, b in zip(
                [x for x in raw if x["mode"] == m],
                [x for x in raw if x["mode"] == "off"],
                strict=True,
            )
        ]
        for m in MODES[1:]
    }
    return {
        "benchmark": "otel_overhead",
        "command": command_line("bench.otel_overhead"),
        "date": now_iso(),
        "machine": machine(),
        "server": server,
        "sources": source_digests("otel", "workers/worker.py", "app/db/store"),
        "settings": {"runs": args.runs, "slots": args.slots, "repeat": args.repeat},
        "median_runs_per_s": medians,
        "throughput_ratio_vs_off": {m: statistics.median(per_repeat[m]) for m in MODES[1:]},
        "per_repeat_ratio_vs_off": per_repeat,
        "raw": raw,
    }


def report(payload: dict[str, Any]) -> str:
    medians = payload["median_runs_per_s"]
    ratios = payload["throughput_ratio_vs_off"]
    rows = [(m, f"{medians[m]:.0f}", "1.00" if m == "off" else f"{ratios[m]:.2f}") for m in MODES]
    return table(["telemetry", "runs/s (median)", "throughput vs off (median of paired)"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5000)
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--fast", action="store_true", help="fsync and synchronous_commit off")
    args = p.parse_args(argv)
    sink_proc = subprocess.Popen(
        [sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:
        port = int(sink_proc.stdout.readline()) if sink_proc.stdout else 0
        payload = asyncio.run(run(args, f"http://127.0.0.1:{port}"))
    finally:
        sink_proc.terminate()
        out, _ = sink_proc.communicate(timeout=30)
    requests, sent = (int(x) for x in out.split()[:2]) if out.strip() else (0, 0)
    payload["sink"] = {"otlp_requests": requests, "otlp_bytes": sent}
    path = write_results("otel_overhead.json", payload)
    print(report(payload))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
