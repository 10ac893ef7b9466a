"""Builders for test data, with explicit times; every write goes through the store."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from app import schedules
from app.db import store
from app.db.store import Conn, Row

_names = itertools.count(1)


async def make_schedule(conn: Conn, now: datetime | None = None, **over: Any) -> Row:
    fields = schedules.complete(
        {
            "name": f"s{next(_names)}",
            "job_type": "noop",
            "kind": "interval",
            "interval_seconds": 60,
            **over,
        }
    )
    if now is not None and "next_due_at" not in over:
        fields["next_due_at"] = schedules.first_due(fields, now)
    return await store.create_schedule(conn, fields, actor="test", now=now)
