"""The period of a downstream occurrence and the upstream occurrences it waits for (ADR 0033),
DST included; the cycle search."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pgsched.app.domain.dependencies import (
    cycle_through,
    in_order,
    period,
    refuse_cycle,
    waits_for,
)
from pgsched.app.domain.errors import InvalidDefinition
from pgsched.app.domain.occurrences import ScheduleSpec

HOURLY = ScheduleSpec(kind="cron", cron="0 * * * *")
DAILY_UTC = ScheduleSpec(kind="cron", cron="0 0 * * *")
BERLIN_MIDNIGHT = ScheduleSpec(kind="cron", cron="0 0 * * *", timezone="Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_period_runs_from_the_occurrence_to_the_next() -> None:
    assert period(HOURLY, utc("2026-06-01T10:00")) == (
        utc("2026-06-01T10:00"),
        utc("2026-06-01T11:00"),
    )
    every_hour = ScheduleSpec(
        kind="interval", interval_seconds=3600, anchor=utc("2026-06-01T09:30")
    )
    assert period(every_hour, utc("2026-06-01T10:30")) == (
        utc("2026-06-01T10:30"),
        utc("2026-06-01T11:30"),
    )
    once = ScheduleSpec(kind="once", run_at=utc("2026-06-01T10:00"))
    assert period(once, utc("2026-06-01T10:00")) == (utc("2026-06-01T10:00"), None)


def test_a_more_frequent_upstream_is_waited_for_in_every_occurrence_of_the_period() -> None:
    quarter = ScheduleSpec(kind="cron", cron="*/15 * * * *")
    assert waits_for(HOURLY, utc("2026-06-01T10:00"), [(7, quarter)]) == [
        (7, utc("2026-06-01T10:00")),
        (7, utc("2026-06-01T10:15")),
        (7, utc("2026-06-01T10:30")),
        (7, utc("2026-06-01T10:45")),
    ]
    day = waits_for(DAILY_UTC, utc("2026-06-01T00:00"), [(7, HOURLY)])
    assert [t for _, t in day] == [
        utc("2026-06-01T00:00") + h * timedelta(hours=1) for h in range(24)
    ]


def test_a_less_frequent_upstream_is_waited_for_only_in_the_period_holding_it() -> None:
    assert waits_for(HOURLY, utc("2026-06-01T00:00"), [(3, DAILY_UTC)]) == [
        (3, utc("2026-06-01T00:00"))
    ]
    assert waits_for(HOURLY, utc("2026-06-01T01:00"), [(3, DAILY_UTC)]) == []


@pytest.mark.parametrize(
    ("local_day", "hours"),
    [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-01", 24)],
    ids=["spring-forward", "fall-back", "ordinary"],
)
def test_a_daily_period_in_a_zone_spans_the_local_day_across_dst(
    local_day: str, hours: int
) -> None:
    """Berlin's midnight to the next: 23 hours on the day clocks go forward, 25 when they go
    back, so an hourly upstream in UTC has that many occurrences in the period."""
    start = datetime.fromisoformat(f"{local_day}T00:00").replace(tzinfo=ZoneInfo("Europe/Berlin"))
    begin, end = period(BERLIN_MIDNIGHT, start.astimezone(UTC))
    assert end is not None and end - begin == timedelta(hours=hours)
    assert len(waits_for(BERLIN_MIDNIGHT, begin, [(1, HOURLY)])) == hours


def test_a_one_off_waits_for_an_upstream_occurrence_at_its_instant_only() -> None:
    once = ScheduleSpec(kind="once", run_at=utc("2026-06-01T10:00"))
    assert waits_for(once, utc("2026-06-01T10:00"), [(2, HOURLY)]) == [(2, utc("2026-06-01T10:00"))]
    late = ScheduleSpec(kind="once", run_at=utc("2026-06-01T10:05"))
    assert waits_for(late, utc("2026-06-01T10:05"), [(2, HOURLY)]) == []


def test_cycles_through_the_changed_schedule_are_found_and_diamonds_are_not() -> None:
    graph = {2: [1], 3: [2]}  # b -> a, c -> b
    assert cycle_through(1, [3], graph) == [1, 3, 2, 1]
    assert cycle_through(1, [1], graph) == [1, 1]
    assert cycle_through(4, [2, 3], graph) is None  # d -> b, d -> c: a diamond over a
    assert cycle_through(3, [2, 1], graph) is None
    with pytest.raises(InvalidDefinition, match=r"^would make a cycle: a -> c -> b -> a$"):
        refuse_cycle(1, [3], graph, {1: "a", 2: "b", 3: "c"})


def test_schedules_defined_together_are_ordered_upstreams_first_or_their_cycle_named() -> None:
    diamond = {"d": ["b", "c"], "c": ["a"], "b": ["a", "existing"], "a": []}
    assert in_order(diamond) == ["a", "c", "b", "d"]  # ties in the graph's (a file's) order
    assert in_order({"b": [], "a": []}) == ["b", "a"]
    with pytest.raises(InvalidDefinition, match=r"^would make a cycle: a -> c -> b -> a$"):
        in_order({"a": ["c"], "b": ["a"], "c": ["b"]})
