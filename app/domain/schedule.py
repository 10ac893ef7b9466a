"""A schedule's definition: its defaults, its checks, its first due time, and the built-in's guard.

Pure (no I/O, no database, no HTTP; `now` is an argument). The use cases in
`app.services.schedules` call these inside their transaction; the API maps the errors raised
here to problem responses and the CLI to a one-line reason. The table's column defaults mirror
DEFAULTS for operators inserting by hand; every writer goes through `complete()`, so a stored row
always carries every column explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pgsched.app.domain.errors import InvalidDefinition, InvalidRequest, Protected
from pgsched.app.domain.jobs import validate_payload
from pgsched.app.domain.occurrences import ScheduleSpec, next_after, validate
from pgsched.app.domain.occurrences import preview as occurrence_preview

# A schedule's health thresholds (ADR 0032): unhealthy after `consecutive_failures` failed
# runs (dead, or skipped for want of their upstreams) in a row or when `overdue_seconds` late
# (None: never overdue); degraded when at least `failure_rate` of its last `window_runs`
# finished runs failed.
HEALTH_POLICY: Mapping[str, Any] = {
    "consecutive_failures": 3,
    "failure_rate": 0.5,
    "window_runs": 20,
    "overdue_seconds": 3600.0,
}
# Upper bounds: a larger window or streak is read on every evaluation (ADR 0032).
MAX_HEALTH_RUNS: Final = 1000
MAX_OVERDUE_SECONDS: Final = 366 * 86_400

DEFAULTS: Mapping[str, Any] = {
    "payload": {},
    "cron": None,
    "interval_seconds": None,
    "run_at": None,
    "timezone": "UTC",
    "starts_at": None,
    "ends_at": None,
    "jitter_seconds": 0,
    "queue": "default",
    "priority": 0,
    "max_attempts": 3,
    "retry_delay_seconds": 10.0,
    "retry_factor": 2.0,
    "retry_max_delay_seconds": 3600.0,
    "timeout_seconds": 3600.0,
    "overlap_policy": "allow",
    "missed_policy": "latest",
    "missed_cap": 100,
    "grace_seconds": 60,
    "max_concurrency": None,
    # Upstream schedule ids and how long an occurrence waits for them (ADR 0033).
    "depends_on": [],
    "dependency_timeout_seconds": 3600,
    "enabled": True,
    "next_due_at": None,
    "health_policy": HEALTH_POLICY,
    # The circuit breaker: pause after this many dead runs in a row (None: never).
    "pause_after_failures": None,
    # What it is for and who keeps it; `managed_by` is the `pgsched apply` manager that declares
    # it (None: made over the API), which the API does not set (ADR 0031).
    "description": None,
    "owner": None,
    "labels": {},
    "managed_by": None,
}
# The defaults an operator may change for new schedules (app.settings, PGSCHED_DEFAULT_*).
ADJUSTABLE_DEFAULTS: Final = frozenset(
    {
        "timezone",
        "queue",
        "max_attempts",
        "retry_delay_seconds",
        "retry_factor",
        "retry_max_delay_seconds",
        "timeout_seconds",
    }
)
MAX_LABELS: Final = 32
MAX_LABEL_VALUE: Final = 200
MAX_DESCRIPTION: Final = 2000
MAX_OWNER: Final = 200
# A label key: letters, digits and `._/-`, starting and ending with a letter or digit; no `:`,
# so `?label=team:data` splits unambiguously.
LABEL_KEY: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
TIMING: Final = ("cron", "interval_seconds", "run_at")
KIND_OF: Final = {"cron": "cron", "interval_seconds": "interval", "run_at": "once"}
# A schedule with no timing: a job definition, enqueued to (ADR 0027).
JOB: Final = "job"
# Columns whose change moves the next occurrence.
TIMING_COLUMNS: Final = frozenset(
    {"kind", "cron", "interval_seconds", "run_at", "timezone", "starts_at", "ends_at"}
)
# Columns a client may set (the table's other columns are the scheduler's own).
COLUMNS: Final = frozenset(DEFAULTS) - {"next_due_at"} | {"name", "job_type", "kind"}
MAX_BACKFILL: Final = 1000
MIN_TIMEOUT: Final = 0.001  # a millisecond: below it no job can even start
CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The instants a definition or a request may name (app.api.decoding says why these bounds):
# beyond them, interval, jitter and retry arithmetic and the occurrence searches overflow.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)
RANGE_TEXT: Final = "from 1970-01-01T00:00:00Z up to (not including) 9000-01-01T00:00:00Z"
MAX_PREVIEW: Final = 100
_TICK: Final = timedelta(microseconds=1)


# -- the definition --------------------------------------------------------------------------


def complete(
    fields: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`fields` over `defaults` (the operator's, app.settings.schedule_defaults) over DEFAULTS;
    unknown keys are a programming error, not user input."""
    unknown = set(fields) - set(DEFAULTS) - {"name", "job_type", "kind"}
    if unknown or set(defaults or {}) - ADJUSTABLE_DEFAULTS:
        raise KeyError(f"unknown schedule fields: {sorted(unknown or defaults or {})}")
    return {**DEFAULTS, **(defaults or {}), **fields}


def spec_of(row: Mapping[str, Any]) -> ScheduleSpec:
    """The occurrence function's view of a schedule row."""
    return ScheduleSpec(
        kind=row["kind"],
        cron=row["cron"],
        timezone=row["timezone"],
        interval_seconds=row["interval_seconds"],
        # An interval counts from its start bound, or from when it was created.
        anchor=(row["starts_at"] or row["created_at"]) if row["kind"] == "interval" else None,
        run_at=row["run_at"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
    )


def timing(given: Mapping[str, Any]) -> dict[str, Any]:
    """At most one of cron/interval_seconds/run_at has a value: it decides the kind. None of
    them makes a job definition (kind `job`, ADR 0027): defaults for runs enqueued to it, never
    due for the ticker."""
    chosen = [k for k in TIMING if given.get(k) is not None]
    if len(chosen) > 1:
        raise InvalidDefinition(
            chosen[1], "at most one of cron, interval_seconds and run_at may have a value"
        )
    if not chosen:
        return dict.fromkeys(TIMING) | {"kind": JOB}
    (key,) = chosen
    return {k: (given[k] if k == key else None) for k in TIMING} | {"kind": KIND_OF[key]}


def is_job(fields: Mapping[str, Any]) -> bool:
    """A job definition: no timing of its own; its runs are only the ones enqueued to it."""
    return bool(fields["kind"] == JOB)


def no_nul(node: object, path: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it by name instead of failing later."""
    if isinstance(node, str):
        if "\x00" in node:
            raise InvalidDefinition(path, "must not contain NUL characters")
    elif isinstance(node, Mapping):
        for key, value in node.items():
            no_nul(key, path)
            no_nul(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            no_nul(value, f"{path}[{i}]")


def check(fields: dict[str, Any], *, created_at: datetime) -> ScheduleSpec | None:
    """Validate a complete definition in place, normalising payload, cron and zone; return its
    timing spec (None for a job definition, which has no timing). `created_at` anchors an
    interval without `starts_at`, as the ticker reads it.

    Raises InvalidDefinition, InvalidPayload (app.domain.jobs) or InvalidSchedule
    (app.domain.occurrences), each naming the field.
    """
    if CONTROL.search(str(fields["name"])):
        # A newline or escape in a name forges lines in tables, logs and `pgsched` output.
        raise InvalidDefinition("name", "must not hold control characters (newline, tab, ...)")
    timeout = fields["timeout_seconds"]
    if isinstance(timeout, int | float) and not timeout >= MIN_TIMEOUT:
        raise InvalidDefinition("timeout_seconds", f"must be at least {MIN_TIMEOUT} s")
    no_nul(fields["payload"], "payload")
    fields["payload"] = validate_payload(fields["job_type"], fields["payload"])
    fields["health_policy"] = health_policy(fields["health_policy"])
    fields["pause_after_failures"] = _count(
        fields["pause_after_failures"], "pause_after_failures", optional=True
    )
    if is_job(fields) and fields["depends_on"]:
        raise InvalidDefinition("depends_on", "a job definition has no occurrences to wait")
    timeout = fields["dependency_timeout_seconds"]  # None: stored before ADR 0033, the default
    whole = isinstance(timeout, int) and not isinstance(timeout, bool)
    if timeout is not None and not (whole and timeout >= 1):
        raise InvalidDefinition("dependency_timeout_seconds", "must be a whole number above 0")
    fields["labels"] = check_labels(fields["labels"])
    for name, most in (("description", MAX_DESCRIPTION), ("owner", MAX_OWNER)):
        check_text(fields[name], name, most)
    if is_job(fields):
        if any(fields[k] is not None for k in TIMING):
            raise InvalidDefinition("kind", "a job definition has no cron, interval or run_at")
        no_nul(fields["timezone"], "timezone")
        return None
    spec = validate(spec_of({**fields, "created_at": created_at}))
    if fields["kind"] == "cron":
        fields["cron"] = spec.cron
    elif fields["kind"] == "once":
        fields["run_at"] = spec.run_at
    fields["timezone"] = spec.timezone
    return spec


def health_policy(
    given: Mapping[str, Any], base: Mapping[str, Any] = HEALTH_POLICY
) -> dict[str, Any]:
    """`given` thresholds over `base` (the defaults, or a schedule's policy for a partial
    change), checked: InvalidDefinition names the field."""
    if not isinstance(given, Mapping):
        raise InvalidDefinition("health_policy", "must be an object")
    unknown = sorted(set(given) - set(HEALTH_POLICY))
    if unknown:
        raise InvalidDefinition(f"health_policy.{unknown[0]}", "is not a health threshold")
    policy = {**HEALTH_POLICY, **base, **given}
    policy["consecutive_failures"] = _count(
        policy["consecutive_failures"], "health_policy.consecutive_failures"
    )
    policy["window_runs"] = _count(policy["window_runs"], "health_policy.window_runs")
    rate = policy["failure_rate"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise InvalidDefinition("health_policy.failure_rate", "must be a number in (0, 1]")
    policy["failure_rate"] = float(rate)
    overdue = policy["overdue_seconds"]
    if overdue is not None:
        if (
            isinstance(overdue, bool)
            or not isinstance(overdue, int | float)
            or not 0 < overdue <= MAX_OVERDUE_SECONDS
        ):
            raise InvalidDefinition(
                "health_policy.overdue_seconds",
                f"must be null or a number of seconds in (0, {MAX_OVERDUE_SECONDS}]",
            )
        policy["overdue_seconds"] = float(overdue)
    return policy


def _count(value: object, field: str, *, optional: bool = False) -> int | None:
    """A count of runs in [1, MAX_HEALTH_RUNS] (None allowed when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HEALTH_RUNS:
        raise InvalidDefinition(field, f"must be an integer from 1 to {MAX_HEALTH_RUNS}")
    return value


def check_labels(labels: object) -> dict[str, str]:
    """A label object: at most MAX_LABELS keys of LABEL_KEY's form, each a string value of at
    most MAX_LABEL_VALUE characters. None (a row older than migration 0020) reads as none."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidDefinition("labels", "must be an object of string values")
    if len(labels) > MAX_LABELS:
        raise InvalidDefinition("labels", f"must have at most {MAX_LABELS} keys")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            raise InvalidDefinition(
                f"labels.{key}",
                "a label key must be 1-63 letters, digits or ._/- and start and end with a "
                "letter or digit",
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise InvalidDefinition(
                f"labels.{key}", f"must be a string of at most {MAX_LABEL_VALUE} characters"
            )
        no_nul(value, f"labels.{key}")
    return dict(sorted(labels.items()))


def check_text(value: object, field: str, most: int) -> None:
    """Optional free text: None, or a string of 1..`most` characters without NUL."""
    if value is None:
        return
    if not isinstance(value, str) or not 1 <= len(value) <= most:
        raise InvalidDefinition(field, f"must be text of 1 to {most} characters")
    no_nul(value, field)


def first_due(spec: ScheduleSpec, now: datetime, *, grace_seconds: float) -> datetime | None:
    """The first occurrence at or after `now` (the database's instant); None if there is none.

    A one-off time within the grace period before now still runs: a client's "now" is a little
    behind the database's.
    """
    grace = timedelta(seconds=grace_seconds)
    if spec.kind == "once" and spec.run_at is not None and now - grace <= spec.run_at < now:
        return spec.run_at
    return next_after(spec, now - _TICK)


def due_or_refuse(
    fields: Mapping[str, Any], spec: ScheduleSpec | None, now: datetime
) -> datetime | None:
    """`first_due`, refusing a definition that can never run again (InvalidDefinition); None
    for a job definition (no spec), which is never due."""
    if spec is None:
        return None
    due = first_due(spec, now, grace_seconds=fields["grace_seconds"])
    if due is None:
        field = "run_at" if spec.kind == "once" else "ends_at"
        raise InvalidDefinition(field, "is in the past: the schedule would never run")
    return due


# Columns a row older than their migration holds as NULL, meaning this value: no labels
# (0020), no upstream and the default wait (0022). Those rows keep NULL until the column is set.
_NULL_MEANS: Final = {
    "labels": {},
    "depends_on": [],
    "dependency_timeout_seconds": DEFAULTS["dependency_timeout_seconds"],
}


def stored(row: Mapping[str, Any], column: str) -> object:
    """A row's value of `column`, a NULL left by an older release read as what it means."""
    value = row[column]
    return _NULL_MEANS[column] if value is None and column in _NULL_MEANS else value


def changes(row: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The columns whose value `fields` changes (a NULL an older release left and what it
    means are the same: see `stored`)."""
    return {k: v for k, v in fields.items() if stored(row, k) != stored(fields, k)}


def preview(row: Mapping[str, Any], after: datetime, count: int) -> list[datetime]:
    """The next `count` due times of a schedule after `after`, from the ticker's own function."""
    if not 1 <= count <= MAX_PREVIEW:
        raise InvalidRequest("count", f"must be between 1 and {MAX_PREVIEW}")
    if is_job(row):
        return []  # a job definition is never due: its runs are enqueued
    return occurrence_preview(spec_of(row), after, count)


# -- the built-in schedule -------------------------------------------------------------------
# pgsched's own schedule: partition upkeep (app.maintenance, ADR 0021). Nothing else keeps
# partitions ahead, and its loss shows only when inserts start to fail, so over the API it may
# only be paused and resumed (explicit, recorded as schedule.paused), moved to another minute of
# its hour, or given another priority or retry policy. Everything else could stop it quietly or
# change what it is: another queue no worker serves, a starts_at in 2099, an ends_at in the
# past, a cron that never fires ('0 0 29 2 1'), another kind, timezone, jitter or timeout, a
# delete, a rename, another job. install_builtin_maintenance_v1 (migration 0016) puts those back
# when the ticker starts, whoever changed them.
BUILTIN_NAME: Final = "pgsched.maintenance"
_BUILTIN_ADJUSTABLE = frozenset(
    {
        "cron",
        "enabled",
        "priority",
        "max_attempts",
        "retry_delay_seconds",
        "retry_factor",
        "retry_max_delay_seconds",
        "grace_seconds",
        # How its health is judged; never its circuit breaker: nothing else keeps partitions
        # ahead, so it must not pause itself.
        "health_policy",
    }
)
# The order the culprit is looked for, so a change of kind is named as that (not as the
# interval or cron it brings along).
_BUILTIN_ORDER = ("name", "job_type", "payload", "kind")
# Its cron: some minute of every hour, nothing else.
_HOURLY = re.compile(r"(?:[0-9]|[1-5][0-9]) \* \* \* \*")


def is_builtin(row: Mapping[str, Any]) -> bool:
    return bool(row["name"] == BUILTIN_NAME and row["deleted_at"] is None)


def check_builtin_change(row: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
    """Raise Protected if `changes` would delete the built-in schedule or change anything of
    it but its minute, pause, priority and retries."""
    if not is_builtin(row):
        return
    if changes.get("deleted_at") is not None:
        raise Protected(row, "it keeps partitions ahead and cannot be deleted (pause it instead)")

    def order(field: str) -> tuple[int, str]:
        known = field in _BUILTIN_ORDER
        return (_BUILTIN_ORDER.index(field) if known else len(_BUILTIN_ORDER), field)

    for field in sorted(changes, key=order):
        if field == "deleted_at" or changes[field] == row.get(field):
            continue
        if field == "cron" and not _HOURLY.fullmatch(str(changes[field])):
            raise Protected(
                row, "its cron may only move the minute of its hour ('M * * * *')", field
            )
        if field not in _BUILTIN_ADJUSTABLE:
            raise Protected(row, f"its {field} cannot change", field)


def builtin_definition(job: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The whole built-in schedule at `now` (the database's instant), `job` its job_type,
    payload and timeout: hourly, one at a time, checked like any schedule, with its first due
    time."""
    fields = complete(
        {
            "name": BUILTIN_NAME,
            "kind": "cron",
            "cron": "7 * * * *",
            "overlap_policy": "skip",
            "missed_policy": "latest",
            "max_attempts": 3,
            "queue": "default",
            **job,
        }
    )
    spec = check(fields, created_at=now)
    fields["next_due_at"] = due_or_refuse(fields, spec, now)
    return fields


def check_timing_switch(row: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
    """A partial update that gives one timing field a value while the schedule is timed by
    another must clear that other one explicitly (`{"cron": null, "interval_seconds": 300}`).

    A bare `{"interval_seconds": 300}` on a cron schedule reads like "change the interval", and
    silently turning the schedule into another kind was the surprise; a change of kind is said
    so (ADR 0029). A job definition (no timing) may be given one.
    """
    current = next((k for k in TIMING if row.get(k) is not None), None)
    if current is None or current in patch:
        return
    for field in TIMING:
        if field != current and patch.get(field) is not None:
            raise InvalidDefinition(
                field,
                f"the schedule is timed by {current} (kind {row['kind']}); to switch it to "
                f'{KIND_OF[field]}, send "{current}": null in the same update',
            )


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def backfill_empty_reason(row: Mapping[str, Any], start: datetime, end: datetime) -> str:
    """Why [start, end) holds no occurrence of the schedule `row`, in words an operator can act
    on: a backfill that answers `requested: 0` says why (an interval schedule counts from its
    creation, so a range before it holds none)."""
    starts_at, ends_at = row.get("starts_at"), row.get("ends_at")
    if starts_at is not None and end <= starts_at:
        return f"the schedule starts at {_instant(starts_at)}; the range ends before that"
    if ends_at is not None and start > ends_at:
        return f"the schedule ended at {_instant(ends_at)}; the range starts after that"
    if row["kind"] == "once":
        return f"the schedule's only occurrence, run_at {_instant(row['run_at'])}, is outside it"
    if row["kind"] == "interval" and starts_at is None and end <= row["created_at"]:
        return (
            "an interval schedule's occurrences count from when it was created, "
            f"{_instant(row['created_at'])} (or from its starts_at), every "
            f"{row['interval_seconds']} s; the range ends before that, so it holds none"
        )
    following = next_after(spec_of(row), start - _TICK)
    if following is None:
        return "the schedule has no occurrence at or after `from`"
    return f"the schedule's first occurrence at or after `from` is {_instant(following)}"
