"""The ticker: every due occurrence of a schedule becomes exactly one run.

One tick, in short transactions of at most `batch` schedules: read the database clock, lock the
schedules due by now + look-ahead (SKIP LOCKED, so tickers share the work), plan each one with the
pure `plan()` below, insert the runs (ON CONFLICT DO NOTHING on the occurrence key), record the
occurrences that will not run, advance the schedules, and NOTIFY once. Killing a ticker at any
point rolls its transaction back; the next tick redoes the work, and the unique key absorbs
anything done twice.

Missed occurrences (the ticker or the database was down, or the schedule was paused) are those
due before now - grace. Per schedule:
- `skip`: none of them runs; each is recorded (`schedule.occurrence_missed`, reason "skip");
- `latest` (default): the most recent one runs (origin "catchup"), the older ones are recorded
  (reason "superseded");
- `all`: the most recent `missed_cap` run (origin "catchup"), older ones are recorded ("over_cap").

Dependencies (ADR 0033): a new run of a schedule with upstreams is held `blocked` in the same
transaction, with the upstream occurrences of its period it waits for (none: it stays
waiting). At the end of each tick the blocked runs are settled: released to `waiting` once
every one of those upstream runs succeeded, skipped once their wait times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.domain import dependencies
from pgsched.app.domain.occurrences import jitter_offset, next_after, occurrences
from pgsched.app.domain.schedule import DEFAULTS, spec_of
from pgsched.otel.runs import trace_context_json

# Occurrences enumerated per schedule per tick. A schedule further behind than this continues at
# the next tick, so one tick's work stays bounded however long the ticker was down.
MAX_OCCURRENCES_PER_TICK = 10_000
DEFAULT_LOOKAHEAD = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Planned:
    """One schedule's share of a tick."""

    runs: list[tuple[datetime, datetime, str]]  # (due_at, available_at, origin)
    missed: list[tuple[datetime, str]]  # (due_at, reason)
    next_due_at: datetime | None


def plan(row: Mapping[str, Any], now: datetime, horizon: datetime) -> Planned:
    """Decide, without I/O, what one due schedule turns into at `now` (pure; tested directly)."""
    spec = spec_of(row)
    first: datetime = row["next_due_at"]
    due = [first, *islice(occurrences(spec, first, horizon), MAX_OCCURRENCES_PER_TICK)]
    truncated = len(due) > MAX_OCCURRENCES_PER_TICK
    due = due[:MAX_OCCURRENCES_PER_TICK]
    late_before = now - timedelta(seconds=row["grace_seconds"])
    late = [t for t in due if t < late_before]
    on_time = [t for t in due if t >= late_before]

    if truncated and late:
        # All enumerated occurrences are late (the chunk never reached now). Keep the last few
        # for the next tick, so `latest`/`all` still see the most recent ones there.
        keep = 1 if row["missed_policy"] != "all" else min(row["missed_cap"], len(late))
        carried = late[-keep:]
        reason = "skip" if row["missed_policy"] == "skip" else "superseded"
        return Planned([], [(t, reason) for t in late[:-keep]], carried[0])

    policy = row["missed_policy"]
    if policy == "skip":
        run_late: list[datetime] = []
        missed = [(t, "skip") for t in late]
    elif policy == "latest":
        run_late = late[-1:]
        missed = [(t, "superseded") for t in late[:-1]]
    else:
        cap = row["missed_cap"]
        run_late = late[-cap:]
        missed = [(t, "over_cap") for t in late[:-cap]] if len(late) > cap else []

    key, jitter = str(row["id"]), row["jitter_seconds"]
    runs = [(t, t + jitter_offset(key, t, jitter), "catchup") for t in run_late]
    runs += [(t, t + jitter_offset(key, t, jitter), "schedule") for t in on_time]
    return Planned(runs, missed, next_after(spec, due[-1]))


@dataclass(slots=True)
class TickResult:
    schedules: int = 0
    created: int = 0
    duplicates: int = 0
    missed: int = 0
    overlapped: int = 0
    batches: int = 0
    run_ids: list[int] = field(default_factory=list)
    blocked: int = 0  # new runs held for their upstreams
    released: int = 0  # blocked runs whose upstreams all succeeded
    skipped: int = 0  # blocked runs whose wait timed out


async def tick(
    conn: Conn,
    *,
    now: datetime | None,
    actor: str = "ticker",
    batch: int = 5000,
    lookahead: timedelta = DEFAULT_LOOKAHEAD,
) -> TickResult:
    """Materialise everything due by the database clock (or `now`), batch by batch."""
    result = TickResult()
    while True:
        async with conn.transaction():
            at = await store.db_now(conn, now)
            groups = await store.ticker.lock_due_groups(conn, horizon=at + lookahead, limit=batch)
            if not groups:
                break
            locked = await _materialise(
                conn, groups=groups, now=at, horizon=at + lookahead, actor=actor, result=result
            )
        result.batches += 1
        if locked < batch:
            break
    await settle(conn, now=now, actor=actor, limit=batch, result=result)
    return result


async def settle(
    conn: Conn, *, now: datetime | None, actor: str, limit: int, result: TickResult
) -> None:
    """Release the blocked runs whose upstreams all succeeded, skip those whose wait timed out
    (ADR 0033); one transaction, at most `limit` runs (the rest at the next tick)."""
    async with conn.transaction():
        settled = await store.dependencies.settle_blocked(conn, limit=limit, actor=actor, now=now)
        if settled["released"]:
            await store.wake_workers(conn)
    result.released += len(settled["released"])
    result.skipped += len(settled["skipped"])


async def tick_together(
    conns: Sequence[Conn],
    *,
    now: datetime | None,
    actor: str = "ticker",
    batch: int = 5000,
    lookahead: timedelta = DEFAULT_LOOKAHEAD,
) -> TickResult:
    """`tick` on each connection at once; they share the due schedules through SKIP LOCKED.

    A boundary where many schedules fall due is bound by the server's work per schedule, which
    one connection does on one backend (one core); several connections spread it (ADR 0011).
    """
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(tick(conn, now=now, actor=actor, batch=batch, lookahead=lookahead))
            for conn in conns
        ]
    total = TickResult()
    for task in tasks:
        part = task.result()
        total.schedules += part.schedules
        total.created += part.created
        total.duplicates += part.duplicates
        total.missed += part.missed
        total.overlapped += part.overlapped
        total.batches += part.batches
        total.run_ids += part.run_ids
        total.blocked += part.blocked
        total.released += part.released
        total.skipped += part.skipped
    return total


async def _materialise(
    conn: Conn,
    *,
    groups: Sequence[Mapping[str, Any]],
    now: datetime,
    horizon: datetime,
    actor: str,
    result: TickResult,
) -> int:
    """Plan each group of alike schedules once and write the batch in one statement.

    Returns how many schedules the batch held.
    """
    ids: list[int] = []
    members: list[int] = []
    runs: list[tuple[int, datetime, datetime, str]] = []
    missed: list[tuple[int, datetime, str]] = []
    next_dues: list[datetime | None] = []
    dependents: list[int] = []
    for g, row in enumerate(groups, start=1):
        planned = plan(row, now, horizon)
        ids += row["ids"]
        dependents += row["dependent_ids"]
        members += [g] * len(row["ids"])
        runs += [(g, due_at, available, origin) for due_at, available, origin in planned.runs]
        missed += [(g, due_at, reason) for due_at, reason in planned.missed]
        next_dues.append(planned.next_due_at)

    run_groups, due_ats, available_ats, origins = _columns(runs, 4)
    missed_groups, missed_due_ats, missed_reasons = _columns(missed, 3)
    summary = await store.ticker.materialise_batch(
        conn,
        {
            "ids": ids,
            "groups": members,
            "next_due_ats": next_dues,
            "run_groups": run_groups,
            "due_ats": due_ats,
            "available_ats": available_ats,
            "origins": origins,
            "missed_groups": missed_groups,
            "missed_due_ats": missed_due_ats,
            "missed_reasons": missed_reasons,
            "trace_context": trace_context_json(),  # the tick's span (otel.runs)
            "actor": actor,
            "now": now,
        },
    )
    created: list[int] = summary["run_ids"]
    result.run_ids += created
    result.created += len(created)
    result.duplicates += summary["admitted"] - len(created)
    result.overlapped += summary["refused"]
    result.missed += summary["missed"]
    if created and dependents:
        result.blocked += await _hold(conn, created, dependents, now=now, actor=actor)
    if created:
        await store.wake_workers(conn)
    result.schedules += len(ids)
    return len(ids)


async def _hold(
    conn: Conn, run_ids: Sequence[int], schedule_ids: Sequence[int], *, now: datetime, actor: str
) -> int:
    """Block the new runs of schedules with upstreams: each waits for the upstream occurrences
    of its period (app.domain.dependencies) until its timeout after the later of the period's
    end and now (the timeout counts from when the last upstream occurrence was due). A run
    with nothing to wait for stays waiting: no event, no tick of latency. Returns how many
    were blocked."""
    found = await store.dependencies.new_dependent_runs(
        conn, run_ids, schedule_ids, default_timeout=DEFAULTS["dependency_timeout_seconds"]
    )
    per_run: dict[int, list[Mapping[str, Any]]] = {}
    for row in found:
        per_run.setdefault(row["id"], []).append(row)
    held: list[dict[str, object]] = []
    for pairs in per_run.values():
        run = pairs[0]
        upstreams = [
            (r["upstream_id"], spec_of(_upstream_row(r)), r["upstream_created_at"]) for r in pairs
        ]
        waits = dependencies.waits_for(spec_of(run), run["due_at"], upstreams)
        if not waits:
            continue
        held.append(
            {
                "id": run["id"],
                "due_at": run["due_at"],
                "waits_for": [
                    {"schedule_id": upstream, "due_at": due.astimezone(UTC)}
                    for upstream, due in waits
                ],
                # The period ends at the due time (a catch-up run: long before now).
                "wait_until": max(run["due_at"], now)
                + timedelta(seconds=run["dependency_timeout_seconds"]),
            }
        )
    if not held:
        return 0
    return len(await store.dependencies.block_runs(conn, held, actor=actor, now=now))


def _upstream_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream's timing columns, from new_dependent_runs' `upstream_*` ones."""
    prefix = "upstream_"
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists (empty lists when there are no rows), for unnest()."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width
