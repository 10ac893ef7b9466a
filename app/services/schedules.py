"""Schedules: create, update, pause, resume, delete, trigger, backfill and preview.

Each operation is one transaction: it locks the live schedule, applies app.domain.schedule's
rules, writes through the store (the row and its event together) and, when it made runs, wakes
idle workers in the same transaction (the NOTIFY is delivered at commit). Expected failures are
app.domain.errors; `meta` is the caller's audit context (source IP, user agent, token prefix),
kept in the event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row
from pgsched.app.domain import dependencies, schedule
from pgsched.app.domain.errors import (
    HasDependents,
    InvalidDefinition,
    InvalidRequest,
    NotFound,
    VersionMismatch,
)
from pgsched.app.domain.occurrences import jitter_offset, occurrences

Meta = Mapping[str, object] | None


async def live(conn: Conn, schedule_id: int, *, lock: bool = False) -> Row:
    """The live schedule `schedule_id` (locked for a change when `lock`), or NotFound."""
    row = await store.get_schedule(conn, schedule_id, lock=lock)
    if row is None:
        raise NotFound(f"schedule {schedule_id} does not exist")
    return row


async def upstream_ids(conn: Conn, refs: Sequence[dependencies.Ref]) -> list[int]:
    """The ids of the live schedules `refs` names (ids or names, ADR 0033); InvalidDefinition
    names an unknown one or a job definition. Takes the dependency graph's lock (held until the
    transaction ends), so an upstream cannot be deleted meanwhile."""
    await store.dependencies.lock_graph(conn)
    unique = dependencies.unique_refs(refs)
    live = await store.dependencies.upstream_candidates(
        conn,
        [r for r in unique if isinstance(r, int)],
        [r for r in unique if isinstance(r, str)],
    )
    return dependencies.resolve(unique, live)


async def refuse_cycle(conn: Conn, schedule_id: int, name: str, upstreams: Sequence[int]) -> None:
    """InvalidDefinition naming the cycle ("a -> b -> a") that schedule `schedule_id` (called
    `name`) would close by depending on `upstreams`, against the committed graph. Call within
    the transaction of `upstream_ids`, which holds the graph's lock."""
    edges = await store.dependencies.graph(conn)
    graph = {int(r["id"]): [int(u) for u in r["depends_on"]] for r in edges}
    names = {int(r["id"]): str(r["name"]) for r in edges} | {schedule_id: name}
    dependencies.refuse_cycle(schedule_id, upstreams, graph, names)


async def create(
    conn: Conn,
    fields: Mapping[str, Any],
    *,
    actor: str,
    now: datetime | None,
    meta: Meta = None,
    defaults: Mapping[str, Any] | None = None,
) -> Row:
    """Store a new schedule from client-settable `fields` (completed with the operator's
    `defaults`, then the built-in ones), checked, with its first due time from the database's
    now. `depends_on` may name upstreams by id or name; they are stored as ids. A new
    schedule closes no cycle: none depends on it yet."""
    complete = schedule.complete(fields, defaults)
    async with conn.transaction():
        if complete["depends_on"]:
            complete["depends_on"] = await upstream_ids(conn, complete["depends_on"])
        # One transaction, so created_at (the interval anchor) is the instant we planned with.
        at = await store.db_now(conn, now)
        spec = schedule.check(complete, created_at=at)
        complete["next_due_at"] = schedule.due_or_refuse(complete, spec, at)
        return await store.create_schedule(conn, complete, actor=actor, now=now, meta=meta)


async def update(
    conn: Conn,
    schedule_id: int,
    patch: Mapping[str, Any],
    *,
    if_match: set[int] | None,
    actor: str,
    now: datetime | None,
    meta: Meta = None,
) -> Row:
    """Apply a partial update (client-settable columns); `if_match` (versions, None =
    unconditional) guards it (VersionMismatch).

    A new timing (any of cron, interval_seconds, run_at) replaces the old one whole; one of
    another kind must clear the current one explicitly (schedule.check_timing_switch). A change of
    timing recomputes `next_due_at` from the database's now: occurrences under the old timing
    are not owed. Changing `enabled` pauses or resumes, as those operations do.
    """
    async with conn.transaction():
        row = await live(conn, schedule_id, lock=True)
        if if_match is not None and row["version"] not in if_match:
            raise VersionMismatch(row["version"])
        fields = {k: row[k] for k in schedule.COLUMNS}
        # A null for a timing field that is already null changes nothing: dropped, so that
        # `{"interval_seconds": null}` on a cron schedule is not read as a switch of kind.
        timing = {
            k: v for k, v in patch.items() if k in schedule.TIMING and (v, row[k]) != (None, None)
        }
        if timing:
            schedule.check_timing_switch(row, timing)
            given = {k: timing.get(k) for k in schedule.TIMING}
            fields |= schedule.timing(given)
            if schedule.is_job(fields) and not schedule.is_job(row):
                # Clearing a schedule's timing is far likelier a mistake than a wish to stop
                # it for good (pause, or delete, says that); a job definition is created so.
                cleared = next(k for k in schedule.TIMING if row[k] is not None)
                others = " or ".join(k for k in schedule.TIMING if k != cleared)
                raise InvalidDefinition(
                    cleared,
                    f"a timed schedule cannot become a job definition; set {others} with it",
                )
        fields |= {k: v for k, v in patch.items() if k not in schedule.TIMING}
        if "health_policy" in patch:  # a partial policy changes only the thresholds it names
            fields["health_policy"] = schedule.health_policy(
                patch["health_policy"], row["health_policy"]
            )
        if patch.get("depends_on"):
            fields["depends_on"] = await upstream_ids(conn, patch["depends_on"])
        spec = schedule.check(fields, created_at=row["created_at"])
        changed = schedule.changes(row, fields)
        if not changed:
            return row  # nothing to record; the version stays
        if changed.get("depends_on"):
            await refuse_cycle(conn, schedule_id, fields["name"], changed["depends_on"])
        schedule.check_builtin_change(row, changed)
        at = await store.db_now(conn, now)
        if schedule.TIMING_COLUMNS & changed.keys():
            changed["next_due_at"] = schedule.due_or_refuse(fields, spec, at)
        if "enabled" in changed:
            changed["paused_at"] = None if changed["enabled"] else at
        updated = await store.update_schedule(
            conn,
            schedule_id,
            changed,
            event_type="schedule.updated",
            actor=actor,
            now=now,
            expected_version=row["version"],
            meta=meta,
        )
        # New thresholds judge the same runs now, not at the next run's end (ADR 0032).
        if (
            updated is not None
            and "health_policy" in changed
            and await store.health.evaluate(conn, [schedule_id], now=now)
        ):
            updated = await live(conn, schedule_id)
    if updated is None:  # the row is locked above: only a bug gets here
        raise RuntimeError(f"update of schedule {schedule_id} matched no row")
    return updated


async def pause(
    conn: Conn, schedule_id: int, *, actor: str, now: datetime | None, meta: Meta = None
) -> Row:
    """Stop materialising; occurrences while paused follow the missed policy on resume."""
    return await _set_enabled(conn, schedule_id, enabled=False, actor=actor, now=now, meta=meta)


async def resume(
    conn: Conn, schedule_id: int, *, actor: str, now: datetime | None, meta: Meta = None
) -> Row:
    """Materialise again. `next_due_at` stayed where the pause left it, so the ticker applies
    the schedule's missed policy to everything that fell due while it was paused."""
    return await _set_enabled(conn, schedule_id, enabled=True, actor=actor, now=now, meta=meta)


async def _set_enabled(
    conn: Conn, schedule_id: int, *, enabled: bool, actor: str, now: datetime | None, meta: Meta
) -> Row:
    """Pause or resume; a no-op (no event) when the schedule is already in that state."""
    async with conn.transaction():
        row = await live(conn, schedule_id, lock=True)
        if row["enabled"] == enabled:
            return row
        paused_at = None if enabled else await store.db_now(conn, now)
        changed = await store.update_schedule(
            conn,
            schedule_id,
            {"enabled": enabled, "paused_at": paused_at},
            event_type="schedule.resumed" if enabled else "schedule.paused",
            actor=actor,
            now=now,
            meta=meta,
        )
    return changed or row


async def delete(
    conn: Conn,
    schedule_id: int,
    *,
    actor: str,
    now: datetime | None,
    meta: Meta = None,
    if_match: set[int] | None = None,
) -> Row:
    """Soft delete: the row and its history stay; the name becomes free. `if_match` (versions,
    None = unconditional) guards it as it guards an update (VersionMismatch)."""
    async with conn.transaction():
        row = await live(conn, schedule_id, lock=True)
        if if_match is not None and row["version"] not in if_match:
            raise VersionMismatch(row["version"])
        at = await store.db_now(conn, now)
        schedule.check_builtin_change(row, {"deleted_at": at})
        # Refused rather than the edges dropped: the dependents' occurrences would run without
        # what they were declared to need (ADR 0033). The lock keeps a new edge from appearing.
        await store.dependencies.lock_graph(conn)
        dependents = await store.dependencies.dependents_of(conn, schedule_id)
        if dependents:
            raise HasDependents(row, [str(d["name"]) for d in dependents])
        changed = await store.update_schedule(
            conn,
            schedule_id,
            {"deleted_at": at, "enabled": False},
            event_type="schedule.deleted",
            actor=actor,
            now=now,
            meta=meta,
        )
    if changed is None:
        raise NotFound(f"schedule {schedule_id} does not exist")
    return changed


async def trigger(
    conn: Conn,
    schedule_id: int,
    *,
    actor: str,
    now: datetime | None,
    idempotency_key: str | None = None,
    trace_context: Mapping[str, str] | None = None,
    meta: Meta = None,
) -> tuple[Row, bool]:
    """Run a schedule now, as an ad-hoc run. Returns (run, created).

    With an idempotency key, a repeated request returns the run the first one created
    (created=False). Triggering ignores pause and overlap: it is an operator's explicit act.
    """
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest("Idempotency-Key", "must be 1 to 255 characters")
    async with conn.transaction():
        await live(conn, schedule_id, lock=True)
        if idempotency_key is not None and not await store.claim_trigger_key(
            conn, schedule_id, idempotency_key, now=now
        ):
            earlier = await store.trigger_key_run(conn, schedule_id, idempotency_key)
            if earlier is None:  # an enqueue took the key: its run carries it (ADR 0027)
                enqueued = await store.enqueue.runs_by_key(conn, schedule_id, [idempotency_key])
                earlier = enqueued[0] if enqueued else None
            if earlier is None:  # the key's run was in a retired month
                raise InvalidRequest("Idempotency-Key", "was used for a run no longer kept")
            return earlier, False
        at = await store.db_now(conn, now)
        (run,) = await store.insert_runs(
            conn,
            [(schedule_id, at, at)],
            origin="trigger",
            adhoc=True,
            idempotency_key=idempotency_key,
            trace_context=trace_context,
            actor=actor,
            now=now,
            meta=meta,
        )
        if idempotency_key is not None:
            await store.set_trigger_key_run(conn, schedule_id, idempotency_key, run)
        await store.wake_workers(conn)
    return run, True


@dataclass(frozen=True, slots=True)
class Backfill:
    requested: int
    created: list[int]
    # Why nothing was created (None when something was): an answer of 0 says why.
    reason: str | None = None


async def _refuse_before_history(conn: Conn, first_due: datetime) -> None:
    """A backfill that reaches before the oldest month of runs the database holds cannot make
    those runs; say which month that is and why, naming `from`. A database created this month
    never had older months: saying they were retired would send the operator after a retention
    setting that did nothing."""
    history = await store.maintenance.run_history(conn)
    first = history["first_month"]
    if first is None or first_due >= first:
        return
    first, first_due = first.astimezone(UTC), first_due.astimezone(UTC)  # months are UTC's
    month = f"{first:%Y-%m}"
    if history["retired"]:
        why = f"older months of runs were retired (the run retention); {month} is the oldest kept"
    else:
        why = f"the database holds runs from {month} on, when its history starts"
    raise InvalidRequest(
        "from",
        f"reaches {first_due:%Y-%m}, before the oldest month of runs in this database: {why}; "
        f"backfill from {first.date().isoformat()} on",
    )


async def backfill(
    conn: Conn,
    schedule_id: int,
    start: datetime,
    end: datetime,
    *,
    actor: str,
    now: datetime | None,
    cap: int = schedule.MAX_BACKFILL,
    meta: Meta = None,
) -> Backfill:
    """Materialise the occurrences in [start, end); idempotent, capped, recorded as an event.

    Occurrences that already have a run are left alone. Backfill ignores the overlap and
    missed policies (the operator asked for these occurrences) but not the partitions: a
    month before the oldest month of runs kept cannot be backfilled (InvalidRequest naming
    `from`). Nothing created comes with the reason.
    """
    for field, instant in (("from", start), ("to", end)):
        # Every caller (API, CLI, console): the occurrence search overflows near year 1.
        if not schedule.EARLIEST <= instant < schedule.LATEST:
            raise InvalidRequest(field, f"must be {schedule.RANGE_TEXT}")
    if end <= start:
        raise InvalidRequest("to", "must be later than from")
    async with conn.transaction():
        row = await live(conn, schedule_id, lock=True)
        if schedule.is_job(row):
            raise InvalidRequest("from", "a job definition has no occurrences to backfill")
        if end > await store.db_now(conn, now):
            raise InvalidRequest("to", "must not be in the future; the ticker handles that")
        tick = timedelta(microseconds=1)
        spec = schedule.spec_of(row)
        due = list(islice(occurrences(spec, start - tick, end - tick), cap + 1))
        if len(due) > cap:
            raise InvalidRequest("to", f"the range holds more than {cap} occurrences")
        if due:
            await _refuse_before_history(conn, due[0])
        key, jitter = str(schedule_id), row["jitter_seconds"]
        created = await store.insert_runs(
            conn,
            [(schedule_id, t, t + jitter_offset(key, t, jitter)) for t in due],
            origin="backfill",
            actor=actor,
            now=now,
            meta=meta,
        )
        await store.record_schedule_event(
            conn,
            schedule_id,
            "schedule.backfilled",
            actor=actor,
            now=now,
            meta={
                **(meta or {}),
                "from": start,
                "to": end,
                "requested": len(due),
                "created": len(created),
            },
        )
        if created:
            await store.wake_workers(conn)
    if not due:
        reason: str | None = schedule.backfill_empty_reason(row, start, end)
    elif not created:
        reason = "every occurrence in the range already has a run"
    else:
        reason = None
    return Backfill(len(due), [r["id"] for r in created], reason)


async def preview(
    conn: Conn, schedule_id: int, count: int, *, now: datetime | None
) -> tuple[datetime, list[datetime]]:
    """The next `count` due times after the database's now (or `now`): (after, due times)."""
    row = await live(conn, schedule_id)
    after = await store.db_now(conn, now)
    return after, schedule.preview(row, after, count)


async def install_builtin(conn: Conn, job: Mapping[str, Any], *, now: datetime | None) -> Row:
    """Install (or bring up to date) pgsched's own schedule with `job` (its job_type, payload
    and timeout); idempotent. Checked like any schedule (app.domain.schedule.builtin_definition).

    Through pgsched.install_builtin_maintenance_v1 (as the owner), so the worker role may call
    it: a ticker needs no right to insert schedules (ADR 0021). An existing built-in schedule
    gets back its job and whatever could stop it (queue, kind, starts_at, ends_at, timezone,
    jitter; a cron that is not some minute of every hour); an operator's pause, minute, priority
    and retries stay (app.domain.schedule.check_builtin_change).
    """
    async with conn.transaction():
        fields = schedule.builtin_definition(job, await store.db_now(conn, now))
        return await store.maintenance.install_builtin_maintenance(conn, fields, now=now)


async def define_job(
    conn: Conn,
    name: str,
    job_type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, object] | None = None,
    actor: str,
    now: datetime | None = None,
    meta: Meta = None,
) -> Row:
    """Create the job definition `name` (kind `job`, ADR 0027), or bring the live one of that
    name up to `job_type`, `payload` and `defaults` (queue, priority, max_attempts, retry_*,
    timeout_seconds, ...); a schedule with timing keeps it. Idempotent: an unchanged definition
    records nothing. InvalidDefinition names a bad field."""
    fields: dict[str, Any] = {"job_type": job_type, "payload": payload or {}, **(defaults or {})}
    unknown = set(fields) - schedule.COLUMNS
    if unknown or set(fields) & set(schedule.TIMING) or "kind" in fields:
        raise InvalidDefinition(
            sorted(unknown or fields.keys() & {*schedule.TIMING, "kind"})[0],
            "is not a field of a job definition",
        )
    for attempt in (1, 2):
        try:
            async with conn.transaction():
                existing = await store.schedules.live_schedule_id(conn, name)
                if existing is None:
                    created = fields | {"name": name} | schedule.timing({})  # no timing: a job
                    return await create(conn, created, actor=actor, now=now, meta=meta)
                return await update(
                    conn, existing, fields, if_match=None, actor=actor, now=now, meta=meta
                )
        except store.NameTaken:
            # Another process defined it at the same moment (a worker starting while an
            # application enqueues its first run): bring that definition up to these fields.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
