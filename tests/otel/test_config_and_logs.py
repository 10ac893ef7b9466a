"""Telemetry settings from OTEL_* variables, log lines, and the catalogue's documentation."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from pgsched.app.cli import main
from pgsched.otel import catalogue
from pgsched.otel.config import TelemetryConfig, TelemetryConfigError
from pgsched.otel.logs import LOG_FIELDS, configure_logging
from tests.conftest import ROOT


def test_endpoints_follow_the_exporter_specification() -> None:
    base = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "worker")
    assert base.traces_endpoint == "http://c:4318/v1/traces"
    assert base.metrics_endpoint == "http://c:4318/v1/metrics"
    assert base.tracing and base.service_name == "pgsched-worker" and base.trace_sql
    assert not TelemetryConfig.from_env({"PGSCHED_TRACE_SQL": "false"}, "api").trace_sql
    specific = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/x",
            "OTEL_METRICS_EXPORTER": "none",
        },
        "api",
    )
    assert specific.traces_endpoint == "http://t:9/x" and specific.metrics_endpoint is None
    nothing = TelemetryConfig.from_env({}, "run")
    assert not nothing.tracing and nothing.metrics_endpoint is None
    assert nothing.service_name == "pgsched"
    named = TelemetryConfig.from_env({"OTEL_SERVICE_NAME": "sched-eu"}, "ticker")
    assert named.service_name == "sched-eu"
    off = TelemetryConfig.from_env(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, "api"
    )
    assert not off.tracing


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL"),
    ],
)
def test_bad_settings_are_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(TelemetryConfigError, match=named):
        TelemetryConfig.from_env(env, "worker")


def test_the_cli_refuses_a_bad_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OTEL_EXPORTER_OTLP_PROTOCOL" in err


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_carry_trace_and_run_ids_and_mask_secrets(root_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(
        "pgsched-worker", fmt="auto", stream=stream, env={"PGSCHED_SECRET_DB": "hunter2-pw"}
    )
    tracer = TracerProvider().get_tracer("t")
    log = logging.getLogger("pgsched.test")
    with tracer.start_as_current_span("x") as span:
        token = LOG_FIELDS.set({"run_id": 7, "schedule": "nightly"})
        try:
            log.warning("connecting with %s", "hunter2-pw")
        finally:
            LOG_FIELDS.reset(token)
    log.info("plain", extra={"queue": "q1"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert first["trace_id"] == format(context.trace_id, "032x")
    assert first["span_id"] == format(context.span_id, "016x")
    assert first["run_id"] == 7 and first["schedule"] == "nightly"
    assert first["message"] == "connecting with ***"
    assert first["service"] == "pgsched-worker" and first["level"] == "WARNING"
    assert set(first) >= {"timestamp", "logger"}
    assert "trace_id" not in second and second["queue"] == "q1"


def test_a_terminal_gets_readable_text(root_logging: None) -> None:
    stream = _Tty()
    configure_logging("pgsched", fmt="auto", stream=stream)
    token = LOG_FIELDS.set({"run_id": 3})
    try:
        logging.getLogger("pgsched.test").warning("hello")
    finally:
        LOG_FIELDS.reset(token)
    line = stream.getvalue().strip()
    assert line.endswith("WARNING pgsched.test: hello  run_id=3"), line
    with pytest.raises(TelemetryConfigError, match="PGSCHED_LOG_FORMAT"):
        configure_logging("pgsched", fmt="xml", stream=stream)


def test_the_readme_documents_every_catalogue_metric() -> None:
    readme = (ROOT / "otel" / "README.md").read_text()
    for metric in catalogue.METRICS:
        assert f"`{metric.prometheus}` (`{metric.name}`)" in readme, metric.name
    names = [m.name for m in catalogue.METRICS]
    assert len(names) == len(set(names))
    for metric in catalogue.METRICS:
        assert metric.prometheus.startswith("pgsched_")
        assert metric.prometheus.endswith("_total") == (metric.kind == "counter")
        assert metric.prometheus.endswith("_seconds") == (metric.unit == "s")
