"""Schedule definitions: the defaults every new schedule starts from, in one place.

The table's column defaults mirror these for operators inserting by hand; the API and CLI go
through `complete()`, so a schedule's stored row always carries every column explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
