"""Read-only queries for the REST API: pages, the event feed, workers, health and stats.

Nothing here writes (the store's other modules do). Every list is a keyset page: the caller passes
where the previous page ended and gets at most `limit` rows, one index range each, never a
COUNT(*) over the partitioned tables. The statements live in `app/db/queries/reads.sql`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row, jsonb
from pgsched.app.db.store.executor import one as _one
from pgsched.app.db.store.executor import rows as _rows


async def page_schedules(
    conn: Conn,
    *,
    after_id: int,
    limit: int,
    queue: str | None = None,
    job_type: str | None = None,
    enabled: bool | None = None,
    name: str | None = None,
    health: str | None = None,
    owner: str | None = None,
    managed_by: str | None = None,
    labels: Mapping[str, str | None] | None = None,
) -> list[Row]:
    """Live schedules with id > after_id, by id. `labels`: each key with its value, or with
    None for "has this label, whatever its value"."""
    valued = {k: v for k, v in (labels or {}).items() if v is not None}
    keys = [k for k, v in (labels or {}).items() if v is None]
    return await _rows(
        conn,
        "page_schedules",
        {
            "after_id": after_id,
            "limit": limit,
            "queue": queue,
            "job_type": job_type,
            "enabled": enabled,
            "name": name,
            "health": health,
            "owner": owner,
            "managed_by": managed_by,
            "labels": jsonb(valued) if valued else None,
            "label_keys": keys or None,
        },
    )


async def page_runs(
    conn: Conn,
    *,
    limit: int,
    before: tuple[datetime, int] | None = None,
    states: Sequence[str] | None = None,
    schedule_id: int | None = None,
    queue: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Row]:
    """Runs newest occurrence first, strictly after (older than) the `before` position."""
    return await _rows(
        conn,
        "page_runs",
        {
            "limit": limit,
            "before_due_at": before[0] if before else None,
            "before_id": before[1] if before else None,
            "states": list(states) if states else None,
            "schedule_id": schedule_id,
            "queue": queue,
            "since": since,
            "until": until,
        },
    )


async def run_detail(conn: Conn, run_id: int) -> Row | None:
    rows = await _rows(conn, "run_detail", {"id": run_id})
    return rows[0] if rows else None


async def stream_events(
    conn: Conn, stream: str, stream_id: int, *, after_id: int = 0, limit: int = 1000
) -> list[Row]:
    """One stream's events in change order."""
    return await _rows(
        conn,
        "stream_events",
        {"stream": stream, "stream_id": stream_id, "after_id": after_id, "limit": limit},
    )


async def latest_stream_events(
    conn: Conn, stream: str, stream_id: int, *, skip: Sequence[str], limit: int
) -> list[Row]:
    """One stream's newest `limit` events whose type is not in `skip`, newest first."""
    return await _rows(
        conn,
        "latest_stream_events",
        {"stream": stream, "stream_id": stream_id, "skip": list(skip), "limit": limit},
    )


async def event_feed(conn: Conn, *, after: tuple[int, int], limit: int) -> list[Row]:
    """Events after the (tx_id, id) position, in commit order, settled ones only (ADR 0005)."""
    return await _rows(
        conn,
        "event_feed",
        {"after_tx": str(after[0]), "after_id": after[1], "limit": limit},
    )


async def feed_now(conn: Conn) -> tuple[int, int]:
    """The feed's position now: every event it can show is behind it, every later one ahead."""
    row = await _one(conn, "feed_now")
    return int(row["tx_id"]), 0


async def page_workers(
    conn: Conn,
    *,
    limit: int,
    stale_seconds: float,
    now: datetime | None,
    before_id: int | None = None,
    states: Sequence[str] | None = None,
) -> list[Row]:
    """Registered workers newest first, each with `healthy` and its running count."""
    return await _rows(
        conn,
        "page_workers",
        {
            "limit": limit,
            "stale_seconds": stale_seconds,
            "now": now,
            "before_id": before_id,
            "states": list(states) if states else None,
        },
    )


async def worker(
    conn: Conn, worker_id: int, *, stale_seconds: float, now: datetime | None
) -> Row | None:
    """One registered worker with `healthy` and its running count; None if there is none."""
    found = await _rows(
        conn, "worker", {"id": worker_id, "stale_seconds": stale_seconds, "now": now}
    )
    return found[0] if found else None


async def health(conn: Conn, *, stale_seconds: float, now: datetime | None) -> Row:
    return await _one(conn, "health", {"stale_seconds": stale_seconds, "now": now})


async def stats(conn: Conn, *, hours: int, now: datetime | None) -> Row:
    return await _one(conn, "stats", {"hours": hours, "now": now})


async def common_errors(conn: Conn, *, hours: int, limit: int, now: datetime | None) -> list[Row]:
    return await _rows(conn, "common_errors", {"hours": hours, "limit": limit, "now": now})


async def telemetry_sample(conn: Conn, *, stale_seconds: float, now: datetime | None) -> Row:
    """What the metrics sampler reports (app.telemetry), in one round trip."""
    return await _one(conn, "telemetry_sample", {"stale_seconds": stale_seconds, "now": now})


async def configure_api_session(conn: Conn) -> None:
    """Timestamps leave the API in UTC whatever the server's or role's TimeZone setting."""
    await _rows(conn, "configure_api_session")
