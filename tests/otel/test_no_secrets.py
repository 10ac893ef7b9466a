"""No secret, payload body or unbounded label value in any span, metric or log line.

An `http` job whose payload holds a secret reference (in an Authorization header and in the
body) calls a local server that echoes what it got; the API is called with a bearer token.
Everything telemetry emitted is then searched: the raw OTLP bodies received, the /metrics
exposition, and every JSON log line written meanwhile (at DEBUG).
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from pgsched import otel
from pgsched.app.db.store import Conn
from pgsched.otel.logs import configure_logging
from tests.api.conftest import Tokens, wait_for
from tests.factories import make_schedule
from tests.otel.conftest import running_worker
from tests.otel.receiver import Receiver, attrs

SECRET = "s3cr3t-Value-7f2a91"  # noqa: S105 - the test's secret, looked for everywhere
BODY_MARKER = "payload-body-marker-5d1c"


@pytest.fixture
def echo_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reply = json.dumps({"auth": self.headers.get("Authorization"), "body": body.decode()})
            data = reply.encode()
            self.send_response(500 if b"fail" in body else 200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(
        "pgsched", level="DEBUG", fmt="json", stream=stream, env={"PGSCHED_SECRET_HOOK": SECRET}
    )
    try:
        yield stream
    finally:
        root = logging.getLogger()
        root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def _label_values(scrape: str, receiver: Receiver) -> list[tuple[str, str]]:
    """(label, value) of pgsched's series on /metrics and of every metric point sent."""
    values: list[tuple[str, str]] = []
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            # pgsched's own and the API's request metrics (python_gc_* etc. are constant sets).
            if family.name.startswith("pgsched"):
                values += [(k, v) for k, v in sample.labels.items() if k != "le"]
    for request in receiver.received.metrics:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    for point in getattr(m, kind).data_points:
                        values += [(k, str(v)) for k, v in attrs(point.attributes).items()]
    return values


async def test_secrets_bodies_and_ids_stay_out_of_telemetry(  # noqa: PLR0917
    db: Conn,
    dsn: str,
    telemetry: otel.Telemetry,
    receiver: Receiver,
    traced_api: AsyncTestClient[Litestar],
    role_tokens: Tokens,
    echo_server: str,
    log_lines: io.StringIO,
) -> None:
    payloads = [
        {
            "url": echo_server,
            "method": "POST",
            "headers": {"Authorization": {"$secret": "HOOK"}},
            "body": {"note": BODY_MARKER, "key": {"$secret": "HOOK"}, "mode": mode},
        }
        for mode in ("ok", "fail")
    ]
    made = [
        await make_schedule(
            db,
            now=datetime.now(UTC),
            job_type="http",
            payload=p,
            enabled=False,
            max_attempts=1,
            name=f"hook-{p['body']['mode']}",  # type: ignore[index]
        )
        for p in payloads
    ]
    token = role_tokens.values["operator"]
    run_ids = []
    for s in made:
        reply = await traced_api.post(
            f"/v1/schedules/{s['id']}/trigger", headers=role_tokens.auth("operator")
        )
        assert reply.status_code == 201
        run_ids.append(reply.json()["id"])
    environ = {"PGSCHED_SECRET_HOOK": SECRET, "PGSCHED_HTTP_ALLOW": "127.0.0.1"}
    async with running_worker(dsn, environ=environ):

        async def finished() -> bool:
            cur = await db.execute(
                "SELECT state, outcome FROM pgsched.run WHERE id = ANY(%s)", [run_ids]
            )
            rows = await cur.fetchall()
            return all(r["state"] in ("succeeded", "dead") for r in rows)

        await wait_for(finished, within=20)
    cur = await db.execute(
        "SELECT state, outcome FROM pgsched.run WHERE id = ANY(%s) ORDER BY id", [run_ids]
    )
    rows = await cur.fetchall()
    assert [r["state"] for r in rows] == ["succeeded", "dead"]
    # The job really sent the secret and the body: the echo came back (masked in the outcome).
    assert BODY_MARKER in rows[0]["outcome"]["output"] and "***" in rows[0]["outcome"]["output"]
    logging.getLogger("pgsched.test").warning("leak check %s", SECRET)  # the redactor masks it
    scrape = (await traced_api.get("/metrics")).text
    telemetry.force_flush()

    spans = receiver.received.spans()
    assert {s.attributes.get("pgsched.run.outcome") for s in spans} >= {"succeeded", "dead"}
    emitted = {
        "OTLP": b"".join(receiver.received.raw).decode("latin-1"),
        "/metrics": scrape,
        "logs": log_lines.getvalue(),
    }
    assert "leak check ***" in emitted["logs"]
    for where, text in emitted.items():
        for needle in (SECRET, BODY_MARKER, token, "Bearer"):
            assert needle not in text, f"{needle!r} appears in {where}"
    for line in emitted["logs"].splitlines():
        json.loads(line)

    # Metric label values are closed sets or configured names: never an id or a raw path.
    forbidden = {str(i) for i in run_ids} | {s["name"] for s in made}
    values = _label_values(scrape, receiver)
    assert values
    for k, v in values:
        assert v not in forbidden and not re.search(r"/\d", v), f"unbounded label {k}={v!r}"
    # Span names are templates too (no path id, no run id); psycopg names its connect spans
    # after the database, which is fixed per deployment.
    ids = "|".join(str(i) for i in run_ids)
    assert not [s.name for s in spans if re.search(rf"/\d|\b({ids})\b", s.name)]
