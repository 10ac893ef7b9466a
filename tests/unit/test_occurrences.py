"""app.domain.occurrences: examples and properties (ADR 0009).

The exhaustive DST sweep lives in test_occurrences_dst.py; this file pins the API contract:
interval arithmetic and boundaries, one-off schedules, starts_at/ends_at, aliases,
validation errors, jitter, preview, and a few calendar oddities (Apia's missing day, the
29th of February, @yearly). Property tests compare against the independent oracle in
cron_oracle.py and against croniter itself on naive (DST-free) time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pgsched.app.domain.occurrences import (
    InvalidSchedule,
    ScheduleSpec,
    jitter_offset,
    next_after,
    occurrences,
    preview,
    validate,
)

try:  # tests/unit may or may not become a package; work either way
    from . import cron_oracle
except ImportError:
    import cron_oracle

# The example database would write .hypothesis/ into the repository; failures print a seed.
PROPERTY = settings(
    database=None, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"
US = timedelta(microseconds=1)
NAIVE = datetime(2026, 1, 1)  # noqa: DTZ001 - deliberately naive


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron(expr: str, tz: str = "UTC", **kw: datetime) -> ScheduleSpec:
    return ScheduleSpec("cron", cron=expr, timezone=tz, **kw)


def walls(instants: list[datetime], tz: str) -> list[str]:
    zone = ZoneInfo(tz)
    return [t.astimezone(zone).strftime("%Y-%m-%d %H:%M%z") for t in instants]


# --------------------------------------------------------------------------------------------
# Intervals: pure arithmetic on anchor + k * interval, k >= 0
# --------------------------------------------------------------------------------------------

ANCHOR = utc(2026, 1, 1, 0, 0, 7)
EVERY_90S = ScheduleSpec("interval", interval_seconds=90, anchor=ANCHOR)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (ANCHOR - timedelta(days=400), ANCHOR),  # k never goes negative
        (ANCHOR - US, ANCHOR),
        (ANCHOR, ANCHOR + timedelta(seconds=90)),  # strictly after
        (ANCHOR + US, ANCHOR + timedelta(seconds=90)),
        (ANCHOR + timedelta(seconds=90) - US, ANCHOR + timedelta(seconds=90)),
        (ANCHOR + timedelta(seconds=90), ANCHOR + timedelta(seconds=180)),
        (
            ANCHOR + timedelta(days=365 * 500, seconds=1),
            ANCHOR + 175_200_001 * timedelta(seconds=90),
        ),
    ],
)
def test_interval_next_after_is_the_first_grid_point_strictly_after(after, expected):
    assert next_after(EVERY_90S, after) == expected


def test_interval_occurrences_after_is_exclusive_until_is_inclusive():
    step = timedelta(seconds=90)
    assert list(occurrences(EVERY_90S, ANCHOR, ANCHOR + 3 * step)) == [
        ANCHOR + step,
        ANCHOR + 2 * step,
        ANCHOR + 3 * step,
    ]
    assert list(occurrences(EVERY_90S, ANCHOR - US, ANCHOR + 3 * step - US)) == [
        ANCHOR,
        ANCHOR + step,
        ANCHOR + 2 * step,
    ]
    assert list(occurrences(EVERY_90S, ANCHOR + US, ANCHOR + step - US)) == []
    assert list(occurrences(EVERY_90S, ANCHOR, ANCHOR)) == []


def test_interval_ignores_dst_it_is_real_time():
    # An hourly interval across New York's fall-back stays 3600 s apart in UTC.
    spec = ScheduleSpec("interval", interval_seconds=3600, anchor=utc(2026, 1, 1), timezone=NY)
    got = list(occurrences(spec, utc(2026, 11, 1, 3), utc(2026, 11, 1, 9)))
    assert got == [utc(2026, 11, 1, h) for h in range(4, 10)]


def test_interval_anchor_in_another_zone_and_with_microseconds():
    anchor = datetime(2026, 3, 8, 1, 59, 59, 500_000, tzinfo=ZoneInfo(NY))
    spec = ScheduleSpec("interval", interval_seconds=1, anchor=anchor)
    first = next_after(spec, anchor)
    assert first == anchor.astimezone(UTC) + timedelta(seconds=1)
    assert first.tzinfo is UTC


def test_interval_anchor_defaults_to_starts_at():
    starts = utc(2026, 5, 1, 12)
    spec = ScheduleSpec("interval", interval_seconds=600, starts_at=starts)
    assert validate(spec).anchor == starts
    assert preview(spec, utc(2000, 1, 1), 2) == [starts, starts + timedelta(minutes=10)]


@PROPERTY
@given(
    anchor=st.datetimes(min_value=NAIVE.replace(year=1990), max_value=NAIVE.replace(year=2090)),
    seconds=st.integers(min_value=1, max_value=10 * 86_400),
    shift=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_interval_next_after_property(anchor, seconds, shift):
    anchor = anchor.replace(tzinfo=UTC)
    after = anchor + timedelta(microseconds=shift)
    got = next_after(ScheduleSpec("interval", interval_seconds=seconds, anchor=anchor), after)
    assert got is not None
    step = timedelta(seconds=seconds)
    k, remainder = divmod(got - anchor, step)
    assert remainder == timedelta(0) and k >= 0  # on the grid
    assert got > after  # strictly after
    assert got == anchor or got - step <= after  # and the first such point


# --------------------------------------------------------------------------------------------
# Once
# --------------------------------------------------------------------------------------------

RUN_AT = datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo(BERLIN))
ONCE = ScheduleSpec("once", run_at=RUN_AT)


def test_once_runs_exactly_once_and_reports_in_utc():
    assert next_after(ONCE, RUN_AT - US) == utc(2026, 7, 1, 7, 30)
    assert next_after(ONCE, RUN_AT - US).tzinfo is UTC
    assert next_after(ONCE, RUN_AT) is None  # already passed
    assert next_after(ONCE, RUN_AT + timedelta(days=1)) is None
    assert list(occurrences(ONCE, RUN_AT - US, RUN_AT)) == [RUN_AT]
    assert list(occurrences(ONCE, RUN_AT - US, RUN_AT - US)) == []
    assert preview(ONCE, utc(2020, 1, 1), 10) == [RUN_AT]


# --------------------------------------------------------------------------------------------
# starts_at / ends_at (inclusive) for every kind
# --------------------------------------------------------------------------------------------


def test_cron_bounds_are_inclusive_on_both_sides():
    spec = cron("0 * * * *", starts_at=utc(2026, 1, 1, 10), ends_at=utc(2026, 1, 1, 13))
    assert list(occurrences(spec, utc(2026, 1, 1), utc(2026, 1, 2))) == [
        utc(2026, 1, 1, 10),
        utc(2026, 1, 1, 11),
        utc(2026, 1, 1, 12),
        utc(2026, 1, 1, 13),
    ]
    assert next_after(spec, utc(2025, 1, 1)) == utc(2026, 1, 1, 10)
    assert next_after(spec, utc(2026, 1, 1, 13) - US) == utc(2026, 1, 1, 13)
    assert next_after(spec, utc(2026, 1, 1, 13)) is None  # ends_at passed


def test_bounds_just_off_an_occurrence_exclude_it():
    spec = cron("0 * * * *", starts_at=utc(2026, 1, 1, 10) + US, ends_at=utc(2026, 1, 1, 13) - US)
    assert list(occurrences(spec, utc(2026, 1, 1), utc(2026, 1, 2))) == [
        utc(2026, 1, 1, 11),
        utc(2026, 1, 1, 12),
    ]


def test_interval_bounds_keep_the_anchor_phase():
    spec = ScheduleSpec(
        "interval",
        interval_seconds=3600,
        anchor=utc(2026, 1, 1, 0, 15),
        starts_at=utc(2026, 1, 1, 5),
        ends_at=utc(2026, 1, 1, 8, 15),
    )
    assert list(occurrences(spec, utc(2026, 1, 1), utc(2026, 1, 2))) == [
        utc(2026, 1, 1, 5, 15),
        utc(2026, 1, 1, 6, 15),
        utc(2026, 1, 1, 7, 15),
        utc(2026, 1, 1, 8, 15),
    ]


def test_once_on_the_bounds_is_allowed():
    run_at = utc(2026, 1, 1, 12)
    spec = ScheduleSpec("once", run_at=run_at, starts_at=run_at, ends_at=run_at)
    assert next_after(spec, run_at - US) == run_at


# --------------------------------------------------------------------------------------------
# Aliases, calendar oddities, day-of-month/day-of-week OR
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "expansion"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_alias_equals_its_expansion(alias, expansion):
    start = utc(2026, 3, 1)
    assert preview(cron(alias, BERLIN), start, 6) == preview(cron(expansion, BERLIN), start, 6)
    assert validate(cron(alias.upper())).cron == alias  # kept, lower-cased, not expanded


def test_yearly_runs_at_local_new_year():
    got = preview(cron("@yearly", BERLIN), utc(2026, 6, 1), 3)
    assert walls(got, BERLIN) == [
        "2027-01-01 00:00+0100",
        "2028-01-01 00:00+0100",
        "2029-01-01 00:00+0100",
    ]


def test_leap_day_runs_every_leap_year_and_skips_2100():
    got = preview(cron("0 0 29 2 *"), utc(2026, 1, 1), 3)
    assert got == [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]
    # 2100 is not a leap year: an 8-year gap, the longest any valid expression has.
    assert next_after(cron("0 0 29 2 *"), utc(2096, 2, 29)) == utc(2104, 2, 29)


def test_apia_skipped_day_runs_once_at_the_first_instant_after_it():
    # Samoa went from 2011-12-29 23:59:59 -10:00 straight to 2011-12-31 00:00 +14:00.
    apia = "Pacific/Apia"
    after, until = utc(2011, 12, 29, 10), utc(2011, 12, 30, 12)  # 29th 00:00 to 31st 02:00
    assert walls(list(occurrences(cron("30 2 * * *", apia), after, until)), apia) == [
        "2011-12-29 02:30-1000",
        "2011-12-31 00:00+1400",  # 30 December 02:30 never existed
    ]
    hourly = list(occurrences(cron("0 * * * *", apia), utc(2011, 12, 30, 8), utc(2011, 12, 30, 12)))
    # 24 nonexistent hours collapse into one run, which is itself a match: still one.
    assert walls(hourly, apia) == [
        "2011-12-29 23:00-1000",
        "2011-12-31 00:00+1400",
        "2011-12-31 01:00+1400",
        "2011-12-31 02:00+1400",
    ]
    assert next_after(cron("0 * * * *", apia), utc(2011, 12, 30, 9, 59)) == utc(2011, 12, 30, 10)
    assert next_after(cron("0 * * * *", apia), utc(2011, 12, 30, 10)) == utc(2011, 12, 30, 11)


def test_day_of_month_and_day_of_week_both_restricted_means_either():
    # Friday the 13th the cron way: every 13th *and* every Friday.
    got = walls(preview(cron("0 0 13 * 5"), utc(2026, 3, 1), 6), "UTC")
    assert got == [
        "2026-03-06 00:00+0000",
        "2026-03-13 00:00+0000",  # a Friday and the 13th: once
        "2026-03-20 00:00+0000",
        "2026-03-27 00:00+0000",
        "2026-04-03 00:00+0000",
        "2026-04-10 00:00+0000",
    ]
    assert utc(2026, 4, 13) in preview(cron("0 0 13 * 5"), utc(2026, 3, 1), 8)  # a Monday
    # Only one restricted: that one alone decides.
    assert all(t.weekday() == 4 for t in preview(cron("0 0 * * fri"), utc(2026, 3, 1), 8))
    # A '*/n' day-of-month still counts as restricted (croniter's rule, not Vixie's AND).
    odd_or_monday = preview(cron("0 0 */2 * 1"), utc(2026, 3, 1), 20)
    assert utc(2026, 3, 2) in odd_or_monday and utc(2026, 3, 3) in odd_or_monday


def test_names_ranges_steps_and_sunday_as_7():
    assert preview(cron("0 9 * jan-mar MON-fri"), utc(2026, 3, 27), 3) == [
        utc(2026, 3, 27, 9),
        utc(2026, 3, 30, 9),
        utc(2026, 3, 31, 9),
    ]
    assert preview(cron("0 0 * * 7"), utc(2026, 3, 1), 2) == preview(
        cron("0 0 * * sun"), utc(2026, 3, 1), 2
    )
    assert preview(cron("10/20 3-5/2 * * *"), utc(2026, 3, 1), 7) == [
        utc(2026, 3, 1, 3, 10),
        utc(2026, 3, 1, 3, 30),
        utc(2026, 3, 1, 3, 50),
        utc(2026, 3, 1, 5, 10),
        utc(2026, 3, 1, 5, 30),
        utc(2026, 3, 1, 5, 50),
        utc(2026, 3, 2, 3, 10),
    ]


# --------------------------------------------------------------------------------------------
# DST policy, by example (the sweep is in test_occurrences_dst.py)
# --------------------------------------------------------------------------------------------


def test_spring_forward_gap_runs_at_the_first_instant_after_it():
    got = list(occurrences(cron("30 2 * * *", NY), utc(2026, 3, 7), utc(2026, 3, 10)))
    assert walls(got, NY) == [
        "2026-03-07 02:30-0500",
        "2026-03-08 03:00-0400",  # 02:30 did not exist
        "2026-03-09 02:30-0400",
    ]


def test_gap_matches_collapse_into_one_run_even_when_the_gap_end_also_matches():
    # 02:00, 02:15, 02:30, 02:45 do not exist; 03:00 is a match too: one run at 03:00.
    got = list(
        occurrences(cron("*/15 * * * *", NY), utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30))
    )
    assert walls(got, NY) == [
        "2026-03-08 01:45-0500",
        "2026-03-08 03:00-0400",
        "2026-03-08 03:15-0400",
        "2026-03-08 03:30-0400",
    ]


def test_fall_back_fixed_time_runs_once_at_the_first_pass():
    got = list(occurrences(cron("30 1 * * *", NY), utc(2026, 10, 31), utc(2026, 11, 3)))
    assert walls(got, NY) == [
        "2026-10-31 01:30-0400",
        "2026-11-01 01:30-0400",  # not again at 01:30-0500
        "2026-11-02 01:30-0500",
    ]
    # Restarting inside the second pass must not resurrect it.
    assert next_after(cron("30 1 * * *", NY), utc(2026, 11, 1, 6, 15)) == utc(2026, 11, 2, 6, 30)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 * * * *", ["01:00-0400", "01:00-0500", "02:00-0500"]),
        ("*/30 * * * *", ["01:00-0400", "01:30-0400", "01:00-0500", "01:30-0500", "02:00-0500"]),
        # '*' in the minute field makes it a wildcard even under a fixed hour (Debian rule)
        ("*/30 1 * * *", ["01:00-0400", "01:30-0400", "01:00-0500", "01:30-0500"]),
        # no '*' in minute or hour: fixed-time, once per wall time
        ("0,30 1 * * *", ["01:00-0400", "01:30-0400"]),
        ("0 1-2 * * *", ["01:00-0400", "02:00-0500"]),
    ],
)
def test_fall_back_wildcards_fire_on_every_real_matching_instant(expr, expected):
    got = list(occurrences(cron(expr, NY), utc(2026, 11, 1, 4, 59), utc(2026, 11, 1, 7)))
    assert [w[11:] for w in walls(got, NY)] == expected


def test_lord_howe_half_hour_shift():
    lhi = "Australia/Lord_Howe"
    spring = list(occurrences(cron("0 * * * *", lhi), utc(2026, 10, 3, 13), utc(2026, 10, 3, 17)))
    # 02:00 does not exist (02:00 -> 02:30): it runs at 02:30, then 03:00 as usual.
    assert [w[11:] for w in walls(spring, lhi)] == [
        "00:00+1030",
        "01:00+1030",
        "02:30+1100",
        "03:00+1100",
        "04:00+1100",
    ]
    autumn = list(occurrences(cron("45 1 * * *", lhi), utc(2026, 4, 4), utc(2026, 4, 5)))
    assert walls(autumn, lhi) == ["2026-04-05 01:45+1100"]  # not again at 01:45+1030


@pytest.mark.parametrize("tz", [NY, "Australia/Lord_Howe", "Pacific/Apia", "Asia/Kolkata"])
def test_every_minute_is_every_real_minute_whatever_the_zone(tz):
    centres = cron_oracle.find_transitions(tz, 2011, 2011) or [utc(2011, 6, 1)]
    for centre in centres:
        after, until = centre - timedelta(hours=3), centre + timedelta(hours=3)
        got = list(occurrences(cron("* * * * *", tz), after, until))
        assert got == [after + timedelta(minutes=i) for i in range(1, 361)]


def test_fixed_offset_zones_use_their_constant_offset():
    # Etc/GMT+5 is UTC-05:00 (POSIX sign convention) all year round.
    got = preview(cron("30 2 * * *", "Etc/GMT+5"), utc(2026, 3, 7), 3)
    assert got == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 7, 30)]
    assert next_after(cron("* * * * *", "Etc/GMT-14"), utc(2026, 1, 1, 0, 0, 30)) == utc(
        2026, 1, 1, 0, 1
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

T0 = utc(2026, 1, 1)


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        (cron("61 * * * *"), "cron", "out of range"),
        (cron("* * *"), "cron", "expected 5 fields"),
        (cron("0 0 * * * *"), "cron", "seconds"),
        (cron(""), "cron", "empty"),
        (cron("@reboot"), "cron", "@reboot"),
        (cron("@every 5m"), "cron", "unknown alias"),
        (cron("0 0 L * *"), "cron", "'L'"),
        (cron("0 0 15W * *"), "cron", "'W'"),
        (cron("0 0 * * 1#2"), "cron", "'#'"),
        (cron("0 0 ? * *"), "cron", "'?'"),
        (cron("H * * * *"), "cron", "'H'"),
        (cron("5-5 * * * *"), "cron", "ambiguous"),
        (cron("0 22-2 * * *"), "cron", "reversed"),
        (cron("0 0 * * sat-sun"), "cron", "reversed"),
        (cron("*/0 * * * *"), "cron", "step"),
        (cron("jan * * * *"), "cron", "minute value 'jan'"),
        (cron("0 0 * * 7/2"), "cron", "step start"),
        (cron("0 0 30 2 *"), "cron", "never match"),
        (cron("0 0 31 4,6,9,11 *"), "cron", "never match"),
        (cron("0 0 1-31 * mon"), "cron", "every day"),
        (cron("0 0 13 * 0-6"), "cron", "every day"),
        (cron("0 0 * * mon,,tue"), "cron", "malformed"),
        (ScheduleSpec("cron"), "cron", "required"),
        (ScheduleSpec("cron", cron=5), "cron", "must be a string"),
        (ScheduleSpec("once", run_at="2026-01-01T00:00Z"), "run_at", "must be a datetime"),
        (cron("* * * * *", "Mars/Olympus"), "timezone", "IANA"),
        (cron("* * * * *", "localtime"), "timezone", "IANA"),
        (cron("* * * * *", "../../etc/passwd"), "timezone", "IANA"),
        (cron("* * * * *", ""), "timezone", "IANA"),
        (ScheduleSpec("interval", interval_seconds=0, anchor=T0), "interval_seconds", "> 0"),
        (ScheduleSpec("interval", interval_seconds=-60, anchor=T0), "interval_seconds", "> 0"),
        (ScheduleSpec("interval", interval_seconds=True, anchor=T0), "interval_seconds", "integer"),
        (ScheduleSpec("interval", interval_seconds=1.5, anchor=T0), "interval_seconds", "integer"),
        (ScheduleSpec("interval", anchor=T0), "interval_seconds", "required"),
        (ScheduleSpec("interval", interval_seconds=60), "anchor", "required"),
        (ScheduleSpec("interval", interval_seconds=60, anchor=NAIVE), "anchor", "timezone-aware"),
        (ScheduleSpec("once", run_at=NAIVE), "run_at", "timezone-aware"),
        (ScheduleSpec("once"), "run_at", "required"),
        (cron("* * * * *", starts_at=NAIVE), "starts_at", "timezone-aware"),
        (cron("* * * * *", ends_at=NAIVE), "ends_at", "timezone-aware"),
        (cron("* * * * *", starts_at=T0, ends_at=T0 - US), "ends_at", "before starts_at"),
        (ScheduleSpec("once", run_at=T0, ends_at=T0 - US), "run_at", "never runs"),
        (
            ScheduleSpec("cron", cron="* * * * *", interval_seconds=60),
            "interval_seconds",
            "must not",
        ),
        (ScheduleSpec("cron", cron="* * * * *", anchor=T0), "anchor", "must not"),
        (ScheduleSpec("cron", cron="* * * * *", run_at=T0), "run_at", "must not"),
        (
            ScheduleSpec("interval", interval_seconds=60, anchor=T0, cron="* * * * *"),
            "cron",
            "must not",
        ),
        (ScheduleSpec("interval", interval_seconds=60, anchor=T0, run_at=T0), "run_at", "must not"),
        (ScheduleSpec("once", run_at=T0, cron="* * * * *"), "cron", "must not"),
        (ScheduleSpec("once", run_at=T0, interval_seconds=60), "interval_seconds", "must not"),
        (ScheduleSpec("once", run_at=T0, anchor=T0), "anchor", "must not"),
        (ScheduleSpec("weekly"), "kind", "must be"),
    ],
)
def test_invalid_specs_name_the_field(spec, field, fragment):
    with pytest.raises(InvalidSchedule) as caught:
        validate(spec)
    assert caught.value.field == field
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")
    # The evaluating functions refuse the same spec the same way.
    for call in (
        lambda: next_after(spec, T0),
        lambda: list(occurrences(spec, T0, T0 + timedelta(days=1))),
        lambda: preview(spec, T0, 1),
    ):
        with pytest.raises(InvalidSchedule) as again:
            call()
        assert again.value.field == field


def test_invalid_schedule_is_a_value_error():
    assert issubclass(InvalidSchedule, ValueError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: next_after(cron("* * * * *"), NAIVE),
        lambda: occurrences(cron("* * * * *"), NAIVE, T0),  # raises before iteration
        lambda: occurrences(cron("* * * * *"), T0, NAIVE),
        lambda: preview(cron("* * * * *"), NAIVE, 1),
        lambda: jitter_offset("k", NAIVE, 10),
        lambda: preview(cron("* * * * *"), T0, -1),
        lambda: jitter_offset("k", T0, -1),
    ],
)
def test_naive_arguments_and_bad_counts_raise_value_error(call):
    with pytest.raises(ValueError):  # the type is the contract
        call()


def test_validate_normalises_and_is_idempotent():
    spec = ScheduleSpec(
        "cron",
        cron="  30   2 * *   MON-fri ",
        timezone=NY,
        starts_at=datetime(2026, 1, 1, 9, tzinfo=ZoneInfo(BERLIN)),
        ends_at=datetime(2026, 6, 1, tzinfo=timezone(timedelta(hours=-5))),
    )
    normal = validate(spec)
    assert normal.cron == "30 2 * * MON-fri"
    assert normal.starts_at == utc(2026, 1, 1, 8)
    assert normal.starts_at.tzinfo is UTC
    assert normal.ends_at == utc(2026, 6, 1, 5)
    assert validate(normal) == normal
    assert preview(normal, T0, 5) == preview(spec, T0, 5)


def test_accepted_edge_spellings():
    for expr in ("59/15 * * * *", "0 0 * * 5-7", "0 0 1-31 * *", "*/90 * * * *", "0 0 29 2 *"):
        assert validate(cron(expr)).cron == expr


# --------------------------------------------------------------------------------------------
# Jitter
# --------------------------------------------------------------------------------------------


def test_jitter_is_deterministic_bounded_and_zone_independent():
    nominal = utc(2026, 1, 1, 12)
    first = jitter_offset("schedule-42", nominal, 300)
    assert first == jitter_offset("schedule-42", nominal, 300)
    assert timedelta(0) <= first <= timedelta(seconds=300)
    same_instant = nominal.astimezone(ZoneInfo("Asia/Kolkata"))
    assert jitter_offset("schedule-42", same_instant, 300) == first
    assert jitter_offset("schedule-42", nominal, 0) == timedelta(0)
    # Pinned: changing the hash input would move every already-spread run.
    assert first == timedelta(seconds=232)


def test_jitter_spreads_over_keys_and_occurrences():
    nominal = utc(2026, 1, 1)
    by_key = {jitter_offset(f"s{i}", nominal, 59) for i in range(2000)}
    assert by_key == {timedelta(seconds=s) for s in range(60)}  # the whole range, both ends
    by_time = {jitter_offset("s", nominal + timedelta(minutes=i), 59) for i in range(500)}
    assert len(by_time) > 40


@PROPERTY
@given(
    key=st.text(max_size=40),
    nominal=st.datetimes(timezones=st.just(UTC)),
    jitter=st.integers(min_value=0, max_value=86_400),
)
def test_jitter_range_property(key, nominal, jitter):
    offset = jitter_offset(key, nominal, jitter)
    assert timedelta(0) <= offset <= timedelta(seconds=jitter)
    assert offset == jitter_offset(key, nominal, jitter)
    assert offset.microseconds == 0


# --------------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------------


def test_preview_count_and_consistency_with_occurrences_and_next_after():
    spec = cron("*/7 3 * * 1-5", BERLIN)
    got = preview(spec, T0, 25)
    assert len(got) == 25
    assert preview(spec, T0, 0) == []
    assert got == list(occurrences(spec, T0, got[-1]))
    chained, cursor = [], T0
    for _ in range(25):
        cursor = next_after(spec, cursor)
        chained.append(cursor)
    assert chained == got
    ending = cron("0 0 * * *", ends_at=utc(2026, 1, 3))
    assert preview(ending, T0, 10) == [utc(2026, 1, 2), utc(2026, 1, 3)]


# --------------------------------------------------------------------------------------------
# Properties against the oracle and against croniter
# --------------------------------------------------------------------------------------------

_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
_NAMES = [None, None, None, cron_oracle.NAMES[3], cron_oracle.NAMES[4]]


@st.composite
def _element(draw, index):
    low, high = _BOUNDS[index]
    names = _NAMES[index]

    def value(v):
        if names and draw(st.booleans()):
            return next(n for n, number in names.items() if number == v)
        return str(v)

    shape = draw(st.sampled_from(["*", "*/n", "a", "a-b", "a-b/n", "a/n"]))
    step = draw(st.integers(min_value=1, max_value=high - low + 2))
    a = draw(st.integers(min_value=low, max_value=high - 1))
    b = draw(st.integers(min_value=a + 1, max_value=high))
    # Sunday may be spelled 7 as a range end.
    b_text = "7" if index == 4 and b == 6 and draw(st.booleans()) else value(b)
    return {
        "*": "*",
        "*/n": f"*/{step}",
        "a": value(a),
        "a-b": f"{value(a)}-{b_text}",
        "a-b/n": f"{value(a)}-{b_text}/{step}",
        "a/n": f"{value(a)}/{step}",
    }[shape]


@st.composite
def cron_expressions(draw):
    fields = []
    for index in range(5):
        # Mostly '*' in the day/month fields, or nearly nothing would ever match in a window.
        if index >= 2 and draw(st.integers(0, 3)) > 0:
            fields.append("*")
            continue
        elements = draw(st.lists(_element(index), min_size=1, max_size=3))
        fields.append(",".join(elements))
    expr = " ".join(fields)
    try:
        validate(cron(expr))
    except InvalidSchedule:
        assume(False)
    return expr


_ZONES = (NY, BERLIN, "Australia/Lord_Howe", "Pacific/Apia", "America/Sao_Paulo", "UTC")
_TRANSITIONS = {z: cron_oracle.find_transitions(z, 2000, 2040) for z in _ZONES}


@st.composite
def windows(draw):
    zone = draw(st.sampled_from(_ZONES))
    if _TRANSITIONS[zone] and draw(st.booleans()):
        centre = draw(st.sampled_from(_TRANSITIONS[zone]))
    else:
        centre = utc(2000, 1, 1) + timedelta(minutes=draw(st.integers(0, 41 * 525_600)))
    start = centre - timedelta(seconds=draw(st.integers(0, 86_400)))
    return zone, start, start + timedelta(hours=draw(st.integers(1, 30)))


@settings(PROPERTY, max_examples=300)
@given(expr=cron_expressions(), window=windows())
def test_occurrences_equal_the_oracle_for_random_expressions(expr, window):
    zone, after, until = window
    spec = cron(expr, zone)
    got = list(occurrences(spec, after, until))
    assert got == cron_oracle.oracle_occurrences(expr, zone, after, until)
    assert all(t.tzinfo is UTC for t in got)
    assert got == sorted(set(got))  # ascending, no duplicates
    first = next_after(spec, after)
    if got:
        assert first == got[0]
    else:
        assert first is None or first > until


@settings(PROPERTY, max_examples=300)
@given(
    expr=cron_expressions(),
    start=st.datetimes(min_value=NAIVE.replace(year=1971), max_value=NAIVE.replace(year=2090)),
)
def test_naive_matching_agrees_with_croniter(expr, start):
    # In UTC there is no DST, so croniter (which ADR 0009 puts behind us) and our
    # fast matcher over croniter's own field expansion must agree exactly.
    expected = croniter(expr, start).get_next(datetime)
    got = next_after(cron(expr), start.replace(tzinfo=UTC))
    assert got == expected.replace(tzinfo=UTC)
