"""What telemetry a process sends, from the standard `OTEL_*` variables (and one of ours).

Read from the environment mapping the caller passes (app.settings passes the process's), so tests
configure a process without touching the real environment. The OTLP exporters themselves also
read the standard header/timeout/compression variables; endpoints are resolved here because
"no endpoint" must mean "no exporter" (the one-command run needs no collector), where the SDK
would fall back to localhost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

ROLES: Final = ("api", "ticker", "worker", "maintenance", "run")
SUPPORTED_PROTOCOLS: Final = ("http/protobuf",)
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


class TelemetryConfigError(ValueError):
    """A telemetry variable is malformed; the message is one line naming it, what it accepts
    and what it got (the form of app.settings' SettingsError, which the CLI turns it into)."""


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    role: str
    service_name: str
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    metric_export_interval_ms: int = 60_000
    # Port of the process's own /metrics server (None: none; the API serves /metrics itself).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    disabled: bool = False
    # A span per SQL statement (psycopg instrumentation); the costliest part of tracing.
    trace_sql: bool = True

    @property
    def tracing(self) -> bool:
        return not self.disabled and self.traces_endpoint is not None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], role: str, *, metrics_port: int | None = None
    ) -> TelemetryConfig:
        if role not in ROLES:
            raise TelemetryConfigError(f"unknown process role {role!r}")
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
        return cls(
            role=role,
            # pgsched-worker, pgsched-api, …; `pgsched run` (all roles in one process) is pgsched.
            service_name=env.get("OTEL_SERVICE_NAME")
            or ("pgsched" if role == "run" else f"pgsched-{role}"),
            traces_endpoint=_endpoint(env, "TRACES", "v1/traces"),
            metrics_endpoint=_endpoint(env, "METRICS", "v1/metrics"),
            metric_export_interval_ms=_positive_int(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000),
            metrics_port=metrics_port,
            metrics_host=_host(env, "PGSCHED_METRICS_HOST", "127.0.0.1"),
            disabled=disabled,
            trace_sql=_flag(env, "PGSCHED_TRACE_SQL", default=True),
        )


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    """An address to listen on: blank is refused, not read as every interface."""
    raw = env.get(name, default)
    if not raw.strip():
        raise TelemetryConfigError(f"{name} must be a host name or address, got {raw!r}")
    return raw.strip()


def _endpoint(env: Mapping[str, str], signal: str, path: str) -> str | None:
    """The OTLP/HTTP URL for one signal, per the OpenTelemetry exporter specification."""
    name = f"OTEL_{signal}_EXPORTER"
    exporter = env.get(name, "").strip().lower() or "otlp"
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise TelemetryConfigError(f"{name} must be otlp or none, got {env[name]!r}")
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol not in SUPPORTED_PROTOCOLS:
                raise TelemetryConfigError(
                    f"{name} must be http/protobuf (the only protocol pgsched exports), "
                    f"got {env[name]!r}"
                )
            break
    name = f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
    specific = env.get(name, "").strip()
    if specific:
        return _url(specific, name)  # used as given, path included (the specification's rule)
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return None
    return f"{_url(base, 'OTEL_EXPORTER_OTLP_ENDPOINT').rstrip('/')}/{path}"


def _url(value: str, name: str) -> str:
    """An OTLP/HTTP endpoint: without its scheme the exporter would fail at the first export,
    long after start, and only in a log line."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise TelemetryConfigError(
            f"{name} must be an http:// or https:// URL (http://collector:4318), got {value!r}"
        )
    return value


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE + _FALSE:
        raise TelemetryConfigError(f"{name} must be true or false, got {env[name]!r}")
    return raw in _TRUE


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise TelemetryConfigError(f"{name} must be a whole number >= 1, got {raw!r}")
    return int(raw)
