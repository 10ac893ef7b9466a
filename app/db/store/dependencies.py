"""Schedule dependencies (ADR 0033): the graph's reads and the blocked runs' transitions.

Statements in app/db/queries/dependencies.sql. Which upstream occurrences a run waits for is
app.domain.dependencies' (planned by app.ticker); which run is released or skipped is decided
by `settle_blocked` itself, in the statement that records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row, execute, jsonb, one, rows


async def lock_graph(conn: Conn) -> None:
    """Serialise changes of dependencies until the transaction ends (a cycle check must see
    every other change committed)."""
    await execute(conn, "lock_dependency_graph")


async def upstream_candidates(conn: Conn, ids: Sequence[int], names: Sequence[str]) -> list[Row]:
    """The live schedules (id, name, kind) among these ids and names."""
    return await rows(conn, "upstream_candidates", {"ids": list(ids), "names": list(names)})


async def graph(conn: Conn) -> list[Row]:
    """Every live schedule with upstreams: id, name, depends_on."""
    return await rows(conn, "dependency_graph")


async def dependents_of(conn: Conn, schedule_id: int) -> list[Row]:
    """The live schedules (id, name) that depend on `schedule_id`."""
    return await rows(conn, "dependents_of", {"id": schedule_id})


async def new_dependent_runs(
    conn: Conn, run_ids: Sequence[int], schedule_ids: Sequence[int], *, default_timeout: int
) -> list[Row]:
    """Per new run of a schedule with upstreams, and per upstream: both timings."""
    return await rows(
        conn,
        "new_dependent_runs",
        {
            "run_ids": list(run_ids),
            "schedule_ids": list(schedule_ids),
            "default_timeout": default_timeout,
        },
    )


async def block_runs(
    conn: Conn, runs: Sequence[dict[str, object]], *, actor: str, now: datetime | None
) -> list[int]:
    """Hold `runs` ({id, due_at, waits_for, wait_until}) as blocked, with run.blocked each."""
    held = await rows(conn, "block_runs", {"runs": jsonb(list(runs)), "actor": actor, "now": now})
    return [int(r["id"]) for r in held]


async def settle_blocked(conn: Conn, *, limit: int, actor: str, now: datetime | None) -> Row:
    """Release the blocked runs whose upstreams all succeeded and skip those past their
    wait_until; returns released and skipped (run ids) and how many were examined."""
    return await one(conn, "settle_blocked", {"limit": limit, "actor": actor, "now": now})
