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


LONG_AGO = utc("2020-01-01T00:00")


def test_the_period_runs_from_the_previous_occurrence_to_this_one() -> None:
    assert period(HOURLY, utc("2026-06-01T10:00")) == (
        utc("2026-06-01T09:00"),
        utc("2026-06-01T10:00"),
    )
    every_hour = ScheduleSpec(
        kind="interval", interval_seconds=3600, anchor=utc("2026-06-01T09:30")
    )
    assert period(every_hour, utc("2026-06-01T10:30")) == (
        utc("2026-06-01T09:30"),
        utc("2026-06-01T10:30"),
    )
    # The interval's first occurrence and a one-off have no previous one: the instant alone.
    assert period(every_hour, utc("2026-06-01T09:30")) == (None, utc("2026-06-01T09:30"))
    once = ScheduleSpec(kind="once", run_at=utc("2026-06-01T10:00"))
    assert period(once, utc("2026-06-01T10:00")) == (None, utc("2026-06-01T10:00"))
    leap = ScheduleSpec(kind="cron", cron="0 0 29 2 *")
    assert period(leap, utc("2028-02-29T00:00"))[0] == utc("2024-02-29T00:00")


def test_a_daily_report_waits_for_the_night_of_hourly_runs_before_it() -> None:
    """The usual ETL case: a daily 06:00 report over an hourly ingest waits for the ingest's
    runs since the previous 06:00, all due by the time the report is: nothing in the future."""
    report = ScheduleSpec(kind="cron", cron="0 6 * * *")
    day = waits_for(report, utc("2026-06-02T06:00"), [(7, HOURLY, LONG_AGO)])
    assert [t for _, t in day] == [
        utc("2026-06-01T07:00") + h * timedelta(hours=1) for h in range(24)
    ]
    nightly = ScheduleSpec(kind="cron", cron="30 2 * * *")
    assert waits_for(report, utc("2026-06-02T06:00"), [(8, nightly, LONG_AGO)]) == [
        (8, utc("2026-06-02T02:30"))
    ]


def test_a_more_frequent_upstream_is_waited_for_in_every_occurrence_of_the_period() -> None:
    quarter = ScheduleSpec(kind="cron", cron="*/15 * * * *")
    assert waits_for(HOURLY, utc("2026-06-01T11:00"), [(7, quarter, LONG_AGO)]) == [
        (7, utc("2026-06-01T10:15")),
        (7, utc("2026-06-01T10:30")),
        (7, utc("2026-06-01T10:45")),
        (7, utc("2026-06-01T11:00")),
    ]


def test_upstream_occurrences_before_the_upstream_existed_are_not_waited_for() -> None:
    quarter = ScheduleSpec(kind="cron", cron="*/15 * * * *")
    assert waits_for(HOURLY, utc("2026-06-01T11:00"), [(7, quarter, utc("2026-06-01T10:40"))]) == [
        (7, utc("2026-06-01T10:45")),
        (7, utc("2026-06-01T11:00")),
    ]


def test_a_less_frequent_upstream_is_waited_for_only_in_the_period_holding_it() -> None:
    assert waits_for(HOURLY, utc("2026-06-01T00:00"), [(3, DAILY_UTC, LONG_AGO)]) == [
        (3, utc("2026-06-01T00:00"))
    ]
    assert waits_for(HOURLY, utc("2026-06-01T01:00"), [(3, DAILY_UTC, LONG_AGO)]) == []


@pytest.mark.parametrize(
    ("local_day", "hours"),
    [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-01", 24)],
    ids=["spring-forward", "fall-back", "ordinary"],
)
def test_a_daily_period_in_a_zone_spans_the_local_day_across_dst(
    local_day: str, hours: int
) -> None:
    """Berlin's midnight back to the previous one: 23 hours over the day clocks go forward, 25
    when they go back, so an hourly upstream in UTC has that many occurrences in the period."""
    berlin = ZoneInfo("Europe/Berlin")
    begin = datetime.fromisoformat(f"{local_day}T00:00").replace(tzinfo=berlin)
    end = (begin.astimezone(UTC) + timedelta(hours=hours)).astimezone(berlin)
    assert (end.hour, end.minute) == (0, 0)
    start, due = period(BERLIN_MIDNIGHT, end.astimezone(UTC))
    assert start == begin and due - start == timedelta(hours=hours)
    assert len(waits_for(BERLIN_MIDNIGHT, due, [(1, HOURLY, LONG_AGO)])) == hours


def test_a_one_off_waits_for_an_upstream_occurrence_at_its_instant_only() -> None:
    once = ScheduleSpec(kind="once", run_at=utc("2026-06-01T10:00"))
    assert waits_for(once, utc("2026-06-01T10:00"), [(2, HOURLY, LONG_AGO)]) == [
        (2, utc("2026-06-01T10:00"))
    ]
    late = ScheduleSpec(kind="once", run_at=utc("2026-06-01T10:05"))
    assert waits_for(late, utc("2026-06-01T10:05"), [(2, HOURLY, LONG_AGO)]) == []


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
