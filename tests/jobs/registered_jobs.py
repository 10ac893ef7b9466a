"""Jobs registered with `@pgsched.job`, for tests/jobs/test_registry.py and `--import`.

Importing this module registers them in the process's registry (app.jobs): the test process
imports it, and so does `pgsched worker --import tests.jobs.registered_jobs` in a subprocess.
The jobs record what they saw in `public.job_log` (tests/conftest.py `db`) of the database they
are told about, so a test sees a worker's call.
"""

from __future__ import annotations

import asyncio

import psycopg

import pgsched


def _log(dsn: str, key: str, note: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.job_log (idempotency_key, note) VALUES (%s, %s)", [key, note]
        )


@pgsched.job("registry-greet", queue="registry", priority=2, max_attempts=4, timeout_seconds=20)
def greet(dsn: str, name: str, greeting: str = "hello", *, idempotency_key: str) -> str:
    """A sync job: its kwargs, and the key the worker passes."""
    _log(dsn, idempotency_key, f"{greeting} {name}")
    return f"{greeting} {name}"


@pgsched.job("registry-greet-async", queue="registry")
async def greet_async(dsn: str, name: str, run_context: pgsched.RunContext) -> str:
    """An async job: the context's key is the key."""
    await asyncio.to_thread(_log, dsn, run_context.idempotency_key, f"async {name}")
    return name


@pgsched.job("registry-wait-sync", queue="registry")
def wait_sync(dsn: str, run_context: pgsched.RunContext) -> str:
    """Runs until the worker asks it to stop, then says it saw that (a sync job's thread is
    not stopped: it must look)."""
    _log(dsn, run_context.idempotency_key, "started")
    while not run_context.wait(0.05):
        pass
    _log(dsn, run_context.idempotency_key, f"cancelled={run_context.cancelled()}")
    return "stopped"


@pgsched.job("registry-wait-async", queue="registry")
async def wait_async(dsn: str, run_context: pgsched.RunContext) -> str:
    """Awaits until cancelled; cancelled() is already true when the CancelledError arrives."""
    await asyncio.to_thread(_log, dsn, run_context.idempotency_key, "started")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        seen = run_context.cancelled()
        await asyncio.to_thread(_log, dsn, run_context.idempotency_key, f"cancelled={seen}")
        raise
    return "woke"


@pgsched.job("registry-anything", queue="registry")
def anything(**kwargs: object) -> list[str]:
    return sorted(kwargs)
