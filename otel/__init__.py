"""pgsched's telemetry: OpenTelemetry traces and metrics, Prometheus exposition, JSON logs.

A leaf package: it imports neither `app` nor `workers`; they call into it. The metric
catalogue is `otel.catalogue` (and otel/README.md); deployment files for a collector, Tempo,
Prometheus and Grafana are under otel/deploy/. Decisions: docs/adr/0016 and 0017.
"""

from __future__ import annotations

from pgsched.otel.config import TelemetryConfig, TelemetryConfigError
from pgsched.otel.setup import Telemetry, current, setup, shutdown

__all__ = ["Telemetry", "TelemetryConfig", "TelemetryConfigError", "current", "setup", "shutdown"]
