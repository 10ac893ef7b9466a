"""Schedule dependencies (ADR 0033): the graph's rules and an occurrence's period.

Pure (no I/O). A schedule's `depends_on` lists its upstreams; an edge points from a downstream
to an upstream. The graph stays acyclic: a new cycle must pass through the schedule whose edges
change (a graph without a cycle gains one only through a new edge), so `cycle_through` searches
from that schedule alone.

The period of a downstream occurrence due at D is (P, D], P the downstream's previous
occurrence (for a cron, the interval between consecutive occurrences, DST included; for an
interval, one step of the grid): D truncated to the downstream's grid, looking back, so a
daily 06:00 report waits for the night's runs up to 06:00, which are over when it is due. The
occurrence waits for every upstream occurrence due in its period. Without a previous
occurrence (a one-off, the first occurrence of an interval or after `starts_at`) the period
is the instant D alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import islice
from typing import Any, Final, TypeVar

from pgsched.app.domain.errors import InvalidDefinition
from pgsched.app.domain.occurrences import ScheduleSpec, next_after, occurrences

FIELD: Final = "depends_on"
# Upstream occurrences one downstream occurrence may wait for, per upstream: a minutely
# upstream under a daily downstream is 1440; more than this is a definition to rethink.
MAX_WAITS_PER_UPSTREAM: Final = 10_000
_TICK: Final = timedelta(microseconds=1)
# How far back a period's start is looked for: 2**22 minutes, about 8 years, past the longest
# gap a 5-field cron can have (29 February, skipped in 2100).
_LOOKBACK_DOUBLINGS: Final = 23

Ref = int | str  # an upstream as a client names it: an id, or a live schedule's name
K = TypeVar("K", int, str)  # a schedule in a graph: its id, or its name
Upstream = tuple[int, ScheduleSpec, datetime]  # an upstream's id, timing and creation instant


def unique_refs(refs: Iterable[Ref]) -> list[Ref]:
    """The references in their order, each once (a repeated upstream is one edge)."""
    seen: list[Ref] = []
    for ref in refs:
        if ref not in seen:
            seen.append(ref)
    return seen


def resolve(refs: Sequence[Ref], live: Sequence[Mapping[str, Any]]) -> list[int]:
    """The ids of `refs` among the `live` schedules (rows with id, name, kind); an int is an
    id, a str a name. InvalidDefinition names the first reference that is no live schedule, or
    a job definition (no occurrences, so no period to wait for)."""
    by_id = {int(r["id"]): r for r in live}
    by_name = {str(r["name"]): r for r in live}
    ids: list[int] = []
    for ref in unique_refs(refs):
        found = by_id.get(ref) if isinstance(ref, int) else by_name.get(ref)
        if found is None:
            what = f"schedule {ref}" if isinstance(ref, int) else repr(ref)
            raise InvalidDefinition(FIELD, f"{what} is no live schedule")
        if found["kind"] == "job":
            raise InvalidDefinition(
                FIELD, f"{found['name']!r} is a job definition: it has no occurrences to wait for"
            )
        if int(found["id"]) not in ids:
            ids.append(int(found["id"]))
    return ids


def cycle_through(
    start: K, upstreams: Sequence[K], graph: Mapping[K, Sequence[K]]
) -> list[K] | None:
    """The cycle `start` would close by depending on `upstreams`, as [start, ..., start];
    None when there is none. `graph` maps each schedule (by id, or by name before ids exist)
    to its upstreams (its own entry is ignored: `upstreams` replaces it)."""
    edges = {**graph, start: list(upstreams)}
    path: list[K] = [start]
    done: set[K] = set()

    def walk(node: K) -> bool:
        for upstream in edges.get(node, ()):
            if upstream == start:
                path.append(start)
                return True
            if upstream in done or upstream in path:
                continue
            path.append(upstream)
            if walk(upstream):
                return True
            path.pop()
            done.add(upstream)
        return False

    return path if walk(start) else None


def refuse_cycle(
    start: int,
    upstreams: Sequence[int],
    graph: Mapping[int, Sequence[int]],
    names: Mapping[int, str],
) -> None:
    """InvalidDefinition naming the cycle ("a -> b -> c -> a": a depends on b, ...), if any."""
    cycle = cycle_through(start, upstreams, graph)
    if cycle is not None:
        named = " -> ".join(names.get(node, f"schedule {node}") for node in cycle)
        raise InvalidDefinition(FIELD, f"would make a cycle: {named}")


def in_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The schedules of `graph` (names to upstream names) upstreams first, each after all of
    its upstreams (ties in `graph`'s order: a file's, so a plan reads as its file), for a writer
    that creates several at once (a file applied whole); InvalidDefinition names a cycle.
    Upstreams outside `graph` are taken as existing."""
    for name in sorted(graph):
        cycle = cycle_through(name, graph[name], graph)
        if cycle is not None:
            raise InvalidDefinition(FIELD, "would make a cycle: " + " -> ".join(cycle))
    ordered: list[str] = []
    placed: set[str] = set()
    while len(ordered) < len(graph):
        ready = [
            n
            for n in graph
            if n not in placed and all(u in placed or u not in graph for u in graph[n])
        ]
        ordered += ready
        placed.update(ready)
    return ordered


def previous_before(spec: ScheduleSpec, at: datetime) -> datetime | None:
    """The last occurrence strictly before `at`; None when there is none (a one-off, the
    first occurrence of an interval, before `starts_at`). The occurrence engine only walks
    forward, so this looks back over windows that double from a minute (cron resolution) up
    to about 8 years: a few occurrences listed per window, whatever the timing."""
    for doubling in range(_LOOKBACK_DOUBLINGS):
        window = timedelta(minutes=2**doubling)
        last = deque(occurrences(spec, at - window - _TICK, at - _TICK), maxlen=1)
        if last:
            return last[0]
    return None


def period(spec: ScheduleSpec, due_at: datetime) -> tuple[datetime | None, datetime]:
    """The period of the downstream occurrence due at `due_at`: (previous occurrence,
    due_at], the due time truncated to the downstream's own grid. None as the start: the
    instant alone (no previous occurrence)."""
    return previous_before(spec, due_at), due_at


def waits_for(
    spec: ScheduleSpec, due_at: datetime, upstreams: Sequence[Upstream]
) -> list[tuple[int, datetime]]:
    """The upstream occurrences (schedule id, due time) the occurrence at `due_at` waits for:
    each upstream's occurrences in the period, in the order of `upstreams`, leaving out those
    due before the upstream was created (no run was ever made for them). An upstream with none
    in the period adds nothing (an hourly downstream of a daily upstream waits once a day)."""
    start, end = period(spec, due_at)
    found: list[tuple[int, datetime]] = []
    for upstream_id, upstream, created_at in upstreams:
        if start is None:
            # The instant alone: the upstream's occurrence at exactly `end`, if it has one.
            nearest = next_after(upstream, end - _TICK)
            dues = [nearest] if nearest == end else []
        else:
            dues = list(islice(occurrences(upstream, start, end), MAX_WAITS_PER_UPSTREAM))
        found += [(upstream_id, t) for t in dues if t is not None and t >= created_at]
    return found
