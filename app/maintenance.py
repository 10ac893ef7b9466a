"""Maintenance: keep monthly partitions of runs and events created ahead of need.

Issue 7 extends this with retention (detach and drop past months). Creating partitions early is
what keeps the "no partition for this row" error (ADR 0005) from ever reaching the ticker.
"""

from __future__ import annotations

from datetime import datetime

from app.db import store
from app.db.sql import query
from app.db.store import Conn

MONTHS_AHEAD = 3


async def ensure_partitions(
    conn: Conn, *, months_ahead: int = MONTHS_AHEAD, now: datetime | None, actor: str
) -> list[str]:
    """Create the missing partitions from this month to `months_ahead`; record each creation."""
    cur = await conn.execute(query("missing_months"), {"months": months_ahead, "now": now})
    created: list[str] = []
    for row in await cur.fetchall():
        async with conn.transaction():
            made = await conn.execute(query("create_month_partition"), row)
            name = (await made.fetchone() or {}).get("name")
            await conn.execute(
                query("record_system_event"),
                {
                    "type": "partition.created",
                    "actor": actor,
                    "now": now,
                    "meta": store.jsonb(
                        {
                            "table": row["parent"],
                            "month": row["month"].isoformat(),
                            "partition": name,
                        }
                    ),
                },
            )
        created.append(str(name))
    return created
