"""Worker sessions: how a worker's connections are set up, and the long-lived ones of its hot path.

The claim loop and the reporter each keep one connection of their own instead of borrowing
from the pool per statement (ADR 0019): psycopg prepares a statement after a few executions on
the same connection, so the claim's plan is made once instead of per claim, and there is no
liveness round trip per checkout. A connection that broke (server restart,
`pg_terminate_backend`) is replaced on next use; the statement that met the break raised
`OperationalError`, which its caller retries with `app.db.outage.Backoff`. Connection attempts
go through `app.db.outage.Connection`, so the process logs an outage once (ADR 0022).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from psycopg.rows import dict_row

from pgsched.app.db import store
from pgsched.app.db.outage import Connection
from pgsched.app.db.store import Conn

__all__ = ["DedicatedConnection", "configure_session"]


async def configure_session(conn: Conn) -> None:
    """Bound what a frozen worker can hold: a session stuck inside a transaction (between claim
    and commit, say) is ended by the server, its row locks released and its claim rolled back
    (so it cannot hold up the rescue of its runs). Each statement of ours takes milliseconds;
    the limits are generous."""
    await store.configure_session(conn)


class DedicatedConnection:
    """One autocommit connection, reconnected on the first use after it broke."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Conn | None = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                await conn.close()
            self._conn = None
            conn = await Connection.connect(self.url, autocommit=True, row_factory=dict_row)
            await configure_session(conn)
            self._conn = conn
        yield conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
