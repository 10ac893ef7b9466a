"""Schedule occurrences: the instants at which a schedule is due.

This module owns the *meaning* of a schedule:

* the cron grammar pgsched accepts (5 fields or an ``@alias``) and the errors for the rest;
* how a cron expression in an IANA time zone maps to real instants, including the DST
  gap and fold policy of ADR 0009 (docs/adr/0009-cron-semantics-and-dst.md);
* fixed-interval and one-off schedules, the optional ``starts_at``/``ends_at`` window;
* the deterministic per-occurrence jitter.

It must stay pure: no I/O, no database, no logging, and no reads of the clock. Every
instant is an argument, so the ticker, the API preview and the tests get the same answer
for the same input. Every datetime in and out is timezone-aware; outputs are in UTC.

croniter parses and expands the cron fields (ADR 0009). The walk over
local wall time and the DST policy are ours, because croniter 7.0.0 deviates from the policy
(it fires fixed-time jobs twice at a fall-back fold, and skips gap times when the hour field
is '*') and costs 40-190 us per ``get_next`` where the ticker needs a few us for 100k
schedules per minute boundary. ADR 0009 lists the deviations we correct.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Final, Literal, NamedTuple
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterError, croniter

__all__ = [
    "InvalidSchedule",
    "ScheduleSpec",
    "jitter_offset",
    "next_after",
    "occurrences",
    "preview",
    "validate",
]

Kind = Literal["cron", "interval", "once"]


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """What a schedule says, independent of how it is stored.

    ``kind`` selects which of the other fields apply:

    * ``cron``: ``cron`` (5 fields or an alias) evaluated in ``timezone``;
    * ``interval``: ``anchor + k * interval_seconds`` for k >= 0 (``anchor`` defaults to
      ``starts_at``); ``timezone`` is validated but irrelevant, an interval is real time;
    * ``once``: the single instant ``run_at``.

    ``starts_at``/``ends_at`` are inclusive bounds on occurrences for every kind.
    """

    kind: Kind
    cron: str | None = None
    timezone: str = "UTC"
    interval_seconds: int | None = None
    anchor: datetime | None = None
    run_at: datetime | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None


class InvalidSchedule(ValueError):
    """A schedule that cannot be evaluated. ``field`` names the ScheduleSpec field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --------------------------------------------------------------------------------------------
# Cron grammar
# --------------------------------------------------------------------------------------------

# Aliases are kept as written in the normalised spec (the API round-trips what the user
# typed) and expanded only when compiled. @reboot has no meaning for a server-side
# scheduler, and seconds/years fields are deliberately outside the grammar.
_ALIASES: Final[dict[str, str]] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES: Final[dict[str, int]] = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DOW_NAMES: Final[dict[str, int]] = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}


@dataclass(frozen=True, slots=True)
class _FieldRule:
    label: str
    low: int
    high: int  # highest value the text may use (day-of-week: 7, another spelling of Sunday)
    last: int  # highest value after normalisation (day-of-week: 6)
    names: dict[str, int]


_FIELDS: Final[tuple[_FieldRule, ...]] = (
    _FieldRule("minute", 0, 59, 59, {}),
    _FieldRule("hour", 0, 23, 23, {}),
    _FieldRule("day-of-month", 1, 31, 31, {}),
    _FieldRule("month", 1, 12, 12, _MONTH_NAMES),
    _FieldRule("day-of-week", 0, 7, 6, _DOW_NAMES),
)

# One list element: "*", "*/n", "a", "a-b", "a-b/n" or "a/n" (a, b: numbers or names).
_ELEMENT_RE: Final = re.compile(r"^(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?$")
# Extensions croniter (and Quartz) accept but pgsched does not: each would need its own
# DST reasoning and oracle support, and none is portable across cron implementations.
_UNSUPPORTED_HINTS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"\?"), "'?' is Quartz syntax; use '*'"),
    (re.compile(r"#"), "'#' (nth weekday of the month) is not supported"),
    (re.compile(r"^(?:[0-9a-z]*l|l[0-9-]*)$"), "'L' (last day) is not supported"),
    (re.compile(r"^(?:[0-9]+w|w[0-9]+)$"), "'W' (nearest weekday) is not supported"),
    (re.compile(r"^[hr](?:\(|/|$)"), "'H'/'R' (hashed or random values) are not supported"),
)

_ANY_DAY: Final = 0  # both day fields are '*'
_DOM_ONLY: Final = 1  # day-of-week is '*': day-of-month decides
_DOW_ONLY: Final = 2  # day-of-month is '*': day-of-week decides
_DOM_OR_DOW: Final = 3  # both restricted: standard cron OR

_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True, slots=True)
class _Cron:
    """A compiled 5-field expression: sorted value tuples plus sets for O(1) membership."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday
    minute_set: frozenset[int]
    hour_set: frozenset[int]
    day_set: frozenset[int]
    month_set: frozenset[int]
    weekday_set: frozenset[int]
    day_mode: int
    # ADR 0009: fixed-time expressions (no '*' in the minute or hour field) run once at a
    # fall-back fold; all others run on every real instant whose wall time matches.
    fixed_time: bool
    every_minute: bool


def _normalise_cron(text: str) -> tuple[str, str]:
    """Return (normalised text as the user wrote it, 5-field expansion)."""
    collapsed = " ".join(text.split())
    if not collapsed:
        raise InvalidSchedule("cron", "must not be empty")
    if collapsed.startswith("@"):
        alias = collapsed.lower()
        if alias == "@reboot":
            raise InvalidSchedule("cron", "@reboot is not supported: a scheduler has no boot")
        if alias not in _ALIASES:
            known = ", ".join(sorted(_ALIASES))
            raise InvalidSchedule("cron", f"unknown alias {collapsed!r}; known aliases: {known}")
        return alias, _ALIASES[alias]
    fields = collapsed.split(" ")
    if len(fields) != len(_FIELDS):
        raise InvalidSchedule(
            "cron",
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
            f" in {collapsed!r}; seconds and year fields are not supported",
        )
    return collapsed, collapsed


def _reject_extension(element: str, rule: _FieldRule, expr: str) -> None:
    for marker, hint in _UNSUPPORTED_HINTS:
        if marker.search(element):
            raise InvalidSchedule("cron", f"{hint} (in {rule.label} field of {expr!r})")


def _field_value(token: str, element: str, rule: _FieldRule, expr: str) -> int:
    if token.isdigit():
        value = int(token)
    elif token in rule.names:
        value = rule.names[token]
    else:
        _reject_extension(element, rule, expr)
        raise InvalidSchedule("cron", f"{rule.label} value {token!r} is not valid in {expr!r}")
    if not rule.low <= value <= rule.high:
        raise InvalidSchedule(
            "cron",
            f"{rule.label} value {token!r} is out of range {rule.low}-{rule.high} in {expr!r}",
        )
    return value


def _check_field(text: str, rule: _FieldRule, expr: str) -> None:
    """Reject everything outside the portable grammar before croniter sees it.

    croniter accepts more than we want to promise: "5-5" means the *whole* field to
    croniter (minute 5 to Vixie cron), reversed ranges wrap, and L/W/#/H extensions exist.
    Rejecting them keeps every accepted expression meaning the same thing in croniter,
    Vixie/Debian cron and our oracle.
    """
    lowered = text.lower()
    for element in lowered.split(","):
        match = _ELEMENT_RE.match(element)
        if match is None:
            _reject_extension(element, rule, expr)
            raise InvalidSchedule("cron", f"{rule.label} field {text!r} is malformed in {expr!r}")
        star, first, second, step = match.groups()
        if step is not None and int(step) == 0:
            raise InvalidSchedule("cron", f"{rule.label} step must be >= 1 in {expr!r}")
        if star is not None:
            continue
        low = _field_value(first, element, rule, expr)
        if second is not None:
            high = _field_value(second, element, rule, expr)
            if low == high:
                raise InvalidSchedule(
                    "cron",
                    f"{rule.label} range {first}-{second} is ambiguous (croniter reads an equal"
                    f" range as the whole field); write the single value in {expr!r}",
                )
            if low > high:
                raise InvalidSchedule(
                    "cron",
                    f"{rule.label} range {first}-{second} is reversed; cron ranges do not wrap,"
                    f" use a list such as '{first}-{rule.last},{rule.low}-{second}' in {expr!r}",
                )
        elif step is not None and low > rule.last:
            raise InvalidSchedule(
                "cron", f"{rule.label} step start {first!r} must be <= {rule.last} in {expr!r}"
            )


def _expanded_values(raw: object, rule: _FieldRule, expr: str) -> tuple[int, ...]:
    if isinstance(raw, list) and "*" in raw:  # "*" alone, or a list such as "*,5"
        return tuple(range(rule.low, rule.last + 1))
    if not isinstance(raw, list) or not all(type(value) is int for value in raw):
        raise InvalidSchedule("cron", f"{rule.label} field of {expr!r} did not expand to numbers")
    # croniter already folds day-of-week 7 into 0 (Sunday); keep that guarantee local.
    values = tuple(sorted({value % 7 if rule.high == 7 else value for value in raw}))
    if not values or values[0] < rule.low or values[-1] > rule.last:
        raise InvalidSchedule("cron", f"{rule.label} field of {expr!r} expanded out of range")
    return values


def _can_match(days: tuple[int, ...], months: tuple[int, ...]) -> bool:
    # February counts with 29 days: a leap-day schedule is valid, it just fires rarely.
    longest = max(29 if month == 2 else _DAYS_IN_MONTH[month - 1] for month in months)
    return days[0] <= longest


@lru_cache(maxsize=16384)
def _compile_cron(text: str) -> tuple[str, _Cron]:
    """Parse ``text`` once per process (~100 us, mostly croniter); the ticker evaluates the
    same few thousand expressions every minute. Invalid text is not cached and re-raises."""
    normalised, expr = _normalise_cron(text)
    fields = expr.split(" ")
    for field_text, rule in zip(fields, _FIELDS, strict=True):
        _check_field(field_text, rule, expr)
    try:
        expanded, _nth = croniter.expand(expr)
    except CroniterError as exc:
        raise InvalidSchedule("cron", f"{expr!r} is not a valid cron expression: {exc}") from exc
    minutes, hours, days, months, weekdays = (
        _expanded_values(raw, rule, expr) for raw, rule in zip(expanded, _FIELDS, strict=True)
    )
    dom_text, dow_text = fields[2], fields[4]
    dom_star, dow_star = dom_text == "*", dow_text == "*"
    # croniter collapses a day field that lists every value to '*' only when the *other* day
    # field's text contains a '*', and Vixie ORs the two fields only when neither starts with
    # '*'. The spellings on which they disagree are exactly "every day written out" next to
    # a restricted other field; under OR that means "every day", almost surely a mistake.
    if not dom_star and not dow_star:
        for label, values, size in (("day-of-month", days, 31), ("day-of-week", weekdays, 7)):
            if len(values) == size:
                raise InvalidSchedule(
                    "cron",
                    f"{label} {expr!r} covers every day while the other day field is restricted;"
                    " cron ORs the two day fields, so this would run every day. Write '*'",
                )
    if dow_star and not dom_star and not _can_match(days, months):
        raise InvalidSchedule("cron", f"{expr!r} can never match: no such day in those months")
    if dom_star:
        day_mode = _ANY_DAY if dow_star else _DOW_ONLY
    else:
        day_mode = _DOM_ONLY if dow_star else _DOM_OR_DOW
    compiled = _Cron(
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=weekdays,
        minute_set=frozenset(minutes),
        hour_set=frozenset(hours),
        day_set=frozenset(days),
        month_set=frozenset(months),
        weekday_set=frozenset(weekdays),
        day_mode=day_mode,
        fixed_time="*" not in fields[0] and "*" not in fields[1],
        every_minute=(
            len(minutes) == 60 and len(hours) == 24 and len(months) == 12 and day_mode == _ANY_DAY
        ),
    )
    return normalised, compiled


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month - 1]


def _day_matches(cron: _Cron, year: int, month: int, day: int) -> bool:
    mode = cron.day_mode
    if mode == _ANY_DAY:
        return True
    if mode == _DOM_ONLY:
        return day in cron.day_set
    # date.toordinal() is 1 for Monday 0001-01-01, so ordinal % 7 is the cron weekday
    # (0 = Sunday) without building a weekday table.
    weekday = date(year, month, day).toordinal() % 7
    if mode == _DOW_ONLY:
        return weekday in cron.weekday_set
    return day in cron.day_set or weekday in cron.weekday_set


# A valid expression matches at least once every 8 years (29 February across a
# non-leap century year); give up after that instead of looping forever.
_MAX_YEARS_BETWEEN_MATCHES: Final = 9
_LAST_YEAR: Final = 9998  # keeps every "+ 1 day" inside datetime's range


def _next_local(cron: _Cron, start: datetime) -> datetime | None:
    """Earliest naive wall-clock minute >= ``start`` (minute-aligned) that the fields match.

    This is the naive-time matching croniter does in ``_calc``, over croniter's own
    expansion, written against plain ints: a few us instead of croniter's 40-190 us.
    """
    year, month, day, hour, minute = start.year, start.month, start.day, start.hour, start.minute
    last_year = min(year + _MAX_YEARS_BETWEEN_MATCHES, _LAST_YEAR)
    while year <= last_year:
        if month not in cron.month_set:
            index = bisect_left(cron.months, month)
            if index == len(cron.months):
                year, month = year + 1, cron.months[0]
            else:
                month = cron.months[index]
            day, hour, minute = 1, 0, 0
            continue
        if day > _days_in_month(year, month):
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            day, hour, minute = 1, 0, 0
            continue
        if not _day_matches(cron, year, month, day):
            day, hour, minute = day + 1, 0, 0
            continue
        if hour not in cron.hour_set:
            index = bisect_left(cron.hours, hour)
            if index == len(cron.hours):
                day, hour, minute = day + 1, 0, 0
                continue
            hour, minute = cron.hours[index], 0
        if minute not in cron.minute_set:
            index = bisect_left(cron.minutes, minute)
            if index == len(cron.minutes):
                hour, minute = hour + 1, 0
                if hour == 24:
                    day, hour = day + 1, 0
                continue
            minute = cron.minutes[index]
        return datetime(year, month, day, hour, minute)  # noqa: DTZ001 - naive wall time
    return None


# --------------------------------------------------------------------------------------------
# Time zones and their transitions
# --------------------------------------------------------------------------------------------

_SECOND: Final = timedelta(seconds=1)
_MINUTE: Final = timedelta(minutes=1)
_HOUR: Final = timedelta(hours=1)
_MICROSECOND: Final = timedelta(microseconds=1)
_ZERO: Final = timedelta(0)
# A fall-back fold never repeats more than a day of wall time; look this far back for the
# transition that started the current fold.
_FOLD_LOOKBACK: Final = timedelta(days=2)
# Host-specific or non-geographic keys: a stored schedule must mean the same on every host.
_REJECTED_ZONES: Final = frozenset({"localtime", "posixrules", "Factory"})
# Zones whose offset never changes by definition: skip the transition machinery.
_CONSTANT_ZONES: Final = frozenset(
    {"UTC", "UCT", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich", "Universal", "Zulu"}
)


@dataclass(frozen=True, slots=True)
class _Zone:
    key: str
    tz: ZoneInfo
    constant_offset: timedelta | None


@dataclass(frozen=True, slots=True)
class _Transition:
    at: datetime  # naive UTC: the first instant with the new offset
    before: timedelta
    after: timedelta


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    # Read once per process (~50 ms). A closed list beats probing ZoneInfo(key) with user
    # input, which would also accept host files such as "localtime".
    return frozenset(available_timezones()) - _REJECTED_ZONES


def is_known_zone(key: str) -> bool:
    """Whether `key` is a time zone a schedule may name (an IANA name, no host file)."""
    return key in _known_zones()


@lru_cache(maxsize=1024)
def _zone(key: str) -> _Zone:
    if key not in _known_zones():
        raise InvalidSchedule("timezone", f"{key!r} is not a known IANA time zone name")
    tz = ZoneInfo(key)
    constant: timedelta | None = None
    if key in _CONSTANT_ZONES or key.startswith("Etc/"):
        constant = _offset(tz, datetime(2000, 1, 1))  # noqa: DTZ001 - naive UTC
    return _Zone(key, tz, constant)


def _offset(tz: ZoneInfo, instant: datetime) -> timedelta:
    """UTC offset in force at ``instant`` (naive UTC)."""
    offset = instant.replace(tzinfo=UTC).astimezone(tz).utcoffset()
    if offset is None:  # pragma: no cover - ZoneInfo always knows its offset
        raise RuntimeError(f"{tz.key} has no UTC offset at {instant}")
    return offset


def _bisect_transition(tz: ZoneInfo, low: datetime, high: datetime, before: timedelta) -> datetime:
    """First second in (low, high] whose offset differs from ``before`` (offset at ``low``)."""
    low_s, high_s = 0, int((high - low) / _SECOND)
    while high_s - low_s > 1:
        middle = (low_s + high_s) // 2
        if _offset(tz, low + middle * _SECOND) == before:
            low_s = middle
        else:
            high_s = middle
    return low + high_s * _SECOND


@lru_cache(maxsize=8192)
def _year_transitions(key: str, year: int) -> tuple[tuple[datetime, ...], tuple[_Transition, ...]]:
    """Offset changes with ``at`` in [1 Jan ``year``, 1 Jan ``year + 1``) UTC.

    zoneinfo has no public transition list, so we sample the offset hourly and bisect each
    change to the second (~8 ms per zone-year, cached). No two real transitions are less
    than an hour apart, so hourly sampling cannot miss a pair that cancels out.
    """
    if not 1 < year <= _LAST_YEAR:
        return (), ()
    tz = ZoneInfo(key)
    start = datetime(year, 1, 1)  # noqa: DTZ001 - naive UTC
    end = datetime(year + 1, 1, 1)  # noqa: DTZ001 - naive UTC
    found: list[_Transition] = []
    previous = start - _SECOND
    previous_offset = _offset(tz, previous)
    probe = start
    while probe <= end:
        offset = _offset(tz, probe)
        if offset != previous_offset:
            at = _bisect_transition(tz, previous, probe, previous_offset)
            if at < end:
                found.append(_Transition(at, previous_offset, offset))
        previous, previous_offset = probe, offset
        probe += _HOUR
    return tuple(t.at for t in found), tuple(found)


def _first_transition(key: str, low: datetime, high: datetime) -> _Transition | None:
    """The earliest transition with low < at <= high."""
    for year in range(low.year, min(high.year, _LAST_YEAR) + 1):
        times, transitions = _year_transitions(key, year)
        index = bisect_right(times, low)
        if index < len(times):
            return transitions[index] if times[index] <= high else None
    return None


def _last_transition(key: str, at: datetime, lookback: timedelta) -> _Transition | None:
    """The latest transition with at - lookback < transition.at <= at."""
    low = at - lookback
    for year in range(at.year, low.year - 1, -1):
        times, transitions = _year_transitions(key, year)
        index = bisect_right(times, at) - 1
        if index >= 0:
            return transitions[index] if times[index] > low else None
    return None


def _minute_after(value: datetime) -> datetime:
    """First whole minute strictly after ``value``."""
    return value.replace(second=0, microsecond=0) + _MINUTE


def _minute_at_or_after(value: datetime) -> datetime:
    if value.second == 0 and value.microsecond == 0:
        return value
    return value.replace(second=0, microsecond=0) + _MINUTE


def _cron_next(cron: _Cron, zone: _Zone, after: datetime) -> datetime | None:
    """First nominal occurrence strictly after ``after`` (aware UTC), per ADR 0009.

    We walk one *offset segment* at a time (the span between two UTC-offset transitions).
    Inside a segment wall time is UTC plus a constant, so the next match is a naive-time
    search. At a transition:

    * forward (gap): wall times in [at + before, at + after) do not exist; if the next match
      falls there, the occurrence is ``at``, the first real instant after the gap. One
      instant however many nonexistent matches map to it.
    * backward (fold): wall times in [at + after, at + before) repeat. Wildcard expressions
      match them again on the second pass; fixed-time ones skip them, having run at the
      first (fold=0) pass.

    croniter 7.0.0 gets the fold wrong for fixed-time jobs (runs twice); this is where we
    correct it, by never asking croniter about aware times at all.
    """
    constant = zone.constant_offset
    if constant is not None:
        if cron.every_minute and constant % _MINUTE == _ZERO:
            return _minute_after(after)  # '* * * * *' in UTC: pure arithmetic
        # _next_local only reads the wall-clock fields of its argument.
        local = _next_local(cron, _minute_after(after + constant))
        return None if local is None else (local - constant).replace(tzinfo=UTC)
    found = _zoned_cron_next(cron, zone, after.replace(tzinfo=None), after.astimezone(zone.tz))
    return None if found is None else found.replace(tzinfo=UTC)


def _zoned_cron_next(
    cron: _Cron, zone: _Zone, after: datetime, after_local: datetime
) -> datetime | None:
    """_cron_next for zones with transitions: ``after`` naive UTC, result naive UTC."""
    key = zone.key
    offset = after_local.utcoffset() or _ZERO  # never None: after_local is aware
    floor = _minute_after(after + offset)
    if cron.fixed_time:
        # `after` may sit inside the second pass of a fold that began before it.
        started = _last_transition(key, after, _FOLD_LOOKBACK)
        if started is not None and started.before > started.after:
            floor = max(floor, _minute_at_or_after(started.at + started.before))
    while True:
        local = _next_local(cron, floor)
        if local is None:
            return None
        instant = local - offset
        change = _first_transition(key, after, instant)
        if change is None:
            return instant
        if change.after > change.before and local < change.at + change.after:
            return change.at  # the match is in the gap: run at the first instant after it
        # Continue in the next segment, which starts at (and includes) change.at.
        after, offset = change.at, change.after
        floor = _minute_at_or_after(change.at + offset)
        if cron.fixed_time and change.before > change.after:
            floor = max(floor, _minute_at_or_after(change.at + change.before))


# --------------------------------------------------------------------------------------------
# Plans: a validated spec in the shape the hot path wants
# --------------------------------------------------------------------------------------------

# timedelta's own limit, rounded down to whole days; anything longer cannot be represented.
_MAX_INTERVAL_SECONDS: Final = 999_999_999 * 86_400


class _Plan(NamedTuple):
    """A checked spec in the shape the hot path wants. A NamedTuple, not a frozen dataclass:
    it is built on every call and a frozen dataclass __init__ costs ~2 us."""

    kind: Kind
    cron_text: str | None
    cron: _Cron | None
    zone: _Zone
    step: timedelta | None
    # Instants are aware with tzinfo *is* UTC: arithmetic and comparison between datetimes
    # sharing one tzinfo skip utcoffset(), so they cost the same as naive ones, and results
    # need no conversion on the way out.
    anchor: datetime | None
    run_at: datetime | None
    starts_at: datetime | None
    ends_at: datetime | None


def _spec_instant(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidSchedule(field, f"must be a datetime, got {type(value).__name__}")
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidSchedule(field, "must be timezone-aware; naive datetimes are ambiguous")
    return value.astimezone(UTC)


def _argument_instant(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware; naive datetimes are ambiguous")
    return value.astimezone(UTC)


def _forbid(spec: ScheduleSpec, kind: str, fields: tuple[str, ...]) -> None:
    for field in fields:
        if getattr(spec, field) is not None:
            raise InvalidSchedule(field, f"must not be set when kind is {kind!r}")


def _interval_fields(spec: ScheduleSpec, starts_at: datetime | None) -> tuple[timedelta, datetime]:
    _forbid(spec, "interval", ("cron", "run_at"))
    seconds = spec.interval_seconds
    if seconds is None:
        raise InvalidSchedule("interval_seconds", "is required when kind is 'interval'")
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidSchedule("interval_seconds", "must be an integer number of seconds")
    if seconds <= 0:
        raise InvalidSchedule("interval_seconds", f"must be > 0, got {seconds}")
    if seconds > _MAX_INTERVAL_SECONDS:
        raise InvalidSchedule("interval_seconds", f"must be <= {_MAX_INTERVAL_SECONDS}")
    anchor = _spec_instant(spec.anchor, "anchor")
    if anchor is None:
        # starts_at is the natural phase when no anchor is given; "now" is not an option,
        # this module may not read the clock.
        if starts_at is None:
            raise InvalidSchedule(
                "anchor", "is required when kind is 'interval' (or give starts_at)"
            )
        anchor = starts_at
    return _interval_step(seconds), anchor


@lru_cache(maxsize=1024)
def _interval_step(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)  # few distinct intervals; saves an allocation per call


def _once_fields(
    spec: ScheduleSpec, starts_at: datetime | None, ends_at: datetime | None
) -> datetime:
    _forbid(spec, "once", ("cron", "interval_seconds", "anchor"))
    run_at = _spec_instant(spec.run_at, "run_at")
    if run_at is None:
        raise InvalidSchedule("run_at", "is required when kind is 'once'")
    if (starts_at is not None and run_at < starts_at) or (ends_at is not None and run_at > ends_at):
        raise InvalidSchedule("run_at", "lies outside starts_at..ends_at, so it never runs")
    return run_at


def _plan(spec: ScheduleSpec) -> _Plan:
    kind = spec.kind
    if kind not in ("cron", "interval", "once"):
        raise InvalidSchedule("kind", f"must be 'cron', 'interval' or 'once', got {kind!r}")
    if not isinstance(spec.timezone, str):
        raise InvalidSchedule("timezone", "must be an IANA time zone name")
    zone = _zone(spec.timezone)
    starts_at = _spec_instant(spec.starts_at, "starts_at")
    ends_at = _spec_instant(spec.ends_at, "ends_at")
    if starts_at is not None and ends_at is not None and ends_at < starts_at:
        raise InvalidSchedule("ends_at", "must not be before starts_at")

    cron_text: str | None = None
    cron: _Cron | None = None
    step: timedelta | None = None
    anchor: datetime | None = None
    run_at: datetime | None = None
    if kind == "cron":
        _forbid(spec, kind, ("interval_seconds", "anchor", "run_at"))
        if spec.cron is None:
            raise InvalidSchedule("cron", "is required when kind is 'cron'")
        if not isinstance(spec.cron, str):
            raise InvalidSchedule("cron", f"must be a string, got {type(spec.cron).__name__}")
        cron_text, cron = _compile_cron(spec.cron)
    elif kind == "interval":
        step, anchor = _interval_fields(spec, starts_at)
    else:
        run_at = _once_fields(spec, starts_at, ends_at)
    return _Plan(
        kind=kind,
        cron_text=cron_text,
        cron=cron,
        zone=zone,
        step=step,
        anchor=anchor,
        run_at=run_at,
        starts_at=starts_at,
        ends_at=ends_at,
    )


def _next(plan: _Plan, after: datetime) -> datetime | None:
    """First occurrence strictly after ``after``; aware UTC in and out."""
    if plan.starts_at is not None and after < plan.starts_at:
        after = plan.starts_at - _MICROSECOND  # starts_at is inclusive
    found: datetime | None
    try:
        if plan.cron is not None:
            found = _cron_next(plan.cron, plan.zone, after)
        elif plan.step is not None and plan.anchor is not None:
            # Pure arithmetic, no iteration: k is the first multiple landing after `after`.
            k = max(0, (after - plan.anchor) // plan.step + 1)
            found = plan.anchor + k * plan.step
        else:
            found = plan.run_at if plan.run_at is not None and plan.run_at > after else None
    except OverflowError:  # past 9999-12-31: there is no next occurrence
        return None
    if found is not None and plan.ends_at is not None and found > plan.ends_at:
        return None
    return found


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def validate(spec: ScheduleSpec) -> ScheduleSpec:
    """Check ``spec`` and return its normalised form; raise InvalidSchedule naming the field.

    Normalisation: datetimes converted to UTC; cron whitespace collapsed and aliases
    lower-cased but *not* expanded (the API returns what the user wrote); an interval
    without ``anchor`` gets ``anchor = starts_at``. Idempotent.
    """
    plan = _plan(spec)
    return ScheduleSpec(
        kind=plan.kind,
        cron=plan.cron_text,
        timezone=plan.zone.key,
        interval_seconds=spec.interval_seconds if plan.kind == "interval" else None,
        anchor=plan.anchor,
        run_at=plan.run_at,
        starts_at=plan.starts_at,
        ends_at=plan.ends_at,
    )


def occurrences(spec: ScheduleSpec, after: datetime, until: datetime) -> Iterator[datetime]:
    """Every nominal occurrence t with ``after < t <= until``, ascending, without duplicates.

    Arguments are checked now, not on the first ``next()``.
    """
    plan = _plan(spec)
    low = _argument_instant(after, "after")
    high = _argument_instant(until, "until")
    return _iterate(plan, low, high)


def _iterate(plan: _Plan, low: datetime, high: datetime) -> Iterator[datetime]:
    current = low
    while True:
        upcoming = _next(plan, current)
        if upcoming is None or upcoming > high:
            return
        yield upcoming
        current = upcoming


def next_after(spec: ScheduleSpec, after: datetime) -> datetime | None:
    """First occurrence strictly after ``after``, or None when the schedule is exhausted."""
    return _next(_plan(spec), _argument_instant(after, "after"))


def preview(spec: ScheduleSpec, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` occurrences after ``after`` (fewer if the schedule ends)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    plan = _plan(spec)
    current = _argument_instant(after, "after")
    found: list[datetime] = []
    while len(found) < count:
        upcoming = _next(plan, current)
        if upcoming is None:
            break
        found.append(upcoming)
        current = upcoming
    return found


def jitter_offset(key: str, nominal: datetime, jitter_seconds: int) -> timedelta:
    """Deterministic delay in [0, jitter_seconds] for the occurrence ``nominal`` of ``key``.

    blake2b rather than hash(): the value must survive restarts (PYTHONHASHSEED) and agree
    between processes, so a re-materialised occurrence gets the same due time. ``nominal``
    is hashed as its UTC ISO form so equal instants in different zones agree.
    """
    if isinstance(jitter_seconds, bool) or not isinstance(jitter_seconds, int):
        raise TypeError("jitter_seconds must be an int")
    if jitter_seconds < 0:
        raise ValueError(f"jitter_seconds must be >= 0, got {jitter_seconds}")
    instant = _argument_instant(nominal, "nominal")
    if jitter_seconds == 0:
        return _ZERO
    material = f"{key}|{instant.isoformat()}".encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    # 64 bits mod (jitter + 1): the modulo bias is about jitter / 2**64, i.e. nil.
    return timedelta(seconds=int.from_bytes(digest, "big") % (jitter_seconds + 1))
