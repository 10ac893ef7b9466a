"""What telemetry a process sends, from the standard `OTEL_*` variables (and one of ours).

Read from the environment mapping the caller passes (the CLI passes `os.environ`), so tests
configure a process without touching the real environment. The OTLP exporters themselves also
read the standard header/timeout/compression variables; endpoints are resolved here because
"no endpoint" must mean "no exporter" (the one-command run needs no collector), where the SDK
would fall back to localhost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ROLES: Final = ("api", "ticker", "worker", "maintenance", "run")
SUPPORTED_PROTOCOLS: Final = ("http/protobuf",)
_TRUE: Final = ("1", "true", "yes", "on")


class TelemetryConfigError(ValueError):
    """A telemetry variable is malformed; the message names it."""


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
            metrics_host=env.get("PGSCHED_METRICS_HOST", "127.0.0.1"),
            disabled=disabled,
            trace_sql=env.get("PGSCHED_TRACE_SQL", "true").strip().lower() in _TRUE,
        )


def _endpoint(env: Mapping[str, str], signal: str, path: str) -> str | None:
    """The OTLP/HTTP URL for one signal, per the OpenTelemetry exporter specification."""
    exporter = env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise TelemetryConfigError(f"OTEL_{signal}_EXPORTER={exporter!r}: only otlp or none")
    protocol = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in SUPPORTED_PROTOCOLS:
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: pgsched exports http/protobuf only"
        )
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    if specific:
        return specific  # used as given, path included (the specification's rule)
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not base:
        return None
    return f"{base.rstrip('/')}/{path}"


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise TelemetryConfigError(f"{name} must be a whole number >= 1, got {raw!r}")
    return int(raw)
