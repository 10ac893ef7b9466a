"""API request spans: Litestar's OpenTelemetry plugin, named by route template.

The plugin's default names a span (and its `http.route`) by the raw path, `GET /v1/runs/42`:
one name per run, against the specification and unbounded for anything keyed by it. Spans
here are named `GET /v1/runs/{run_id}`; a path that matches no route is named by its
method alone. The HTTP metrics the instrumentation would add are not taken (a no-op meter):
the Prometheus middleware already counts requests by route template (app.api.metrics).
"""

from __future__ import annotations

from typing import Any

from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import Scope
from litestar.utils import normalize_path
from opentelemetry.metrics import NoOpMeterProvider

from pgsched import otel

# Probes and scrapes every few seconds would bury the requests people look for.
UNTRACED = ["^/metrics", "^/health$"]


def route_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """(span name, attributes) from the route template the request will be routed to."""
    method = str(scope.get("method", "")).strip()
    template: str | None
    try:
        # Runs before routing; handle_routing is LRU-cached by Litestar, so this is a cache hit
        # for the router's own lookup a moment later (internal API: covered by a test).
        router = scope["litestar_app"].asgi_router
        template = router.handle_routing(path=normalize_path(scope["path"]), method=method or None)[
            -1
        ]
    except Exception:  # noqa: BLE001 - 404 and 405 raise here; they have no template
        template = None
    if template:
        return f"{method} {template}", {"http.route": template}
    return method or "HTTP", {}


def opentelemetry_plugin() -> OpenTelemetryPlugin:
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=otel.current().tracer_provider,
            meter_provider=NoOpMeterProvider(),
            scope_span_details_extractor=route_span_details,
            exclude=UNTRACED,
            exclude_spans=["receive", "send"],
        )
    )
