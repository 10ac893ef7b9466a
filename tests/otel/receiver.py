"""An OTLP/HTTP receiver in the test process: what a collector would get, decoded.

POST /v1/traces and /v1/metrics, protobuf (gzip or not), parsed with opentelemetry-proto and
kept in order; the raw bodies are kept too, so a test can search everything sent for a secret.
"""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def attrs(items: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> dict of plain values."""
    out: dict[str, Any] = {}
    for kv in items:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any], int]]  # (name, attributes, time in ns)
    scope: str
    resource: dict[str, Any]
    start_ns: int = 0
    end_ns: int = 0


@dataclass
class Received:
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[Span]:
        out = []
        with self.lock:
            requests = list(self.traces)
        for request in requests:
            for rs in request.resource_spans:
                resource = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            Span(
                                name=s.name,
                                kind=s.kind,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                attributes=attrs(s.attributes),
                                links=[
                                    (ln.trace_id.hex(), ln.span_id.hex(), attrs(ln.attributes))
                                    for ln in s.links
                                ],
                                status_code=s.status.code,
                                status_message=s.status.message,
                                events=[
                                    (e.name, attrs(e.attributes), e.time_unix_nano)
                                    for e in s.events
                                ],
                                scope=ss.scope.name,
                                resource=resource,
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                            )
                        )
        return out

    def metric_points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> [(attributes, value)] from the latest export that has the metric
        (values are cumulative, so the latest is the total). Histograms give (count, sum)."""
        latest: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        with self.lock:
            requests = list(self.metrics)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        data = getattr(m, kind)
                        points = []
                        for p in data.data_points:
                            if kind == "histogram":
                                value: Any = (p.count, p.sum)
                            else:
                                value = p.as_double if p.HasField("as_double") else p.as_int
                            points.append((attrs(p.attributes), value))
                        latest[m.name] = points
        return latest

    def resources(self) -> list[dict[str, Any]]:
        with self.lock:
            out = [attrs(rm.resource.attributes) for r in self.metrics for rm in r.resource_metrics]
            out += [attrs(rs.resource.attributes) for r in self.traces for rs in r.resource_spans]
        return out


@dataclass
class Receiver:
    url: str
    received: Received


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                request: Any = ExportTraceServiceRequest()
                request.ParseFromString(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                with received.lock:
                    received.traces.append(request)
                    received.raw.append(body)
            elif self.path == "/v1/metrics":
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                reply = ExportMetricsServiceResponse().SerializeToString()
                with received.lock:
                    received.metrics.append(request)
                    received.raw.append(body)
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
