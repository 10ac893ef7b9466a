"""Schedule definitions: the defaults every new schedule starts from, in one place.

The table's column defaults mirror these for operators inserting by hand; the API and CLI go
through `complete()`, so a schedule's stored row always carries every column explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from app.domain.occurrences import ScheduleSpec, next_after

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
    "enabled": True,
    "next_due_at": None,
}


def complete(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` over the defaults; unknown keys are a programming error, not user input."""
    unknown = set(fields) - set(DEFAULTS) - {"name", "job_type", "kind"}
    if unknown:
        raise KeyError(f"unknown schedule fields: {sorted(unknown)}")
    return {**DEFAULTS, **fields}


def first_due(fields: Mapping[str, Any], now: datetime) -> datetime | None:
    """The first occurrence at or after `now` of a complete schedule definition."""
    row = {**fields, "created_at": now}
    return next_after(spec_of(row), now - timedelta(microseconds=1))


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
