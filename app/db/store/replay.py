"""Replay's statements: the projections compared with, or rebuilt from, the fold of the events.

They are in app/db/queries/replay.sql; app.db.replay turns the differences into a report.
"""

from __future__ import annotations

from typing import Literal

from pgsched.app.db.store.executor import Conn, Row, execute, row, rows

_DIFFS = {"schedule": "diff_schedules", "run": "diff_runs"}


async def projection_differences(conn: Conn, table: Literal["schedule", "run"]) -> list[Row]:
    """Per differing row of `table`: its id, the fold's values (expected) and the table's."""
    return await rows(conn, _DIFFS[table])


async def token_event_differences(conn: Conn) -> list[Row] | None:
    """Token events no token explains, and the reverse; None when this session may not read
    the token table."""
    if not (await row(conn, "can_read_tokens") or {}).get("ok"):
        return None
    return await rows(conn, "diff_token_events")


async def rebuild_projections(conn: Conn) -> dict[str, int]:
    """Replace the schedule and run tables with the fold of the events, in one transaction."""
    async with conn.transaction():
        await execute(conn, "clear_projections")
        schedules = await execute(conn, "rebuild_schedules")
        runs = await execute(conn, "rebuild_runs")
    return {"schedules": schedules, "runs": runs}
