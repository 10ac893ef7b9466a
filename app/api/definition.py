"""A schedule's definition as the API receives it: to columns, checked, with its next due time.

Pure functions (no I/O, `now` is an argument). The checks are the domain's own: the occurrence
function's `validate` for timing (cron grammar, time zone, window) and the job types'
`validate_payload`; both name the offending field, which the API returns in a 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from pgsched.app import schedules
from pgsched.app.api.problems import ApiError
from pgsched.app.api.schemas import ScheduleCreate, ScheduleUpdate
from pgsched.app.domain.occurrences import ScheduleSpec, next_after, validate
from pgsched.workers.jobs import validate_payload

TIMING: Final = ("cron", "interval_seconds", "run_at")
KIND_OF: Final = {"cron": "cron", "interval_seconds": "interval", "run_at": "once"}
# Columns whose change moves the next occurrence.
TIMING_COLUMNS: Final = frozenset(
    {"kind", "cron", "interval_seconds", "run_at", "timezone", "starts_at", "ends_at"}
)
# Columns a client may set (the table's other columns are the scheduler's own).
COLUMNS: Final = frozenset(schedules.DEFAULTS) - {"next_due_at"} | {"name", "job_type", "kind"}
_TICK: Final = timedelta(microseconds=1)


def _no_nul(node: object, path: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it by name instead of failing later."""
    if isinstance(node, str):
        if "\x00" in node:
            raise ApiError(422, "must not contain NUL characters", field=path, source="body")
    elif isinstance(node, Mapping):
        for key, value in node.items():
            _no_nul(key, path)
            _no_nul(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _no_nul(value, f"{path}[{i}]")


def _timing(given: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly one of cron/interval_seconds/run_at has a value: it decides the kind."""
    chosen = [k for k in TIMING if given.get(k) is not None]
    if len(chosen) != 1:
        field = chosen[1] if len(chosen) > 1 else "cron"
        raise ApiError(
            422,
            "exactly one of cron, interval_seconds and run_at must have a value",
            field=field,
            source="body",
        )
    (key,) = chosen
    return {k: (given[k] if k == key else None) for k in TIMING} | {"kind": KIND_OF[key]}


def create_fields(data: ScheduleCreate) -> dict[str, Any]:
    """Every column of a new schedule (next_due_at still to be decided)."""
    given = msgspec.structs.asdict(data)
    backoff = given.pop("retry_backoff")
    given |= {
        "retry_delay_seconds": backoff.delay_seconds,
        "retry_factor": backoff.factor,
        "retry_max_delay_seconds": backoff.max_delay_seconds,
    }
    given |= _timing(given)
    return schedules.complete(given)


def patched_fields(row: Mapping[str, Any], patch: ScheduleUpdate) -> dict[str, Any]:
    """The client-settable columns of `row` with `patch` applied."""
    given = {
        f: getattr(patch, f)
        for f in patch.__struct_fields__
        if getattr(patch, f) is not msgspec.UNSET
    }
    fields = {k: row[k] for k in COLUMNS}
    backoff = given.pop("retry_backoff", None)
    if backoff is not None:
        for name, column in (
            ("delay_seconds", "retry_delay_seconds"),
            ("factor", "retry_factor"),
            ("max_delay_seconds", "retry_max_delay_seconds"),
        ):
            value = getattr(backoff, name)
            if value is not msgspec.UNSET:
                fields[column] = value
    if any(k in given for k in TIMING):
        fields |= _timing({**{k: None for k in TIMING}, **given})
        given = {k: v for k, v in given.items() if k not in TIMING}
    return fields | given


def check(fields: dict[str, Any], *, created_at: datetime) -> ScheduleSpec:
    """Validate `fields` in place, normalising payload, cron and zone; return the timing spec.

    `created_at` anchors an interval without `starts_at`, as the ticker reads it.
    """
    _no_nul(fields["payload"], "payload")
    fields["payload"] = validate_payload(fields["job_type"], fields["payload"])
    spec = validate(schedules.spec_of({**fields, "created_at": created_at}))
    if fields["kind"] == "cron":
        fields["cron"] = spec.cron
    elif fields["kind"] == "once":
        fields["run_at"] = spec.run_at
    fields["timezone"] = spec.timezone
    return spec


def next_due(fields: Mapping[str, Any], spec: ScheduleSpec, *, now: datetime) -> datetime:
    """The first occurrence at or after the database's `now`.

    A one-off time within the grace period before now still runs (a client's "now" is a little
    behind the database's); a definition that can never run again is refused.
    """
    if spec.kind == "once" and spec.run_at is not None:
        grace = timedelta(seconds=fields["grace_seconds"])
        if now - grace <= spec.run_at < now:
            return spec.run_at
    due = next_after(spec, now - _TICK)
    if due is None:
        field = "run_at" if spec.kind == "once" else "ends_at"
        raise ApiError(
            422, "is in the past: the schedule would never run", field=field, source="body"
        )
    return due


def changes(row: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The columns whose value `fields` changes."""
    return {k: v for k, v in fields.items() if row[k] != v}
