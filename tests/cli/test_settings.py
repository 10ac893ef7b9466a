"""Every variable app.settings reads, with a bad value: one line naming it, exit 2, no traceback.

One table drives two tests: the parsers in process (fast), and the real `pgsched` command in a
subprocess, a command that reads the variable, so that a value that slips through (started,
then crashed, or silently fell back to a default) fails here. A completeness test keeps the
table in step with the names app.settings and otel.config mention.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

from pgsched.app import settings
from pgsched.app.settings import SettingsError
from tests.cli.test_cli_input import _cli
from tests.conftest import ROOT


class Bad(NamedTuple):
    variable: str
    value: str
    command: str  # a `pgsched` command that reads the variable
    says: str  # what the one line says besides the name


VALID_URL = "postgresql://nobody@127.0.0.1:1/none"

TABLE = [
    # database
    Bad("DATABASE_URL", "", "worker", "DATABASE_URL is not set"),
    Bad("DATABASE_URL", "nonsense", "maintain", "must be a PostgreSQL URL"),
    Bad("DATABASE_URL", "postgresql://u:pw@h:abc/db", "ticker", "names port 'abc'"),
    # api
    Bad("PGSCHED_HTTP_HOST", " ", "api", "must not be empty"),
    Bad("PGSCHED_HTTP_PORT", "99999", "api", "must be a port number 1..65535, got '99999'"),
    Bad("PGSCHED_HTTP_MAX_BODY_BYTES", "abc", "api", "must be a whole number >= 1, got 'abc'"),
    Bad("PGSCHED_API_POOL_SIZE", "0", "api", "must be a whole number >= 1, got '0'"),
    Bad("PGSCHED_METRICS_SAMPLE_SECONDS", "-5", "api", "must be a number of seconds >= 0"),
    # worker
    Bad("PGSCHED_QUEUES", ",", "worker", "must be comma-separated queue names"),
    Bad("PGSCHED_WORKER_SLOTS", "abc", "worker", "must be a whole number 1..10000, got 'abc'"),
    Bad("PGSCHED_LEASE_SECONDS", "0", "worker", "must be a number of seconds > 0"),
    Bad("PGSCHED_SHUTDOWN_GRACE_SECONDS", "-1", "worker", "must be a number of seconds >= 0"),
    Bad("PGSCHED_HTTP_ALLOW", "not a host!", "worker", "not a CIDR, IP address or hostname"),
    Bad("PGSCHED_COMMAND_USER", "no-such-user-pgsched", "worker", "must name a user"),
    Bad("PGSCHED_SQL_DSN_REPORTS", "nonsense", "worker", "must be a PostgreSQL URL"),
    Bad("PGSCHED_IMPORT", "myapp.jobs,my app", "worker", "must be comma-separated module names"),
    # retention
    Bad("PGSCHED_MONTHS_AHEAD", "x", "maintain", "must be a whole number 1..120, got 'x'"),
    Bad("PGSCHED_RUN_RETENTION_DAYS", "thirty", "maintain", "whole number 1..36500"),
    Bad("PGSCHED_EVENT_RETENTION_DAYS", "0", "ticker", "whole number 1..36500, got '0'"),
    Bad("PGSCHED_ARCHIVE_DIR", "/dev/null", "maintain", "must be a directory"),
    # schedule defaults (api, run, apply, export) and the file `run` applies at start
    Bad("PGSCHED_DEFAULT_TIMEZONE", "Mars/Olympus", "api", "must be an IANA time zone name"),
    Bad("PGSCHED_DEFAULT_QUEUE", " ", "api", "must not be empty"),
    Bad("PGSCHED_DEFAULT_MAX_ATTEMPTS", "0", "api", "must be a whole number 1..100, got '0'"),
    Bad("PGSCHED_DEFAULT_RETRY_DELAY_SECONDS", "-1", "api", "must be a number of seconds >= 0"),
    Bad("PGSCHED_DEFAULT_RETRY_FACTOR", "0.5", "api", "must be a number 1..10, got '0.5'"),
    Bad("PGSCHED_DEFAULT_TIMEOUT_SECONDS", "soon", "api", "must be a number of seconds > 0"),
    Bad("PGSCHED_APPLY_FILE", "/no/such/schedules.yaml", "run", "must be a readable file"),
    # telemetry
    Bad("PGSCHED_METRICS_PORT", "abc", "worker", "must be a port number 0..65535"),
    Bad("PGSCHED_METRICS_HOST", " ", "ticker", "must be a host name or address, got ' '"),
    Bad("PGSCHED_LOG_FORMAT", "xml", "ticker", "must be one of auto, json, text, got 'xml'"),
    Bad("PGSCHED_LOG_LEVEL", "loud", "maintain", "must be one of DEBUG, INFO"),
    Bad("PGSCHED_RUN_LOG_LEVEL", "chatty", "worker", "must be one of DEBUG, INFO"),
    Bad("PGSCHED_TRACE_SQL", "maybe", "worker", "must be true or false, got 'maybe'"),
    Bad("OTEL_TRACES_EXPORTER", "zipkin", "worker", "must be otlp or none, got 'zipkin'"),
    Bad("OTEL_METRICS_EXPORTER", "prometheus", "ticker", "must be otlp or none"),
    Bad("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "maintain", "must be http/protobuf"),
    Bad("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc", "worker", "must be http/protobuf"),
    Bad("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json", "api", "must be http/protobuf"),
    Bad("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "worker", "must be an http://"),
    Bad("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "tempo", "ticker", "must be an http://"),
    Bad("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "ftp://m", "maintain", "must be an http://"),
    Bad("OTEL_METRIC_EXPORT_INTERVAL", "soon", "worker", "must be a whole number >= 1"),
]

# Read, but every value is a valid one: free text checked where it is used (a host to bind,
# a service name) or, per the OpenTelemetry specification, anything but "true" is false.
ANY_VALUE = {
    "PGSCHED_HTTP_TRUSTED_PROXIES",  # uvicorn takes IPs, networks and literal names
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
    "PGSCHED_SQL_JOB_PASSWORD",  # a password, sent when a sql job logs in
}
# Names otel.config builds per signal, and one of the PGSCHED_SQL_DSN_<NAME> family.
BUILT = {
    *(f"OTEL_{s}_EXPORTER" for s in ("TRACES", "METRICS")),
    *(
        f"OTEL_EXPORTER_OTLP_{s}_{k}"
        for s in ("TRACES", "METRICS")
        for k in ("PROTOCOL", "ENDPOINT")
    ),
    "PGSCHED_SQL_DSN_REPORTS",
}
IDS = [f"{b.variable}={b.value!r}" for b in TABLE]


def _parse_everything(env: Mapping[str, str]) -> None:
    """Each section, as the commands parse them (which command reads which: the table)."""
    settings.database_url(env)
    settings.api(env)
    settings.worker(env)
    settings.retention(env)
    settings.telemetry(env, "worker")
    settings.logs(env)
    settings.schedule_defaults(env)
    settings.apply_file(env)


def _one_line(message: str, bad: Bad) -> None:
    assert "\n" not in message.strip(), message
    assert bad.variable in message, message
    assert bad.says in message, message


@pytest.mark.parametrize("bad", TABLE, ids=IDS)
def test_each_parser_refuses_a_bad_value_by_name(bad: Bad) -> None:
    env = {"DATABASE_URL": VALID_URL, bad.variable: bad.value}
    with pytest.raises(SettingsError) as refused:
        _parse_everything(env)
    _one_line(str(refused.value), bad)


def test_the_defaults_parse() -> None:
    _parse_everything({"DATABASE_URL": VALID_URL})
    worker = settings.worker({})
    assert (worker.queues, worker.slots, worker.lease_seconds, worker.grace_seconds) == (
        ("default",),
        4,
        30.0,
        30.0,
    )
    retention = settings.retention({})
    assert (retention.months_ahead, retention.run_days, retention.event_days) == (3, 30, 90)
    assert retention.archive_dir is None
    api = settings.api({}, VALID_URL)
    assert (api.host, api.port, api.pool_max_size, api.metrics_sample_seconds) == (
        "127.0.0.1",
        8000,
        10,
        15.0,
    )
    assert settings.metrics_port({}) is None
    assert settings.logs({}) == settings.LogSettings("INFO", "auto")


def test_good_values_parse_as_meant() -> None:
    worker = settings.worker(
        {
            "PGSCHED_QUEUES": " a, b ",
            "PGSCHED_WORKER_SLOTS": "10000",
            "PGSCHED_LEASE_SECONDS": "0.5",
            "PGSCHED_SHUTDOWN_GRACE_SECONDS": "0",
        }
    )
    assert (worker.queues, worker.slots, worker.lease_seconds, worker.grace_seconds) == (
        ("a", "b"),
        10_000,
        0.5,
        0.0,
    )
    assert settings.metrics_port({"PGSCHED_METRICS_PORT": "0"}) == 0  # any free port
    assert settings.metrics_port({"PGSCHED_METRICS_PORT": ""}) is None
    assert settings.logs({"PGSCHED_LOG_LEVEL": "debug"}).level == "DEBUG"
    assert settings.schedule_defaults(
        {
            "PGSCHED_DEFAULT_TIMEZONE": "Europe/Berlin",
            "PGSCHED_DEFAULT_MAX_ATTEMPTS": "5",
            "PGSCHED_DEFAULT_RETRY_FACTOR": "1.5",
            "PGSCHED_DEFAULT_TIMEOUT_SECONDS": "90",
        }
    ) == {
        "timezone": "Europe/Berlin",
        "max_attempts": 5,
        "retry_factor": 1.5,
        "timeout_seconds": 90.0,
    }
    assert settings.schedule_defaults({}) == {}  # unset: the built-in defaults
    assert settings.api({"PGSCHED_DEFAULT_QUEUE": "q"}, VALID_URL).schedule_defaults == {
        "queue": "q"
    }
    assert settings.database_url({"DATABASE_URL": "postgres://u@h/d"}) == "postgresql://u@h/d"
    given = settings.database_url({}, "postgresql+psycopg://u@h/d")
    assert given == "postgresql://u@h/d"
    assert (
        settings.api({"PGSCHED_METRICS_SAMPLE_SECONDS": "0"}, VALID_URL).metrics_sample_seconds == 0
    )


@pytest.mark.parametrize(
    ("raw", "parse"),
    [
        ("²", lambda r: settings.whole(r, "N")),  # a digit to str.isdigit, not to int()
        ("1e3", lambda r: settings.whole(r, "N")),
        ("+3", lambda r: settings.whole(r, "N")),
        ("nan", lambda r: settings.seconds(r, "N")),
        ("inf", lambda r: settings.seconds(r, "N")),
        ("86401", lambda r: settings.seconds(r, "N")),
        ("0", lambda r: settings.port(r, "N")),
        ("a,,b", lambda r: settings.queue_list(r, "N")),
        ("", lambda r: settings.queue_list(r, "N")),
    ],
)
def test_parsers_refuse_the_edge_cases(raw: str, parse: Callable[[str], object]) -> None:
    with pytest.raises(SettingsError, match=r"^N must be .*, got "):
        parse(raw)


def test_a_database_url_is_never_echoed() -> None:
    """It may hold a password: the message says what is wrong without the value."""
    with pytest.raises(SettingsError) as refused:
        settings.database_url({"DATABASE_URL": "postgresql://u:hunter2@[bad"})
    assert "hunter2" not in str(refused.value)


def _named_in(path: Path) -> set[str]:
    source = path.read_text()
    return set(re.findall(r"\b(?:PGSCHED|OTEL)_[A-Z0-9_]*[A-Z0-9]\b|\bDATABASE_URL\b", source))


def test_the_table_names_every_variable_the_settings_read() -> None:
    named = _named_in(ROOT / "app" / "settings.py") | _named_in(ROOT / "otel" / "config.py")
    tabled = {b.variable for b in TABLE}
    assert named - tabled - ANY_VALUE == set(), "a variable without a row"
    assert tabled - named - BUILT == set(), "a row for a variable nothing reads"
    assert tabled >= BUILT


@pytest.mark.parametrize("bad", TABLE, ids=IDS)
def test_the_command_refuses_a_bad_value_in_one_line(dsn: str, bad: Bad) -> None:
    out = _cli(dsn, bad.command, **{bad.variable: bad.value})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pgsched: "), lines[0]
    _one_line(lines[0], bad)


@pytest.mark.parametrize(
    ("host", "reason"), [("127.0.0.1", "in use"), ("no-such-host.invalid", "cannot serve")]
)
def test_metrics_that_cannot_listen_are_one_line(dsn: str, host: str, reason: str) -> None:
    """Valid-looking values the system refuses: a busy port, a host that does not resolve."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        out = _cli(
            dsn,
            "worker",
            OTEL_SDK_DISABLED="false",
            PGSCHED_METRICS_PORT=port,
            PGSCHED_METRICS_HOST=host,
        )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("pgsched: PGSCHED_METRICS_HOST/PGSCHED_METRICS_PORT: cannot serve")
    assert reason in lines[0].lower() or reason == "cannot serve", lines[0]
