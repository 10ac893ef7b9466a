"""Schedule health: its evaluation (the transitions and the circuit breaker).

The statement is in app/db/queries/health.sql; the rule it applies is ADR 0032's. Callers own
the transaction; `now` is None for the database's now() (ADR 0003). The counts per state
that /health and the metrics read are in app/db/queries/reads.sql and telemetry.sql.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row, one, rows

# Who records what a health evaluation decides (the events' actor).
ACTOR = "system"


async def evaluate(
    conn: Conn, schedule_ids: Iterable[int] | None, *, now: datetime | None, actor: str = ACTOR
) -> list[Row]:
    """Judge the live schedules `schedule_ids` (None: all of them in one statement; `sweep`
    does that in chunks) at `now` and record every
    change of health (schedule.health_changed) and every trip of the circuit breaker
    (schedule.paused); per changed schedule: id, name, old_health, health, old_reason,
    health_reason, paused, failures. A schedule another transaction holds is left for the
    next evaluation."""
    ids = None if schedule_ids is None else sorted(set(schedule_ids))
    if ids == []:
        return []
    return await rows(conn, "evaluate_health", {"ids": ids, "now": now, "actor": actor})


# Schedules judged per statement by the sweep. The statement's planned cost grows with its
# schedules; past PostgreSQL's jit_above_cost (100,000 by default) JIT compilation costs more
# than the whole evaluation (measured: 5,000 schedules in one statement took 3.0 s, 2.7 s of it
# JIT; in chunks of this size, no JIT and no long statement holding anything).
SWEEP_CHUNK = 200


async def lead_sweep(conn: Conn) -> bool:
    """Whether this connection's session leads the periodic sweep (it takes the lead when no
    other session holds it, and keeps it while the session lives): the processes that each run
    a sweep loop sweep once between them, not once each."""
    return bool((await one(conn, "lead_health_sweep"))["lead"])


async def sweep(conn: Conn, *, now: datetime | None, actor: str = ACTOR) -> list[Row]:
    """`evaluate` every live schedule, a chunk at a time (each chunk its own statement, so on
    an autocommit connection its own transaction); what changed, as `evaluate` returns it."""
    ids = [r["id"] for r in await rows(conn, "live_schedule_ids")]
    changed: list[Row] = []
    for start in range(0, len(ids), SWEEP_CHUNK):
        changed += await evaluate(conn, ids[start : start + SWEEP_CHUNK], now=now, actor=actor)
    return changed


async def evaluate_after(conn: Conn, ended: Iterable[Row], *, now: datetime | None) -> None:
    """Re-judge the schedules whose runs just ended, where an end can change their health: a
    dead run always; a success only on a schedule that is not healthy (the common case, a
    success on a healthy schedule, costs nothing). `ended` rows carry schedule_id, state and,
    where known, schedule_health. On an autocommit connection this is a transaction of its
    own, right after the completions' one: a process that dies in between leaves the change
    to the periodic sweep (ADR 0032)."""
    ids = {
        r["schedule_id"]
        for r in ended
        if r["state"] == "dead"
        or (r["state"] == "succeeded" and r.get("schedule_health", "healthy") != "healthy")
    }
    if ids:
        await evaluate(conn, ids, now=now)
