"""app.db.outage without a database: the backoff's bounds, and one log line per change."""

from __future__ import annotations

import logging

import psycopg
import pytest

from pgsched.app.db.outage import CAP_SECONDS, Availability, Backoff, refused


def test_backoff_grows_to_its_cap_and_jitters_fully() -> None:
    highest = Backoff(rng=lambda: 0.999999)
    ceilings = [highest.next() for _ in range(40)]
    assert ceilings[:3] == pytest.approx([0.1, 0.2, 0.4], rel=1e-3)
    assert max(ceilings) <= CAP_SECONDS and ceilings[-1] == pytest.approx(CAP_SECONDS, rel=1e-3)
    assert Backoff(rng=lambda: 0.0).next() == 0.0, "full jitter: any delay down to zero"
    highest.reset()
    assert highest.next() == pytest.approx(0.1, rel=1e-3)


def test_an_outage_is_one_line_going_and_one_line_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    db = Availability(clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="pgsched.db")
    db.available()  # nothing to say while it never went away
    for _ in range(50):
        db.unavailable(psycopg.OperationalError("connection refused\nIs the server running?"))
        now[0] += 1.0
    db.available()
    db.available()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "database unavailable (connection refused); retrying until it is back",
        "database available again after 50.0 s",
    ]
    assert db.outages == 1 and not db.down


@pytest.mark.parametrize(
    ("message", "is_refusal"),
    [
        ('connection failed: FATAL:  password authentication failed for user "x"', True),
        ('connection failed: FATAL:  role "x" does not exist', True),
        ('connection failed: FATAL:  database "x" does not exist', True),
        ("failed to resolve host 'db.invalid': [Errno -2] Name or service not known", True),
        ("connection failed: connection to server at 127.0.0.1 failed: Connection refused", False),
        ("connection failed: FATAL:  the database system is starting up", False),
        ("connection failed: FATAL:  sorry, too many clients already", False),
        ("consuming input failed: server closed the connection unexpectedly", False),
    ],
)
def test_a_refused_dsn_is_told_from_an_outage(message: str, is_refusal: bool) -> None:
    assert refused(psycopg.OperationalError(message)) is is_refusal
