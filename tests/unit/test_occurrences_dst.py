"""ADR 0009 validation: occurrences() against a brute-force oracle at every DST transition.

For each zone, every UTC-offset transition from 2000 to 2040 is found by scanning zoneinfo
(cron_oracle.find_transitions); zones without transitions (UTC, Asia/Kolkata) contribute
sample days instead. Around each one, for each expression, ``occurrences()`` over a
+-1 day window must equal the oracle exactly, and ``next_after()`` started from points
inside the gap/fold (and at odd seconds) must equal the oracle's next occurrence.

This is the DST acceptance check of ADR 0009 ("A3" in its printed lines). The number of
(zone, transition, expression) cases is printed even without ``-s``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pgsched.app.domain.occurrences import ScheduleSpec, next_after, occurrences

try:  # tests/unit may or may not become a package; work either way
    from . import cron_oracle
except ImportError:
    import cron_oracle

FIRST_YEAR, LAST_YEAR = 2000, 2040

# The core zones and expressions: US and EU DST, a 30-minute shift, a skipped day, no DST.
CORE_ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Pacific/Apia",  # DST 2010-2021, and skipped all of 2011-12-30
    "Asia/Kolkata",  # no transitions: sample days
    "UTC",  # no transitions: sample days
)
CORE_EXPRESSIONS = ("30 2 * * *", "30 1 * * *", "0 * * * *", "*/15 * * * *", "0 12 * * 0")

# More shapes of transition: at midnight (Sao_Paulo, Havana), 2-hour shift (Troll),
# half-hour offset with 00:01 transitions until 2011 (St_Johns), Europe's 01:00 UTC (London).
EXTRA_ZONES = (
    "America/Sao_Paulo",
    "America/Havana",
    "Antarctica/Troll",
    "America/St_Johns",
    "Europe/London",
)
# Fixed-time at the gap edges and with lists/ranges; wildcards whose matches fall inside a
# gap without coinciding with its end (`5 * * * *`, `0 */2 * * *`); wildcard minute under a
# fixed hour (`*/30 2 * * *`, real-time per Debian); midnight; OR of day fields.
EXTRA_EXPRESSIONS = (
    "0 2 * * *",
    "0 0 * * *",
    "0,30 1-3 * * *",
    "5 * * * *",
    "0 */2 * * *",
    "*/30 2 * * *",
    "59 23 * * *",
    "15 2 1-7 * sun",
)

HALF_WINDOW = timedelta(days=1)
SAMPLE_DAYS = ((1, 15), (3, 31), (6, 30), (10, 31))  # (month, day) for zones without changes
# next_after() restarts: before, at and inside gaps/folds (up to Troll's 2 h), odd seconds.
PROBES = tuple(
    timedelta(seconds=s) for s in (-3601, -60, -30, 0, 1, 30 * 60 - 1, 59 * 60, 61 * 60, 7259)
)


def _centres(zone: str) -> list[datetime]:
    transitions = cron_oracle.find_transitions(zone, FIRST_YEAR, LAST_YEAR)
    if transitions:
        return transitions
    return [
        datetime(year, month, day, 12, tzinfo=UTC)
        for year in range(FIRST_YEAR, LAST_YEAR + 1)
        for month, day in SAMPLE_DAYS
    ]


def _fmt(instants: list[datetime], zone: str) -> list[str]:
    tz = ZoneInfo(zone)
    return [t.astimezone(tz).isoformat() for t in instants]


def test_occurrences_match_oracle_at_every_transition_2000_2040(capsys, record_property):
    started = time.perf_counter()
    parsed = {e: cron_oracle.OracleCron.parse(e) for e in CORE_EXPRESSIONS + EXTRA_EXPRESSIONS}
    core_cases = extra_cases = probes = occurrences_seen = 0
    per_zone: dict[str, int] = {}
    deviations: list[str] = []

    for zone in CORE_ZONES + EXTRA_ZONES:
        centres = _centres(zone)
        per_zone[zone] = len(centres)
        for centre in centres:
            after, until = centre - HALF_WINDOW, centre + HALF_WINDOW
            minutes = cron_oracle.walk(zone, after, until)
            for expr, oracle_cron in parsed.items():
                spec = ScheduleSpec("cron", cron=expr, timezone=zone)
                expected = cron_oracle.evaluate(oracle_cron, minutes)
                actual = list(occurrences(spec, after, until))
                occurrences_seen += len(actual)
                if actual != expected:
                    missing = sorted(set(expected) - set(actual))
                    extra = sorted(set(actual) - set(expected))
                    deviations.append(
                        f"{zone} {centre:%Y-%m-%d %H:%M}Z {expr!r}: missing {_fmt(missing, zone)}"
                        f" extra {_fmt(extra, zone)}"
                        f"{' (order/duplicates)' if not missing and not extra else ''}"
                    )
                for delta in PROBES:
                    start = centre + delta
                    wanted = next((t for t in expected if t > start), None)
                    if wanted is None:  # the answer lies outside the oracle's window
                        continue
                    probes += 1
                    got = next_after(spec, start)
                    if got != wanted:
                        deviations.append(
                            f"{zone} {expr!r} next_after({start.isoformat()}) = {got}, "
                            f"oracle {wanted}"
                        )
                if zone in CORE_ZONES and expr in CORE_EXPRESSIONS:
                    core_cases += 1
                else:
                    extra_cases += 1

    elapsed = time.perf_counter() - started
    total = core_cases + extra_cases
    record_property("dst_cases_core", core_cases)
    record_property("dst_cases_total", total)
    with capsys.disabled():
        print(
            f"\n[A3 DST oracle] {total} (zone, transition, expression) cases, "
            f"{len(deviations)} deviations; core 6 zones x 5 expressions: {core_cases} cases; "
            f"{probes} next_after restarts; {occurrences_seen} occurrences compared; "
            f"{elapsed:.1f} s\n[A3 DST oracle] windows per zone: "
            + ", ".join(f"{z}={n}" for z, n in per_zone.items())
        )

    assert not deviations, f"{len(deviations)} deviations from ADR 0009:\n" + "\n".join(
        deviations[:20]
    )
    # Guard against a scan that silently finds nothing. Lower bounds from past transitions
    # only (2000-2025), so a tzdata change to future rules cannot break this.
    assert per_zone["America/New_York"] >= 52
    assert per_zone["Europe/Berlin"] >= 52
    assert per_zone["Australia/Lord_Howe"] >= 52
    assert per_zone["Pacific/Apia"] >= 23  # DST 2010-2021 plus the 2011-12-30 jump
    assert per_zone["UTC"] == per_zone["Asia/Kolkata"] == 41 * len(SAMPLE_DAYS)
    assert core_cases >= 2400  # the core set's expected order of magnitude
