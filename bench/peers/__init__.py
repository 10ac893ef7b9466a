"""Peers run side by side with pgsched by `bench.drain` and `bench.lag`: PgQueuer, procrastinate.

Each adapter module (`pgqueuer_bench`, `procrastinate_bench`) uses only its library's documented
API and exposes the same small surface, so the harness treats the three systems alike:

- `DISTRIBUTION`: the PyPI name, for the version in the results;
- `install(url)`: the library's own schema, in a fresh database;
- `enqueue_now(url, n)`: n no-op jobs, due now, in bulk;
- `drain(url, n, concurrency, ...)`: start the library's worker in this process, wait until the
  queue is empty, stop it; returns the wall seconds from starting the worker to seeing it empty;
- `span(url)`: first start to last completion, read back from the library's own history table
  (procrastinate_events, pgqueuer_log), by the database clock;
- `history(url)`: how many start and completion records that table holds (every state change
  written, as pgsched's event log does);
- `lag(url, n, rate, lead, ...)`: n jobs due at a steady `rate` per second from `lead` seconds
  on (the library's scheduled-at / execute-after feature), run until all are done; returns the
  due-to-start latencies, per job, by the database clock and at handler start.

The shared helpers below poll for completion and summarise latencies.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

POLL_SECONDS = 0.05


class DrainTimeout(RuntimeError):
    """The queue did not empty in time."""


async def wait_until_zero(
    url: str,
    count_sql: str,
    *,
    within: float,
    poll: float = POLL_SECONDS,
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> float:
    """Poll `count_sql` (one integer) on its own connection until it is 0; returns monotonic
    time at which 0 was seen. The poll costs one cheap query every `poll` seconds."""
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(count_sql)
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise DrainTimeout(f"not drained after {within:.0f} s")
            if on_tick is not None:
                await on_tick()
            await asyncio.sleep(poll)


async def scalar_rows(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max in milliseconds, nearest rank, and the count."""
    values = sorted(seconds)
    if not values:
        return {"n": 0}

    def ms(x: float) -> float:
        return round(x * 1000, 1)

    return {
        "n": len(values),
        "min_ms": ms(values[0]),
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(values[-1]),
        "mean_ms": ms(sum(values) / len(values)),
    }
