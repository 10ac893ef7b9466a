"""The telemetry of one process: tracer and meter providers, exporters, instruments.

`setup(config)` is called once per process by its entry point (`pgsched run|api|worker|
ticker|maintain`), after any fork, before pools open (the psycopg instrumentation wraps connections
made afterwards). It is idempotent per process: a forked child that calls it again gets fresh
providers, and so a fresh `service.instance.id`.

- Traces: only with an OTLP endpoint (no endpoint, no tracer: the no-op costs nothing). Spans go
  through `IdleFilter` to a batch processor and the OTLP/HTTP exporter.
- Metrics: the catalogue's instruments always exist. A Prometheus reader serves them on this
  process's /metrics (the API's route, or `PGSCHED_METRICS_PORT`); with an endpoint, a periodic
  reader also pushes them over OTLP/HTTP.

Code that records telemetry asks `current()`, which before `setup` is a disabled instance whose
instruments are no-ops, so library code and tests never need to care.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.metrics import _Gauge as Gauge
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracerProvider, Tracer
from prometheus_client import start_http_server

from pgsched.otel import catalogue
from pgsched.otel.config import TelemetryConfig
from pgsched.otel.spans import IdleFilter

log = logging.getLogger("pgsched.otel")

SCOPE = "pgsched"


class PoolLike(Protocol):
    def get_stats(self) -> dict[str, int]: ...


def _version() -> str:
    try:
        return version("pgsched")
    except PackageNotFoundError:
        return "unknown"


class Telemetry:
    """One process's providers and the catalogue's instruments."""

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self._readers: list[MetricReader] = []
        self._metrics_server: Any = None
        self._observed: dict[str, list[tuple[float, dict[str, str]]]] = {}
        self._pools: dict[str, PoolLike] = {}
        self._lock = threading.Lock()
        self._instrumented_psycopg = False
        self.resource = Resource.create(
            {
                "service.name": config.service_name,
                "service.namespace": "pgsched",
                "service.version": _version(),
                "pgsched.role": config.role,
            }
        )
        self.tracer_provider: TracerProvider | None = None
        if config.tracing and config.traces_endpoint:
            self.tracer_provider = TracerProvider(resource=self.resource)
            self.tracer_provider.add_span_processor(
                IdleFilter(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.traces_endpoint)))
            )
        self.meter_provider: MeterProvider
        if config.disabled:
            self.meter_provider = NoOpMeterProvider()
        else:
            self._readers.append(PrometheusMetricReader(scope_info_enabled=False))
            if config.metrics_endpoint:
                self._readers.append(
                    PeriodicExportingMetricReader(
                        OTLPMetricExporter(endpoint=config.metrics_endpoint),
                        export_interval_millis=config.metric_export_interval_ms,
                    )
                )
            self.meter_provider = SdkMeterProvider(
                resource=self.resource, metric_readers=self._readers
            )
        provider = self.tracer_provider or NoOpTracerProvider()
        self.tracer: Tracer = provider.get_tracer(SCOPE, _version())
        self.meter: Meter = self.meter_provider.get_meter(SCOPE, _version())
        self._instruments: dict[str, Any] = {}
        for metric in catalogue.METRICS:
            self._instruments[metric.name] = self._create(metric)

    # -- instruments ---------------------------------------------------------------------------

    def _create(self, metric: catalogue.Metric) -> object:
        args = {"unit": metric.unit, "description": metric.description}
        if metric.kind == "counter":
            return self.meter.create_counter(metric.name, **args)
        if metric.kind == "histogram":
            return self.meter.create_histogram(
                metric.name,
                explicit_bucket_boundaries_advisory=list(catalogue.SECONDS_BUCKETS),
                **args,
            )
        if metric.kind == "gauge":
            return self.meter.create_gauge(metric.name, **args)
        callback = (
            self._pool_observations
            if metric.name == "pgsched.db.pool.connections"
            else self._observer(metric.name)
        )
        return self.meter.create_observable_gauge(metric.name, callbacks=[callback], **args)

    def counter(self, name: str) -> Counter:
        instrument: Counter = self._instruments[name]
        return instrument

    def histogram(self, name: str) -> Histogram:
        instrument: Histogram = self._instruments[name]
        return instrument

    def gauge(self, name: str) -> Gauge:
        instrument: Gauge = self._instruments[name]
        return instrument

    def observe(self, name: str, points: Iterable[tuple[float, dict[str, str]]]) -> None:
        """Replace the values an observable gauge reports at the next collection."""
        if catalogue.BY_NAME[name].kind != "observable_gauge":
            raise ValueError(f"{name} is not an observable gauge")
        with self._lock:
            self._observed[name] = list(points)

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                points = list(self._observed.get(name, ()))
            return [Observation(value, attributes) for value, attributes in points]

        return callback

    def watch_pool(self, name: str, pool: PoolLike) -> None:
        """Report `pool`'s usage as pgsched.db.pool.connections{pool=name} from now on."""
        with self._lock:
            self._pools[name] = pool

    def forget_pool(self, name: str) -> None:
        with self._lock:
            self._pools.pop(name, None)

    def _pool_observations(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            pools = list(self._pools.items())
        out: list[Observation] = []
        for name, pool in pools:
            stats = pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            for state, value in (
                ("used", size - idle),
                ("idle", idle),
                ("waiting", stats.get("requests_waiting", 0)),
                ("max", stats.get("pool_max", 0)),
            ):
                out.append(Observation(value, {"pool": name, "state": state}))
        return out

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Instrument psycopg and open the metrics port (once, after the providers exist)."""
        if (
            self.tracer_provider is not None
            and self.config.trace_sql
            and not self._instrumented_psycopg
        ):
            # The commenter stays off: a per-request comment would defeat psycopg's prepared
            # statements for the hot claim query (each distinct text is a new statement).
            PsycopgInstrumentor().instrument(
                tracer_provider=self.tracer_provider, skip_dep_check=True
            )
            self._instrumented_psycopg = True
        if self.config.metrics_port is not None and not self.config.disabled:
            server, _thread = start_http_server(
                self.config.metrics_port, addr=self.config.metrics_host
            )
            self._metrics_server = server

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics listens on (the real one when the setting was 0)."""
        if self._metrics_server is None:
            return None
        port: int = self._metrics_server.server_port
        return port

    def force_flush(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()
        if isinstance(self.meter_provider, SdkMeterProvider):
            self.meter_provider.force_flush()

    def shutdown(self) -> None:
        if self._instrumented_psycopg:
            PsycopgInstrumentor().uninstrument()
            self._instrumented_psycopg = False
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if isinstance(self.meter_provider, SdkMeterProvider):
            self.meter_provider.shutdown()


_current: Telemetry | None = None
_disabled: Telemetry | None = None


def current() -> Telemetry:
    """This process's telemetry; a disabled (no-op) one before `setup`."""
    global _disabled  # noqa: PLW0603 - one per process, made on first use
    if _current is not None and _current.pid == os.getpid():
        return _current
    if _disabled is None:
        _disabled = Telemetry(TelemetryConfig(role="run", service_name="pgsched", disabled=True))
    return _disabled


def setup(config: TelemetryConfig) -> Telemetry:
    """Make `config` this process's telemetry (replacing an earlier one, or a parent's)."""
    global _current  # noqa: PLW0603
    if _current is not None and _current.pid == os.getpid():
        _current.shutdown()
    telemetry = Telemetry(config)
    telemetry.start()
    _current = telemetry
    if config.tracing:
        log.info("traces to %s", config.traces_endpoint)
    return telemetry


def shutdown() -> None:
    """Flush and stop this process's telemetry (exporters send what they hold)."""
    global _current  # noqa: PLW0603
    if _current is not None and _current.pid == os.getpid():
        _current.shutdown()
    _current = None
