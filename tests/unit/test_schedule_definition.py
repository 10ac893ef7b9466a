"""app.domain.schedule: one first due time, and the built-in schedule checked like any other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgsched.app.domain import schedule
from pgsched.app.domain.errors import InvalidDefinition
from pgsched.app.domain.jobs import InvalidPayload

NOW = datetime(2026, 12, 4, 12, 0, 30, tzinfo=UTC)


def _once(run_at: datetime) -> dict[str, object]:
    return schedule.complete(
        {"name": "o", "job_type": "noop", "kind": "once", "run_at": run_at, "grace_seconds": 60}
    )


def test_a_one_off_within_its_grace_still_runs_and_one_before_is_refused() -> None:
    recent = _once(NOW - timedelta(seconds=30))
    spec = schedule.check(recent, created_at=NOW)
    assert schedule.due_or_refuse(recent, spec, NOW) == NOW - timedelta(seconds=30)

    stale = _once(NOW - timedelta(minutes=5))
    spec = schedule.check(stale, created_at=NOW)
    assert schedule.first_due(spec, NOW, grace_seconds=60) is None
    with pytest.raises(InvalidDefinition) as info:
        schedule.due_or_refuse(stale, spec, NOW)
    assert info.value.field == "run_at"


def test_the_builtin_definition_is_checked_and_due_at_its_next_minute_seven() -> None:
    job = {
        "job_type": "python",
        "payload": {"target": "pgsched.app.maintenance:run_builtin", "kwargs": {}},
        "timeout_seconds": 600.0,
    }
    fields = schedule.builtin_definition(job, NOW)
    assert fields["name"] == schedule.BUILTIN_NAME
    assert fields["next_due_at"] == datetime(2026, 12, 4, 12, 7, tzinfo=UTC)
    with pytest.raises(InvalidPayload):
        schedule.builtin_definition({**job, "payload": {"target": "not a target"}}, NOW)
