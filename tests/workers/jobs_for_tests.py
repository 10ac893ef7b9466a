"""Python callables that worker tests schedule as `python` jobs.

Each records its execution in a table of the test's own database (`job_log`), so a test can
count how many times an attempt really ran, across processes and crashes.
"""

from __future__ import annotations

import asyncio
import os

import psycopg


async def _log(dsn: str, idempotency_key: str, note: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO public.job_log (idempotency_key, note, pid) VALUES (%s, %s, %s)",
            [idempotency_key, note, os.getpid()],
        )


async def ok(dsn: str, idempotency_key: str) -> str:
    await _log(dsn, idempotency_key, "ok")
    return "done"


async def noted(dsn: str, idempotency_key: str, note: str) -> str:
    """Logs the note it is given: which arguments reached the run."""
    await _log(dsn, idempotency_key, note)
    return note


async def fail(dsn: str, idempotency_key: str) -> None:
    await _log(dsn, idempotency_key, "fail")
    raise RuntimeError("this job always fails")


async def slow(dsn: str, idempotency_key: str, seconds: float) -> str:
    await _log(dsn, idempotency_key, "start")
    await asyncio.sleep(seconds)
    await _log(dsn, idempotency_key, "end")
    return "slept"
