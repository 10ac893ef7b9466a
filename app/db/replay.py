"""Replay: the event log is the truth; the schedule and run tables are projections of it.

`verify` folds every stream's events and lists where a projection row differs, column by column.
`rebuild` replaces the projections with the fold. Both rely on one rule the store keeps: an
event's `data` holds exactly the columns its transition set (ADR 0005), except that a creation
may leave out a column it set NULL, which the fold reads as NULL (ADR 0034).

Events that no fold uses are checked where that is cheap (ADR 0021): token events against the
token table, when this session may read it. Application roles cannot append other events than
their own transitions' (the event guard of migration 0016), so those need no check here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgsched.app.db import store
from pgsched.app.db.store import Conn


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    id: int
    column: str | None  # None: the whole row is missing on one side
    expected: Any
    actual: Any

    def __str__(self) -> str:
        if self.table == "api_token":  # an event that no token explains, or the reverse
            if self.actual is None:
                return f"api_token {self.id}: {self.column} names no such token"
            if self.expected is None:
                return f"api_token {self.id}: revoked, but its {self.column} is missing"
            said = f"{self.column} says {self.expected}"
            return f"api_token {self.id}: {said}, the token {self.actual}"
        if self.column is None:
            side = "row missing from the table" if self.actual is None else "row has no events"
            return f"{self.table} {self.id}: {side}"
        return (
            f"{self.table} {self.id}: {self.column} is {self.actual!r}, "
            f"events say {self.expected!r}"
        )


def _differences(table: str, rows: list[dict[str, Any]]) -> list[Difference]:
    found: list[Difference] = []
    for row in rows:
        expected, actual = row["expected"], row["actual"]
        if expected is None or actual is None:
            found.append(Difference(table, row["id"], None, expected, actual))
            continue
        for column in sorted(expected.keys() | actual.keys()):
            if expected.get(column) != actual.get(column):
                found.append(
                    Difference(table, row["id"], column, expected.get(column), actual.get(column))
                )
    return found


async def verify(conn: Conn) -> list[Difference]:
    """Every difference between the projections and the fold of the event log."""
    differences: list[Difference] = []
    for table in ("schedule", "run"):
        differences += _differences(table, await store.replay.projection_differences(conn, table))
    tokens = await store.replay.token_event_differences(conn)
    differences += [
        Difference("api_token", r["id"], r["column"], r["expected"], r["actual"])
        for r in tokens or []
    ]
    return differences


async def rebuild(conn: Conn) -> dict[str, int]:
    """Replace the schedule and run tables with the fold of the events, in one transaction."""
    return await store.replay.rebuild_projections(conn)
