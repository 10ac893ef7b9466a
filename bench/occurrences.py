"""Micro-benchmark: `app.domain.occurrences.next_after` against croniter, side by side.

    python -m bench.occurrences [--n 20000] [--n-mixed 100000] [--chunks 10]

For each schedule shape, both implementations answer "first occurrence strictly after t" for the
same N distinct instants `t` (seeded, spread over 2025-2026 with microseconds, so every DST
transition of both years is crossed). The peer is what a naive ticker would do per schedule:
construct a croniter on the instant (in the schedule's zone) and call `get_next(datetime)`.

Method: one untimed warm-up pass each (fills our per-zone-year transition cache, and imports
and compiles everything), then the N instants are cut into `--chunks` chunks and, chunk by
chunk, ours and croniter are timed back to back, with the garbage collector off. The figures
are the median over chunks of us per call, and the median of the per-chunk ratios
croniter/ours: a burst of load from a neighbour spoils one chunk, not the result.

"100k mixed schedules at one minute boundary": N_MIXED distinct specs, round-robin over all the
shapes below, each asked for its next occurrence after the same whole minute, which is what a
tick does. Timed chunk by chunk, ours then the peer (totals are sums over chunks, the ratio the
median of per-chunk ratios), plus `--repeat` whole passes of ours alone. The peer uses croniter
for the cron specs and our code for interval and once (croniter has no such kinds), so the ratio
understates the difference for a pure-cron mix.

Results: bench/results/occurrences.json, and a table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from bench._common import (
    command_line,
    machine,
    now_iso,
    source_digests,
    table,
    version_of,
    write_results,
)
from pgsched.app.domain.occurrences import ScheduleSpec, next_after

SEED = 20_251_123
WINDOW_START = datetime(2025, 1, 1, tzinfo=UTC)
WINDOW = timedelta(days=730)
ANCHOR = datetime(2025, 1, 1, 0, 0, 17, tzinfo=UTC)  # interval phase: not on a whole minute
ONCE_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)  # half the instants are before it
BOUNDARY = datetime(2025, 6, 16, 12, 0, tzinfo=UTC)  # the "one minute boundary" (a Monday)


@dataclass(frozen=True)
class Case:
    label: str
    spec: ScheduleSpec
    cron: str | None = None  # the croniter expression, None when croniter has no equivalent

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.spec.timezone)


def _cron(expr: str, tz: str) -> Case:
    return Case(f"`{expr}` {tz}", ScheduleSpec(kind="cron", cron=expr, timezone=tz), expr)


CASES: tuple[Case, ...] = (
    _cron("* * * * *", "UTC"),
    _cron("*/15 * * * *", "UTC"),
    _cron("30 2 * * *", "America/New_York"),
    _cron("0 12 * * 0", "Europe/Berlin"),
    _cron("*/5 * * * *", "Australia/Lord_Howe"),
    _cron("0 0 29 2 *", "UTC"),
    Case("interval 60 s", ScheduleSpec(kind="interval", interval_seconds=60, anchor=ANCHOR)),
    Case("once", ScheduleSpec(kind="once", run_at=ONCE_AT)),
)


def instants(n: int, rng: random.Random) -> list[datetime]:
    """N distinct aware-UTC instants in the window, in random order."""
    span_us = int(WINDOW / timedelta(microseconds=1))
    offsets = rng.sample(range(span_us), n)
    return [WINDOW_START + timedelta(microseconds=us) for us in offsets]


def _timed(fn: Callable[[], list[Any]]) -> tuple[float, list[Any]]:
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        out = fn()
        return time.perf_counter() - started, out
    finally:
        gc.enable()


def _ours(spec: ScheduleSpec, afters: Sequence[datetime]) -> list[datetime | None]:
    return [next_after(spec, a) for a in afters]


def _croniter(expr: str, starts: Sequence[datetime]) -> list[datetime]:
    return [croniter(expr, s).get_next(datetime) for s in starts]


def bench_case(case: Case, afters: list[datetime], chunks: int) -> dict[str, Any]:
    local = [a.astimezone(case.zone) for a in afters] if case.cron else []
    _ours(case.spec, afters)  # warm-up: zone and transition caches, compiled cron
    if case.cron:
        _croniter(case.cron, local[:500])
    size = max(1, len(afters) // chunks)
    ours_us: list[float] = []
    peer_us: list[float] = []
    ratios: list[float] = []
    disagree = 0
    for lo in range(0, len(afters), size):
        part = afters[lo : lo + size]
        elapsed, ours = _timed(lambda part=part: _ours(case.spec, part))
        ours_us.append(elapsed / len(part) * 1e6)
        if case.cron is None:
            continue
        starts = local[lo : lo + size]
        elapsed, theirs = _timed(lambda starts=starts: _croniter(case.cron, starts))
        peer_us.append(elapsed / len(part) * 1e6)
        ratios.append(peer_us[-1] / ours_us[-1])
        disagree += sum(o != t for o, t in zip(ours, theirs, strict=True))
    result: dict[str, Any] = {
        "case": case.label,
        "calls": len(afters),
        "ours_us": round(statistics.median(ours_us), 2),
        "ours_us_range": [round(min(ours_us), 2), round(max(ours_us), 2)],
    }
    if case.cron:
        result |= {
            "croniter_us": round(statistics.median(peer_us), 1),
            "croniter_us_range": [round(min(peer_us), 1), round(max(peer_us), 1)],
            "ratio_croniter_over_ours": round(statistics.median(ratios), 1),
            "ratio_range": [round(min(ratios), 1), round(max(ratios), 1)],
            "answers_differ": disagree,
        }
    return result


def mixed_specs(n: int, rng: random.Random) -> list[ScheduleSpec]:
    """N distinct spec objects over every shape (intervals with varied phases, once in the
    next hours), as a ticker would build them from N rows."""
    specs: list[ScheduleSpec] = []
    for i in range(n):
        base = CASES[i % len(CASES)].spec
        if base.kind == "interval":
            anchor = ANCHOR + timedelta(seconds=rng.randrange(86_400))
            specs.append(ScheduleSpec(kind="interval", interval_seconds=60, anchor=anchor))
        elif base.kind == "once":
            run_at = BOUNDARY + timedelta(seconds=rng.randrange(1, 86_400))
            specs.append(ScheduleSpec(kind="once", run_at=run_at))
        else:
            specs.append(ScheduleSpec(kind="cron", cron=base.cron, timezone=base.timezone))
    return specs


def bench_mixed(n: int, rng: random.Random, repeat: int, chunks: int) -> dict[str, Any]:
    specs = mixed_specs(n, rng)
    local = {tz: BOUNDARY.astimezone(ZoneInfo(tz)) for tz in {s.timezone for s in specs}}

    def ours(part: Sequence[ScheduleSpec]) -> list[datetime | None]:
        return [next_after(s, BOUNDARY) for s in part]

    def peer(part: Sequence[ScheduleSpec]) -> list[datetime | None]:
        return [
            croniter(s.cron, local[s.timezone]).get_next(datetime)
            if s.cron is not None
            else next_after(s, BOUNDARY)
            for s in part
        ]

    ours(specs)  # warm-up
    full_passes = [_timed(lambda: ours(specs))[0] for _ in range(repeat)]
    # Side by side: chunk by chunk, ours then the peer, so both see the same machine.
    size = max(1, n // chunks)
    ours_s: list[float] = []
    peer_s: list[float] = []
    for lo in range(0, n, size):
        part = specs[lo : lo + size]
        ours_s.append(_timed(lambda part=part: ours(part))[0])
        peer_s.append(_timed(lambda part=part: peer(part))[0])
    ratios = [p / o for p, o in zip(peer_s, ours_s, strict=True)]
    return {
        "schedules": n,
        "boundary": BOUNDARY.isoformat(),
        "ours_s": round(sum(ours_s), 3),
        "ours_s_full_pass_min": round(min(full_passes), 3),
        "ours_s_full_pass_median": round(statistics.median(full_passes), 3),
        "ours_us_per_schedule": round(sum(ours_s) / n * 1e6, 2),
        "peer_s": round(sum(peer_s), 3),
        "peer_note": "croniter for the cron specs (75%), our code for interval and once",
        "ratio_peer_over_ours": round(statistics.median(ratios), 1),
        "ratio_range": [round(min(ratios), 1), round(max(ratios), 1)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.occurrences", description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="distinct instants per shape")
    p.add_argument("--n-mixed", type=int, default=100_000, help="schedules in the mixed tick")
    p.add_argument("--chunks", type=int, default=10, help="interleaved timing chunks per shape")
    p.add_argument("--repeat", type=int, default=3, help="whole passes of ours, mixed tick")
    args = p.parse_args(argv)

    rng = random.Random(SEED)
    started = time.perf_counter()
    info = machine()
    afters = instants(args.n, rng)
    cases = []
    for case in CASES:
        cases.append(bench_case(case, afters, args.chunks))
        print(f"  {case.label}: done", flush=True)
    mixed = bench_mixed(args.n_mixed, rng, args.repeat, args.chunks)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload = {
        "benchmark": "occurrences",
        "date": now_iso(),
        "command": command_line("bench.occurrences"),
        "machine": info,
        "versions": {"croniter": version_of("croniter"), "pgsched": version_of("pgsched")},
        "source_sha256": source_digests("app/domain/occurrences.py"),
        "params": vars(args) | {"seed": SEED, "window": ["2025-01-01", "2026-12-31"]},
        "method": "median over chunks of us/call; ratio = median of per-chunk croniter/ours",
        "cases": cases,
        "mixed": mixed,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    path = write_results("occurrences.json", payload)
    print()
    print(report(payload))
    print(f"\nresults: {path}")
    return 0


def report(payload: dict[str, Any]) -> str:
    rows = [
        [
            c["case"],
            c["ours_us"],
            c.get("croniter_us", "-"),
            f"{c['ratio_croniter_over_ours']}x" if "ratio_croniter_over_ours" in c else "-",
            c.get("answers_differ", "-"),
        ]
        for c in payload["cases"]
    ]
    m = payload["mixed"]
    lines = [
        f"{payload['command']}   ({payload['date']}, {payload['params']['n']} instants per shape)",
        "",
        table(["schedule", "ours us/call", "croniter us/call", "croniter/ours", "differ"], rows),
        "",
        table(
            [
                "mixed tick",
                "ours s",
                "ours s, whole passes (median / min)",
                "peer s",
                "peer/ours",
            ],
            [
                [
                    f"{m['schedules']:,} mixed schedules at one minute boundary",
                    m["ours_s"],
                    f"{m['ours_s_full_pass_median']} / {m['ours_s_full_pass_min']}",
                    m["peer_s"],
                    f"{m['ratio_peer_over_ours']}x",
                ]
            ],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
