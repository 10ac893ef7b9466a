"""Maintenance: partitions kept ahead of need, history kept within retention (issue 7, ADR 0005).

The work is one SQL function, `pgsched.maintain_v1`, so that it runs the same way from
`pgsched maintain` and as pgsched's own built-in schedule `pgsched.maintenance`: an ordinary
`sql` job, hourly, so every pass shows up as a run with its events and outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from app import schedules
from app.db import store
from app.db.sql import query
from app.db.store import Conn, Row

BUILTIN_NAME = "pgsched.maintenance"


@dataclass(frozen=True, slots=True)
class Retention:
    months_ahead: int = 3
    run_days: int = 30
    event_days: int = 90

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Retention:
        return cls(
            months_ahead=int(env.get("PGSCHED_MONTHS_AHEAD", "3")),
            run_days=int(env.get("PGSCHED_RUN_RETENTION_DAYS", "30")),
            event_days=int(env.get("PGSCHED_EVENT_RETENTION_DAYS", "90")),
        )

    def statement(self) -> str:
        # Integers only, formatted from validated settings: the statement is stored in the
        # built-in schedule's payload and run by the sql job type.
        return (
            "SELECT action, table_name, partition_name FROM pgsched.maintain_v1("
            f"{int(self.months_ahead)}, interval '{int(self.run_days)} days', "
            f"interval '{int(self.event_days)} days')"
        )


async def maintain(conn: Conn, retention: Retention, *, now: datetime | None) -> list[Row]:
    """One maintenance pass now (or at `now`): what was created, kept and retired."""
    cur = await conn.execute(
        query("maintain"),
        {
            "months_ahead": retention.months_ahead,
            "run_days": retention.run_days,
            "event_days": retention.event_days,
            "now": now,
        },
    )
    return await cur.fetchall()


async def ensure_builtin_schedule(conn: Conn, retention: Retention, *, now: datetime | None) -> Row:
    """Install (or bring up to date) the hourly maintenance schedule; idempotent."""
    payload = {"statement": retention.statement()}
    async with conn.transaction():
        cur = await conn.execute(query("live_schedule_by_name"), {"name": BUILTIN_NAME})
        existing = await cur.fetchone()
        if existing is not None:
            if existing["payload"] == payload:
                return existing
            changed = await store.update_schedule(
                conn,
                existing["id"],
                {"payload": payload},
                event_type="schedule.updated",
                actor="pgsched",
                now=now,
            )
            return changed or existing
        fields = schedules.complete(
            {
                "name": BUILTIN_NAME,
                "job_type": "sql",
                "kind": "cron",
                "cron": "7 * * * *",
                "payload": payload,
                "overlap_policy": "skip",
                "missed_policy": "latest",
                "timeout_seconds": 600.0,
                "max_attempts": 3,
                "queue": "default",
            }
        )
        fields["next_due_at"] = schedules.first_due(fields, await store.db_now(conn, now))
        return await store.create_schedule(conn, fields, actor="pgsched", now=now)
