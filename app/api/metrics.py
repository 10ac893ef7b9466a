"""Prometheus exposition for the API process (minimal; the metric catalogue is ADR 0017).

Litestar's Prometheus middleware counts requests and times them, labelled by the *route
template* (`group_path=True`: `/v1/runs/{run_id}`, never `/v1/runs/42`), so label
cardinality is bounded by the route table. `/metrics` is public, like `/health`.
"""

from __future__ import annotations

from typing import Final

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import Gauge

PREFIX: Final = "pgsched_api"

EVENT_STREAMS: Final = Gauge(
    f"{PREFIX}_event_streams", "Server-sent event feeds open right now (GET /v1/events/stream)"
)


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(app_name="pgsched", prefix=PREFIX, group_path=True)


class MetricsController(PrometheusController):
    """GET /metrics in the Prometheus text format."""

    path = "/metrics"
    include_in_schema = False
    opt = {"role": "public"}  # noqa: RUF012 - Litestar's layer attribute
