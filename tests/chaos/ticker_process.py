"""One ticker as its own OS process, driven by a simulated clock (tests/chaos only).

    python -m tests.chaos.ticker_process DSN NAME

It loops: read the simulated now from the test's `public.chaos_clock` table, run one
`app.ticker.tick` at that instant in small batches (so a kill finds many transactions to land in),
record what the tick reported in `public.chaos_tick`, sleep a few milliseconds, repeat. It exits
when the clock says `done`, or when the test process that started it is gone. The test SIGKILLs
it at random; nothing here tries to survive that.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

import psycopg
from psycopg.rows import dict_row

from pgsched.app import ticker

# Schedules per transaction: small, so one tick of the chaos test is many transactions.
BATCH = 50


async def main(dsn: str, name: str) -> None:
    parent = os.getppid()
    pause = random.Random(name)  # noqa: S311 - pacing only
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, row_factory=dict_row, application_name=name
    )
    try:
        while os.getppid() == parent:
            cur = await conn.execute("SELECT now, done FROM public.chaos_clock")
            clock = await cur.fetchone()
            if clock is None or clock["done"]:
                return
            result = await ticker.tick(conn, now=clock["now"], actor=name, batch=BATCH)
            if result.batches:
                await conn.execute(
                    "INSERT INTO public.chaos_tick (ticker, now, schedules, created, duplicates,"
                    " missed, batches) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        name,
                        clock["now"],
                        result.schedules,
                        result.created,
                        result.duplicates,
                        result.missed,
                        result.batches,
                    ],
                )
            await asyncio.sleep(pause.uniform(0.001, 0.005))
    finally:
        await conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.chaos.ticker_process DSN NAME")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
