"""A schedule's definition as the API receives it, mapped to the columns app.services takes.

Pure. The checks themselves (timing, payload, NUL characters) are app.domain.schedule's; this
module only flattens the msgspec structs (`retry_backoff` into its three columns, the one timing
given into its kind).
"""

from __future__ import annotations

from typing import Any

import msgspec

from pgsched.app.api.schemas import RetryBackoff, RetryBackoffPatch, ScheduleCreate, ScheduleUpdate
from pgsched.app.domain import schedule


def create_fields(data: ScheduleCreate) -> dict[str, Any]:
    """The client-settable columns of a new schedule; those left out are not among them (the
    operator's defaults, then the built-in ones, fill them in: app.domain.schedule.complete)."""
    given = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    backoff = given.pop("retry_backoff", None)
    if backoff is not None:
        given |= _backoff_columns(backoff)
    if "health_policy" in given:
        given["health_policy"] = msgspec.structs.asdict(data.health_policy)
    return given | schedule.timing(given)


def _backoff_columns(backoff: RetryBackoff | RetryBackoffPatch) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for name, column in (
        ("delay_seconds", "retry_delay_seconds"),
        ("factor", "retry_factor"),
        ("max_delay_seconds", "retry_max_delay_seconds"),
    ):
        value = getattr(backoff, name)
        if value is not msgspec.UNSET:
            columns[column] = value
    return columns


def patch_fields(patch: ScheduleUpdate) -> dict[str, Any]:
    """The columns a partial update gives (timing fields as given: the service decides the
    kind from them)."""
    given = {
        f: getattr(patch, f)
        for f in patch.__struct_fields__
        if getattr(patch, f) is not msgspec.UNSET
    }
    policy = given.get("health_policy")
    if policy is not None:  # only the thresholds given change (app.services.schedules.update)
        given["health_policy"] = {
            f: getattr(policy, f)
            for f in policy.__struct_fields__
            if getattr(policy, f) is not msgspec.UNSET
        }
    backoff = given.pop("retry_backoff", None)
    if backoff is not None:
        given |= _backoff_columns(backoff)
    return given
