"""What applying a schedules file changes, and making those changes in one transaction.

The plan compares each declared schedule, completed as a create would complete it (the
operator's defaults, then the built-in ones) and normalised by app.domain.schedule.check, with
the live schedule of its name: absent -> create; differing columns -> update (the diff, old and
new); else unchanged. With `prune`, the live schedules of the file's manager that it no longer
names are deleted: never a schedule made outside apply (API, CLI or console) or declared by
another manager; the file must name its manager for that. A live schedule of a declared name
made outside apply is
taken over only with `adopt`. `enabled` is compared only when the file gives it, so a pause
(the circuit breaker's or an operator's) outlives every apply (ADR 0031).

Every check runs while planning, before anything is written, and the writes go through
app.services.schedules inside the plan's transaction (their own transactions nest as
savepoints): a file with one bad schedule changes nothing. Each change is one event, by actor
`apply`, with the file's sha256 and manager in its meta (ADR 0031).

Dependencies (ADR 0033) are compared and written by name, as a file names them: a file's
schedules may depend on each other and on live ones. The graph the file would leave (the live
edges, the file's replacing those of its schedules) is checked for a cycle while planning, and
the creates and updates are made upstreams first, so every upstream exists when its downstream
is written and no intermediate state closes a cycle; the deletes come last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.declare.document import DeclarationError, Document
from pgsched.app.domain import dependencies, schedule
from pgsched.app.domain.errors import InvalidDefinition, OperationError
from pgsched.app.domain.jobs import InvalidPayload
from pgsched.app.domain.occurrences import InvalidSchedule
from pgsched.app.services import schedules

ACTOR: Final = "apply"
Action = Literal["create", "update", "unchanged", "delete"]
_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class Change:
    action: Action
    name: str
    # For an update: each changed column, (stored, declared).
    diff: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    schedule_id: int | None = None
    # What is written: a create's fields, an update's whole declared definition.
    fields: dict[str, Any] = field(default_factory=dict, repr=False)


async def apply(
    conn: Conn,
    document: Document,
    *,
    defaults: Mapping[str, Any] | None = None,
    prune: bool = False,
    adopt: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[Change]:
    """Plan `document` against the database and, unless `dry_run`, make the plan's changes,
    all in one transaction. DeclarationError (one line) if any schedule cannot be applied.
    `prune` needs a file that names its manager; `adopt` lets the file take over live
    schedules of its names that were made over the API (else they are refused)."""
    if prune and not document.manager_given:
        raise DeclarationError(
            "--prune needs the file to name its `manager:` (its file name is no identity: "
            "two files called alike would prune each other's schedules)"
        )
    meta = {"file_sha256": document.sha256, "manager": document.manager}
    async with conn.transaction():
        changes = await _plan(conn, document, defaults, prune=prune, adopt=adopt, now=now)
        if not dry_run:
            for change in changes:
                try:
                    await _make(conn, change, defaults, meta=meta, now=now)
                except (OperationError, InvalidPayload, InvalidSchedule, store.NameTaken) as exc:
                    raise DeclarationError(f"schedule {change.name!r}: {_reason(exc)}") from None
    return changes


async def _plan(
    conn: Conn,
    document: Document,
    defaults: Mapping[str, Any] | None,
    *,
    prune: bool,
    adopt: bool,
    now: datetime | None,
) -> list[Change]:
    at = await store.db_now(conn, now)
    wanted, graph, live_names = await _dependencies(conn, document)
    order = {name: i for i, name in enumerate(dependencies.in_order(graph))}
    changes: list[Change] = []
    for fields in sorted(wanted, key=lambda f: order.get(f["name"], 0)):
        name = fields["name"]
        existing = await store.schedules.live_schedule_id(conn, name)
        row = None if existing is None else await store.get_schedule(conn, existing, lock=True)
        if row is not None:  # compared by name, as the file gives them
            row = {**row, "depends_on": [live_names[i] for i in row["depends_on"] or []]}
        try:
            changes.append(_compare(row, fields, defaults, document.manager, at, adopt=adopt))
        except (OperationError, InvalidPayload, InvalidSchedule) as exc:
            raise DeclarationError(f"schedule {name!r}: {_reason(exc)}") from None
    if prune:
        declared = {f["name"] for f in document.schedules}
        managed = await store.schedules.managed_schedules(conn, document.manager)
        doomed = [r for r in managed if r["name"] not in declared]
        gone = {r["name"] for r in doomed}
        # Downstreams first: deleting an upstream is refused while a dependent lives (ADR 0033).
        for row in sorted(doomed, key=lambda r: -order.get(r["name"], -1)):
            kept = [n for n, ups in graph.items() if row["name"] in ups and n not in gone]
            if kept:
                raise DeclarationError(
                    f"schedule {row['name']!r}: cannot be pruned while "
                    f"{', '.join(map(repr, sorted(kept)))} depend(s) on it: drop those edges first"
                )
            try:
                schedule.check_builtin_change(row, {"deleted_at": at})
            except OperationError as exc:
                raise DeclarationError(f"schedule {row['name']!r}: {exc}") from None
            changes.append(Change("delete", row["name"], schedule_id=row["id"]))
    return changes


async def _dependencies(
    conn: Conn, document: Document
) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[int, str]]:
    """The file's schedules with `depends_on` as upstream names, each checked (a live schedule
    or one of the file's, not a job definition); the graph (names to upstream names) the file
    would leave, its schedules first in its order; and the names of the live upstreams by id.
    DeclarationError names a cycle the file would make, among its schedules or with live ones.
    Takes the graph's lock, so the graph checked is the graph written to."""
    await store.dependencies.lock_graph(conn)
    edges = await store.dependencies.graph(conn)
    file_names = {f["name"] for f in document.schedules}
    refs = [r for f in document.schedules for r in f.get("depends_on") or []]
    upstream_ids = {int(u) for e in edges for u in e["depends_on"]}
    upstream_ids |= {r for r in refs if isinstance(r, int)}
    candidates = await store.dependencies.upstream_candidates(
        conn, sorted(upstream_ids), sorted({r for r in refs if isinstance(r, str)} - file_names)
    )
    live_names = {int(c["id"]): str(c["name"]) for c in candidates}
    # The file's schedules stand in for live ones of the same name, with ids no row has.
    own = [
        {"id": -1 - i, "name": f["name"], "kind": f["kind"]}
        for i, f in enumerate(document.schedules)
    ]
    pool = [c for c in candidates if c["name"] not in file_names] + own
    by_id = {int(c["id"]): str(c["name"]) for c in pool}
    declared: list[dict[str, Any]] = []
    for fields in document.schedules:
        try:
            ids = dependencies.resolve(fields.get("depends_on") or [], pool)
        except InvalidDefinition as exc:
            raise DeclarationError(f"schedule {fields['name']!r}: {_reason(exc)}") from None
        declared.append({**fields, "depends_on": [by_id[i] for i in ids]})
    # The graph the file leaves: its schedules' edges (first, in its order), then the others'.
    graph: dict[str, list[str]] = {f["name"]: f["depends_on"] for f in declared}
    for e in edges:
        graph.setdefault(str(e["name"]), [live_names[int(u)] for u in e["depends_on"]])
    for fields in declared:
        cycle = dependencies.cycle_through(fields["name"], fields["depends_on"], graph)
        if cycle is not None:
            raise DeclarationError(
                f"schedule {fields['name']!r}: depends_on: would make a cycle: "
                + " -> ".join(cycle)
            )
    return declared, graph, live_names


def _compare(
    row: Row | None,
    fields: Mapping[str, Any],
    defaults: Mapping[str, Any] | None,
    manager: str,
    at: datetime,
    *,
    adopt: bool,
) -> Change:
    """One declared schedule against its live row (None: there is none), checked."""
    desired = schedule.complete(fields, defaults)
    if row is None:
        spec = schedule.check(desired, created_at=at)
        schedule.due_or_refuse(desired, spec, at)
        return Change("create", fields["name"], fields=dict(fields))
    if row["managed_by"] not in (None, manager):
        raise DeclarationError(
            f"schedule {row['name']!r} is declared by manager {row['managed_by']!r}, not "
            f"{manager!r}: one schedule, one file (change it there, or delete it there first)"
        )
    if row["managed_by"] is None and not adopt:
        raise DeclarationError(
            f"schedule {row['name']!r} was made outside apply (API, CLI or console): manager "
            f"{manager!r} would adopt it; pass --adopt to let this file take it over (or name it "
            "otherwise in the file)"
        )
    spec = schedule.check(desired, created_at=row["created_at"])
    # `enabled` only when the file gives it: otherwise a pause (the circuit breaker's or an
    # operator's) is not the file's business, and applying never resumes it (ADR 0031).
    wanted = {k: desired[k] for k in schedule.COLUMNS if k != "enabled" or k in fields}
    diff = schedule.changes(row, wanted)
    if not diff:
        return Change("unchanged", row["name"], schedule_id=row["id"])
    schedule.check_builtin_change(row, diff)
    if schedule.TIMING_COLUMNS & diff.keys():
        schedule.due_or_refuse(desired, spec, at)
    return Change(
        "update",
        row["name"],
        diff={k: (row[k], v) for k, v in sorted(diff.items())},
        schedule_id=row["id"],
        fields=wanted,
    )


async def _make(
    conn: Conn,
    change: Change,
    defaults: Mapping[str, Any] | None,
    *,
    meta: Mapping[str, object],
    now: datetime | None,
) -> None:
    if change.action == "create":
        await schedules.create(
            conn, change.fields, actor=ACTOR, now=now, meta=meta, defaults=defaults
        )
    elif change.action == "update" and change.schedule_id is not None:
        await schedules.update(
            conn,
            change.schedule_id,
            change.fields,
            if_match=None,
            actor=ACTOR,
            now=now,
            meta=meta,
        )
    elif change.action == "delete" and change.schedule_id is not None:
        await schedules.delete(conn, change.schedule_id, actor=ACTOR, now=now, meta=meta)


def _reason(exc: Exception) -> str:
    field_ = getattr(exc, "field", None)
    message = getattr(exc, "message", None) or str(exc)
    return f"{field_}: {message}" if field_ and not str(message).startswith(field_) else message


async def declared(conn: Conn, manager: str | None) -> list[Row]:
    """The live schedules `pgsched export` writes: those `manager` declares, or, without one,
    every live schedule but the built-in one (pgsched installs that itself), by id; their
    `depends_on` as upstream names."""
    found: list[Row] = []
    after = 0
    while True:
        page = await reads.page_schedules(conn, after_id=after, limit=_PAGE, managed_by=manager)
        found += [r for r in page if not schedule.is_builtin(r)]
        if len(page) < _PAGE:
            break
        after = page[-1]["id"]
    # A file names upstreams by name (ids differ between databases; apply compares by name).
    ids = sorted({int(u) for r in found for u in r["depends_on"] or []})
    names = {
        int(c["id"]): str(c["name"])
        for c in await store.dependencies.upstream_candidates(conn, ids, [])
    }
    return [
        {**r, "depends_on": [names[int(u)] for u in r["depends_on"]]} if r["depends_on"] else r
        for r in found
    ]


def describe(changes: list[Change], document: Document, *, dry_run: bool) -> list[str]:
    """The plan as lines for a person: one per schedule, an update's changed fields under it,
    and a summary."""
    lines: list[str] = []
    for change in changes:
        lines.append(f"{change.action:<10} {change.name}")
        lines += [
            f"    {k}: {_shown(old)} -> {_shown(new)}" for k, (old, new) in change.diff.items()
        ]
    counts = {a: sum(c.action == a for c in changes) for a in ("create", "update", "delete")}
    unchanged = sum(c.action == "unchanged" for c in changes)
    if dry_run:
        lines.append(
            f"dry run of manager {document.manager!r}, nothing changed: {counts['create']} to "
            f"create, {counts['update']} to update, {counts['delete']} to delete, "
            f"{unchanged} unchanged"
        )
    else:
        lines.append(
            f"applied manager {document.manager!r} (sha256 {document.sha256[:12]}): "
            f"{counts['create']} created, {counts['update']} updated, {counts['delete']} "
            f"deleted, {unchanged} unchanged"
        )
    return lines


def _shown(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value, sort_keys=True, default=str)
