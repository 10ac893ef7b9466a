"""Builders for test data, with explicit times; every write goes through the store."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row
from pgsched.app.domain import schedule

_names = itertools.count(1)


async def make_schedule(conn: Conn, now: datetime | None = None, **over: Any) -> Row:
    fields = schedule.complete(
        {
            "name": f"s{next(_names)}",
            "job_type": "noop",
            "kind": "interval",
            "interval_seconds": 60,
            **over,
        }
    )
    if now is not None and "next_due_at" not in over:
        fields["next_due_at"] = schedule.first_due(
            schedule.spec_of({**fields, "created_at": now}), now, grace_seconds=0
        )
    return await store.create_schedule(conn, fields, actor="test", now=now)


def clear_of_month_ends(t: datetime, margin: timedelta = timedelta(days=1)) -> datetime:
    """`t` (UTC), moved just enough that [t - margin, t + margin] lies inside t's month.

    A fresh database has partitions from the current month on, and CI runs at any instant:
    history written before a module's T must not reach last month (00:05 on the 1st), nor a
    test's data straddle two months (23:50 on the last day)."""
    first = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return min(max(t, first + margin), following - margin)


async def cover_last_month(conn: Conn) -> None:
    """Last month's partitions of runs and events, as maintenance made them a month ago.

    For tests that must write history just before the database's now(): a fresh database
    starts at the current month, so on the 1st of a month that history would have no partition.
    Created as the owner role, like every partition in production; idempotent."""
    await conn.execute("SET ROLE pgsched_owner")
    try:
        await conn.execute(
            "SELECT pgsched.create_month_partition_v1("
            "t, ((now() AT TIME ZONE 'UTC') - interval '1 month')::date) "
            "FROM unnest(ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass]) AS t"
        )
    finally:
        await conn.execute("RESET ROLE")
