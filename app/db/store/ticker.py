"""The ticker's two statements: lock the due schedules, and write one batch of their runs.

Both are in app/db/queries/ticker.sql (ADR 0015); the planning between them is the ticker's own
(app.ticker.plan, pure).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row, one, rows


async def lock_due_groups(conn: Conn, *, horizon: datetime, limit: int) -> list[Row]:
    """Up to `limit` schedules due by `horizon`, locked (SKIP LOCKED: tickers share the work),
    in groups of alike schedules that one plan serves."""
    return await rows(conn, "lock_due_groups", {"horizon": horizon, "limit": limit})


async def materialise_batch(conn: Conn, batch: Mapping[str, object]) -> Row:
    """Insert a batch's runs, record its missed occurrences and advance its schedules, in one
    statement; returns the summary (run_ids, admitted, refused, missed). `batch` holds the
    statement's parameters, column lists built by app.ticker."""
    return await one(conn, "materialise_batch", batch)
