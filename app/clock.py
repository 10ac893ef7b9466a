"""Time, injected: the database decides "now" in production; tests move a fake clock (ADR 0003).

Code that needs the time takes a `Clock`. `db_now()` is bound to `%(now)s` in every time-dependent
query as `coalesce(%(now)s::timestamptz, now())`: `None` (the system clock) lets PostgreSQL decide,
so due-ness, leases and rescue follow one clock for every host. Loops sleep only via `clock.sleep`,
so a test advances a `FakeClock` instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def db_now(self) -> datetime | None:
        """The instant to bind as `now` in SQL, or None to use the database's now()."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for durations and deadlines in this process."""

    async def sleep(self, seconds: float) -> None:
        """Wait, as this clock counts time."""


class SystemClock:
    """Production: PostgreSQL's now() for decisions, the process's monotonic clock for durations."""

    def db_now(self) -> datetime | None:
        return None

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Tests: a settable instant. `advance` moves it and wakes sleepers whose deadline passed."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._origin = self._now
        self._wakeups: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def db_now(self) -> datetime | None:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self._origin).total_seconds()

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)
        self._wake()

    def advance(self, delta: timedelta | float) -> datetime:
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self._wake()
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wakeups.append((self._now + timedelta(seconds=seconds), future))
        await future

    def _wake(self) -> None:
        due = [(at, f) for at, f in self._wakeups if at <= self._now]
        self._wakeups = [(at, f) for at, f in self._wakeups if at > self._now]
        for _, future in due:
            if not future.done():
                future.set_result(None)
