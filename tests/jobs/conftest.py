"""Shared helpers for the job-type tests: a JobContext factory and process liveness checks."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgsched.workers.jobs import JobContext
from pgsched.workers.netguard import NetPolicy

LOOPBACK_ONLY = NetPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))

MakeCtx = Callable[..., JobContext]


@pytest.fixture
def make_ctx() -> MakeCtx:
    """``make_ctx(timeout_seconds=..., environ=...)``: a context for run 7, attempt 2."""

    def make(**overrides: object) -> JobContext:
        values: dict[str, object] = {
            "run_id": 7,
            "attempt": 2,
            "schedule_name": "test-schedule",
            "timeout_seconds": 10.0,
            "database_url": "postgresql://nobody@127.0.0.1:1/none",
            "named_dsns": {},
            "http_policy": LOOPBACK_ONLY,
            "environ": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        }
        values.update(overrides)
        return JobContext(**values)  # type: ignore[arg-type]

    return make


def _dead(pid: int) -> bool:
    """No such process, or a zombie (dead; a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # the state follows "(comm)"; comm may contain spaces, so split after the last ")"
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def process_gone(pid: int, within: float = 3.0) -> bool:
    """True once ``pid`` is dead; False if it is still alive after ``within`` seconds."""
    stop = time.monotonic() + within
    while not _dead(pid):
        if time.monotonic() > stop:
            return False
        await asyncio.sleep(0.02)
    return True


async def wait_for_file(path: Path, within: float = 5.0) -> str:
    stop = time.monotonic() + within
    while time.monotonic() < stop:
        if text := _read(path):
            return text
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} did not appear")
