"""A brute-force cron oracle for the DST policy of ADR 0009.

Independent of croniter and of app.domain.occurrences by construction: it parses the five
fields itself and decides every UTC minute of a window one at a time. It is slow on purpose
and meant to be obviously right, not clever:

* walk each UTC minute ``t`` in (after, until];
* read the wall clock at ``t`` with zoneinfo (``fold`` says whether this is the second pass
  through a repeated wall time);
* **gap**: if the wall clock jumped forward between ``t - 1 min`` and ``t``, the skipped wall
  minutes never existed; if any of them matches, ``t`` (the first instant after the gap) is
  due, once;
* **match**: if the wall minute at ``t`` matches, ``t`` is due, except the second pass
  (``fold == 1``) of a *fixed-time* expression (no ``*`` in the minute or hour field).

Supports the grammar pgsched accepts: ``*``, numbers, ``a-b``, ``*/n``, ``a-b/n``, ``a/n``,
comma lists, JAN-DEC and SUN-SAT names, day-of-week 7 = Sunday, and the @aliases. Day fields:
when both are restricted (neither is ``*``) a day matches if either matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

MINUTE = timedelta(minutes=1)

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
NAMES = [
    {},
    {},
    {},
    {
        m: i + 1
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
        )
    },
    {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
]
# (first, last) of each field; day-of-week is 0-6 for '*' and 'a/n', 7 may be written.
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


def _number(token: str, index: int) -> int:
    return int(token) if token.isdigit() else NAMES[index][token]


def parse_field(text: str, index: int) -> frozenset[int]:
    first, last = BOUNDS[index]
    values: set[int] = set()
    for part in text.lower().split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = first, last
        elif "-" in base:
            low, high = base.split("-")
            start, end = _number(low, index), _number(high, index)
        else:
            start = _number(base, index)
            end = last if step_text else start
        values.update(range(start, end + 1, step))
    if index == 4:
        values = {v % 7 for v in values}
    return frozenset(values)


@dataclass(frozen=True)
class OracleCron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_star: bool
    dow_star: bool
    fixed_time: bool

    @classmethod
    def parse(cls, expr: str) -> OracleCron:
        text = ALIASES.get(expr.strip().lower(), expr)
        fields = text.split()
        assert len(fields) == 5, expr
        sets = [parse_field(f, i) for i, f in enumerate(fields)]
        return cls(
            *sets,
            dom_star=fields[2] == "*",
            dow_star=fields[4] == "*",
            fixed_time="*" not in fields[0] and "*" not in fields[1],
        )

    def matches(self, wall: datetime) -> bool:
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        dom_ok = wall.day in self.days
        dow_ok = (wall.weekday() + 1) % 7 in self.weekdays  # Python Monday=0 -> cron 1
        if self.dom_star and self.dow_star:
            return True
        if self.dom_star:
            return dow_ok
        if self.dow_star:
            return dom_ok
        return dom_ok or dow_ok


@dataclass(frozen=True)
class Minute:
    """One real UTC minute and what the wall clock showed."""

    instant: datetime  # aware UTC
    wall: datetime  # naive local wall time
    fold: int  # 1 on the second pass through a repeated wall time
    skipped: tuple[datetime, ...]  # wall minutes jumped over just before this instant


def walk(tz_name: str, after: datetime, until: datetime) -> list[Minute]:
    """Every whole UTC minute in (after, until] with its wall clock reading."""
    tz = ZoneInfo(tz_name)
    t = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    previous_wall = (t - MINUTE).astimezone(tz).replace(tzinfo=None)
    minutes = []
    while t <= until:
        local = t.astimezone(tz)
        wall = local.replace(tzinfo=None)
        skipped = []
        m = previous_wall + MINUTE
        while m < wall:  # only true when the clock jumped forward
            skipped.append(m)
            m += MINUTE
        minutes.append(Minute(t, wall, local.fold, tuple(skipped)))
        previous_wall = wall
        t += MINUTE
    return minutes


def evaluate(cron: OracleCron, minutes: list[Minute]) -> list[datetime]:
    due = []
    for m in minutes:
        on_time = cron.matches(m.wall) and not (cron.fixed_time and m.fold == 1)
        in_gap = bool(m.skipped) and any(cron.matches(s) for s in m.skipped)
        if on_time or in_gap:
            due.append(m.instant)
    return due


def oracle_occurrences(expr: str, tz_name: str, after: datetime, until: datetime) -> list[datetime]:
    return evaluate(OracleCron.parse(expr), walk(tz_name, after, until))


def find_transitions(tz_name: str, first_year: int, last_year: int) -> list[datetime]:
    """UTC instants in [first_year, last_year] where the UTC offset changes.

    Scans day by day, then bisects to the second. (Would miss two changes within one day
    that cancel out; no zone under test has one.)
    """
    tz = ZoneInfo(tz_name)

    def offset(t: datetime) -> timedelta | None:
        return t.astimezone(tz).utcoffset()

    found = []
    day = datetime(first_year, 1, 1, tzinfo=UTC)
    end = datetime(last_year + 1, 1, 1, tzinfo=UTC)
    while day < end:
        following = day + timedelta(days=1)
        if offset(day) != offset(following):
            low, high = day, following  # offset(low) is the old one, offset(high) the new one
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                middle = middle.replace(microsecond=0)
                if offset(middle) == offset(low):
                    low = middle
                else:
                    high = middle
            found.append(high)
        day = following
    return found
