"""When the database goes away: one retry policy, and one line when it goes and one when it is back.

Every long-running process (worker, ticker, API, `pgsched run`) rides out an outage the same way
(ADR 0022):

- `Backoff`: capped exponential backoff with full jitter. The cap is short (2 s) because an
  outage ends when the server is back, not when our clients are ready: with a 2 s cap, work
  resumes within about a second of the database coming back, and a client that retries while it
  is down costs one connection attempt a second. Full jitter spreads the reconnects of many
  workers instead of lining them up.
- `DATABASE`, this process's view of the database: the first connection attempt that fails logs
  "database unavailable", the first that succeeds after that logs "database available again"
  with the outage's length. Only *connection attempts* count: a statement that meets a
  broken connection says nothing about the server (a backend can be terminated alone), and a
  stale connection failing after the server came back must not announce a second outage. Every
  loop's own retries are debug lines, so an outage of any length is two lines per process.
- `Connection` reports every connection attempt to `DATABASE`; the pools, the worker's dedicated
  connections and its listener are all made of it.
- `pool()`: a psycopg pool that checks a connection before handing it out (a server restart
  leaves every idle connection dead) and reconnects with `Backoff` instead of psycopg_pool's
  own 1, 2, 4, 8 … s attempts, which after a 40 s outage left the ticker waiting 20 s more.
- `wait_until_available()`: a process started while the database is down waits for it instead
  of exiting, but a connection the server *refuses* (unknown host, role or database, a bad
  password) is a configuration error, not an outage, and raises `DatabaseRefused`: waiting
  would never end.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from pgsched.app.db.store import Conn

log = logging.getLogger("pgsched.db")

BASE_SECONDS: Final = 0.1
CAP_SECONDS: Final = 2.0

# What a server (or resolver) says when the DSN itself is wrong; anything else that fails a
# connection attempt (refused, reset, timed out, starting up, shutting down, too many clients)
# may pass.
_REFUSALS: Final = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # role or database
    "failed to resolve host",
    "could not translate host name",
    "invalid connection option",
    "invalid dsn",
)


class Backoff:
    """Capped exponential backoff with full jitter: the n-th delay is uniform in
    [0, min(cap, base * 2**n)]."""

    def __init__(
        self,
        base: float = BASE_SECONDS,
        cap: float = CAP_SECONDS,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 30))
        self.failures += 1
        return float(self._rng() * ceiling)

    def reset(self) -> None:
        self.failures = 0


class Availability:
    """Whether this process can reach the database, logged once per change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.down_since: float | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def unavailable(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = self._clock()
            self.outages += 1
            log.warning("database unavailable (%s); retrying until it is back", first_line(exc))
        else:
            log.debug("database still unavailable (%s)", first_line(exc))

    def available(self) -> None:
        if self.down_since is not None:
            seconds = self._clock() - self.down_since
            self.down_since = None
            # A warning like the line it answers: whoever sees one must see the other.
            log.warning(
                "database available again after %.1f s",
                seconds,
                extra={"outage_seconds": round(seconds, 3)},
            )


DATABASE: Final = Availability()


class DatabaseRefused(Exception):
    """The server (or the resolver) refused the connection's parameters: not an outage."""


def refused(exc: BaseException) -> bool:
    """Whether a failed connection attempt means the DSN is wrong rather than the server away."""
    if not isinstance(exc, psycopg.OperationalError):
        return isinstance(exc, psycopg.Error)  # ProgrammingError: a malformed DSN
    text = str(exc).lower()
    return any(words in text for words in _REFUSALS)


class Connection(AsyncConnection[DictRow]):
    """An async connection whose connection attempts are reported to `DATABASE`."""

    @classmethod
    async def connect(
        cls,
        conninfo: str = "",
        **kwargs: Any,  # noqa: ANN401 - psycopg's own parameters, passed through
    ) -> Connection:
        try:
            conn = await super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            if not refused(exc):
                DATABASE.unavailable(exc)
            raise
        DATABASE.available()
        return conn


class _Attempt(AttemptWithBackoff):
    """psycopg_pool's reconnection attempt, with our capped, jittered delays."""

    def __init__(self, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._backoff = Backoff()

    def update_delay(self, now: float) -> None:
        if self.give_up_at == 0.0:
            self.give_up_at = now + self.timeout
        self.delay = min(self._backoff.next(), max(0.0, self.give_up_at - now))


class Pool(AsyncConnectionPool[Conn]):
    """A pool that hands out only live connections and reconnects within `CAP_SECONDS`."""

    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109
        # psycopg_pool's own `check=` waits 1, 2, 4 … s between failed checks: after a restart
        # with three idle connections a request would wait 7 s, past its timeout. A dead
        # connection costs one round trip here, and the next is tried at once (the pool
        # replaces the dead one in the background).
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = await super().getconn(timeout=max(deadline - time.monotonic(), 0.0))
            try:
                await AsyncConnectionPool.check_connection(conn)
            except psycopg.Error:
                await self.putconn(conn)
                continue
            except BaseException:
                await self.putconn(conn)
                raise
            return conn

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        # psycopg_pool has no setting for its reconnection delays (1 s doubling up to the
        # reconnect timeout); its first attempt is ours, and it carries its delays along.
        await super()._add_connection(
            attempt or _Attempt(timeout=self.reconnect_timeout), growing=growing
        )


def pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    configure: Callable[[Conn], Awaitable[None]] | None = None,
    timeout: float = 30.0,
    name: str | None = None,
) -> Pool:
    """An unopened `Pool` of autocommit, dict-row connections (open it with `wait=False`:
    psycopg_pool closes a pool whose `open(wait=True)` times out, and it never reopens)."""
    return Pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        name=name,
        configure=configure,
        kwargs={"autocommit": True, "row_factory": dict_row},
        connection_class=Connection,
        # Keep reconnecting however long the outage: a pool that gives up shrinks for good.
        reconnect_timeout=24 * 3600.0,
    )


async def wait_until_available(
    url: str,
    stop: asyncio.Event | None = None,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Connect once, retrying with `Backoff` while the database is away. False when `stop` was
    set first; `DatabaseRefused` when the server refuses the DSN (waiting would not help)."""
    backoff = Backoff()
    while stop is None or not stop.is_set():
        try:
            conn = await Connection.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            if refused(exc):
                raise DatabaseRefused(
                    f"cannot connect to the database: {first_line(exc)}"
                ) from None
            await _sleep_unless(stop, backoff.next(), sleep)
            continue
        await conn.close()
        return True
    return False


async def _sleep_unless(
    stop: asyncio.Event | None, seconds: float, sleep: Callable[[float], Awaitable[None]]
) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    if stop is None:
        await sleep(seconds)
        return
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(sleep(seconds))]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def first_line(exc: BaseException) -> str:
    """An error in one line, for a log record (PostgreSQL's messages run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
