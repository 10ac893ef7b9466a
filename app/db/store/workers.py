"""Workers: the registry of worker processes, their heartbeats and sessions, and queue limits.

The named statements are in app/db/queries/workers.sql (ADR 0013).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from pgsched.app.db.sql import query
from pgsched.app.db.store.executor import Conn, Row, one, row, rows


async def register_worker(
    conn: Conn,
    *,
    name: str,
    host: str,
    pid: int,
    version: str,
    queues: Sequence[str],
    slots: int,
    now: datetime | None,
) -> Row:
    return await one(
        conn,
        "register_worker",
        {
            "name": name,
            "host": host,
            "pid": pid,
            "version": version,
            "queues": list(queues),
            "slots": slots,
            "now": now,
        },
    )


async def heartbeat_worker(conn: Conn, worker_id: int, *, now: datetime | None) -> str | None:
    """Record that the worker is alive; returns its registry state (None if unknown)."""
    found = await row(conn, "heartbeat_worker", {"id": worker_id, "now": now})
    return None if found is None else str(found["state"])


async def set_worker_state(conn: Conn, worker_id: int, state: str, *, now: datetime | None) -> None:
    await rows(conn, "set_worker_state", {"id": worker_id, "state": state, "now": now})


async def unserved_queues(
    conn: Conn, queues: Sequence[str], *, stale_seconds: float, now: datetime | None
) -> list[str]:
    """Those of `queues` that no live worker serves, sorted."""
    found = await rows(
        conn,
        "unserved_queues",
        {"queues": sorted(set(queues)), "stale_seconds": stale_seconds, "now": now},
    )
    return [str(r["queue"]) for r in found]


async def mark_gone_workers(
    conn: Conn, *, after_seconds: float, actor: str, now: datetime | None
) -> list[int]:
    gone = await rows(
        conn, "mark_gone_workers", {"after_seconds": after_seconds, "actor": actor, "now": now}
    )
    return [int(r["id"]) for r in gone]


async def seconds_until_next_run(
    conn: Conn, queues: Sequence[str], *, now: datetime | None
) -> float | None:
    found = await row(conn, "seconds_until_next_run", {"queues": list(queues), "now": now})
    return None if found is None or found["seconds"] is None else float(found["seconds"])


async def set_queue_limit(
    conn: Conn, name: str, max_running: int | None, *, actor: str, now: datetime | None
) -> Row:
    """Limit how many runs of a queue run at once across all workers (None: unlimited)."""
    return await one(
        conn,
        "set_queue_limit",
        {"name": name, "max_running": max_running, "actor": actor, "now": now},
    )


async def configure_session(conn: Conn) -> None:
    """Bound what a frozen worker can hold: a session stuck inside a transaction (between claim
    and commit, say) is ended by the server, its row locks released and its claim rolled back
    (so it cannot hold up the rescue of its runs). Each statement of ours takes milliseconds;
    the limits are generous."""
    await rows(conn, "configure_worker_session")


async def listen_for_runs(conn: AsyncConnection[Any]) -> None:
    """LISTEN on the channel `wake_workers` (store.runs) notifies. Any row factory: the
    listener's connection reads notifications, never rows."""
    await conn.execute(query("listen_for_runs"))
