"""``http`` jobs against an in-process server on 127.0.0.1, under a 127.0.0.1/32 allow-list.

Traffic rule: nothing but 127.0.0.1 is ever contacted, so a test cannot reach a real service.
Two autouse guards make that a test failure rather than a convention: real DNS raises, and
every request httpx is about to send is checked for its host before it is sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pgsched.workers import netguard
from pgsched.workers.jobs import MAX_OUTPUT_BYTES, execute
from tests.jobs.conftest import MakeCtx

TOKEN = "Bearer tok-3f9a-c4nary"  # noqa: S105 - a test value
LONG = "Bearer " + "0123456789abcdef" * 4 + "-c4nary-end"  # longer than the marker slack
SECRET_ENV = {"PGSCHED_SECRET_API_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}


@pytest.fixture(autouse=True)
def _loopback_traffic_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"real DNS lookup for {host!r}")

    monkeypatch.setattr(netguard, "system_resolver", no_dns)
    sent: list[str] = []
    real = httpx.AsyncHTTPTransport.handle_async_request

    async def guarded(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(request.url.host)
        if request.url.host != "127.0.0.1":
            raise AssertionError(f"a test tried to reach {request.url.host}")
        return await real(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", guarded)
    yield sent


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        url = urlsplit(self.path)
        if url.path.startswith("/status/"):
            self._reply(int(url.path.rsplit("/", 1)[1]), b"status body")
        elif url.path == "/big":
            self._reply(200, b"a" * 50_000)
        elif url.path == "/echo-auth":
            self._reply(200, self.headers.get("Authorization", "none").encode())
        elif url.path == "/secret-at-the-edge":
            # LONG straddles the 10 KiB limit: 40 bytes before it, the rest after.
            self._reply(200, b"a" * (MAX_OUTPUT_BYTES - 40) + LONG.encode() + b"b" * 500)
        elif url.path == "/slow":
            time.sleep(1.0)
            self._reply(200, b"late")
        elif url.path == "/redirect":
            self._reply(302, b"", [("Location", parse_qs(url.query)["to"][0])])
        else:
            self._reply(200, b"ok")

    do_GET = do_POST = do_PUT = _serve

    def _reply(self, code: int, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, object]]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that stops reading a truncated or late body is expected here


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


@pytest.mark.parametrize(
    ("path", "expected", "status", "retryable"),
    [
        ("/status/204", None, "succeeded", False),
        ("/status/404", [200, 404], "succeeded", False),
        ("/status/201", 201, "succeeded", False),
        ("/status/200", 201, "failed", True),
        ("/status/500", None, "failed", True),
        ("/status/503", [200], "failed", True),
        ("/status/429", None, "failed", True),
        ("/status/404", None, "failed", False),
        ("/status/401", None, "failed", False),
    ],
)
async def test_expected_status(
    server: _Server,
    make_ctx: MakeCtx,
    *,
    path: str,
    expected: object,
    status: str,
    retryable: bool,
) -> None:
    payload: dict[str, object] = {"url": _url(server, path)}
    if expected is not None:
        payload["expected_status"] = expected
    outcome = await execute("http", payload, make_ctx())
    code = int(path.rsplit("/", 1)[1])
    assert (outcome.status, outcome.retryable, outcome.http_status) == (status, retryable, code)
    if status == "failed":
        assert outcome.error is not None
        assert outcome.error.startswith(f"HTTP {code}, expected ")
    if code != 204:
        assert outcome.output == "status body"


async def test_body_is_kept_to_10_kib(server: _Server, make_ctx: MakeCtx) -> None:
    outcome = await execute("http", {"url": _url(server, "/big")}, make_ctx())
    assert outcome.status == "succeeded"
    assert outcome.output is not None
    assert len(outcome.output.encode()) <= MAX_OUTPUT_BYTES
    assert outcome.output.endswith(f"\n[truncated at {MAX_OUTPUT_BYTES} bytes]")


async def test_idempotency_key_is_sent_unless_the_payload_sets_one(
    server: _Server, make_ctx: MakeCtx
) -> None:
    await execute("http", {"url": _url(server, "/")}, make_ctx())
    own = {"url": _url(server, "/"), "headers": {"idempotency-key": "mine"}}
    await execute("http", own, make_ctx())
    keys = [r["headers"] for r in server.seen]
    assert keys[0]["Idempotency-Key"] == "7:2"  # type: ignore[index]
    assert keys[1]["idempotency-key"] == "mine"  # type: ignore[index]
    assert "Idempotency-Key" not in keys[1]  # type: ignore[operator]


async def test_secret_header_reaches_the_server_but_not_the_outcome(
    server: _Server, make_ctx: MakeCtx
) -> None:
    payload = {
        "url": _url(server, "/echo-auth"),
        "headers": {"Authorization": {"$secret": "api_token"}},
    }
    outcome = await execute("http", payload, make_ctx(environ=SECRET_ENV))
    assert server.seen[0]["headers"]["Authorization"] == TOKEN  # type: ignore[index]
    assert outcome.status == "succeeded"
    assert outcome.output == "***"  # the server echoed it; we masked it
    stored = json.dumps(outcome.as_json())
    assert TOKEN not in stored
    assert "c4nary" not in stored


async def test_a_secret_cut_by_the_10_kib_limit_is_masked_not_half_shown(
    server: _Server, make_ctx: MakeCtx
) -> None:
    payload = {
        "url": _url(server, "/secret-at-the-edge"),
        "headers": {"X-Api-Key": {"$secret": "long"}},
    }
    outcome = await execute("http", payload, make_ctx(environ={"PGSCHED_SECRET_LONG": LONG}))
    assert outcome.output is not None
    assert len(outcome.output.encode()) <= MAX_OUTPUT_BYTES
    assert not any(LONG[i : i + 5] in outcome.output for i in range(len(LONG) - 4))


async def test_json_body_with_a_nested_secret(server: _Server, make_ctx: MakeCtx) -> None:
    payload = {
        "url": _url(server, "/"),
        "method": "post",
        "body": {"text": "hi", "auth": {"token": {"$secret": "API_TOKEN"}}},
    }
    outcome = await execute("http", payload, make_ctx(environ=SECRET_ENV))
    assert outcome.status == "succeeded"
    request = server.seen[0]
    assert request["method"] == "POST"
    assert request["headers"]["Content-Type"] == "application/json"  # type: ignore[index]
    assert json.loads(request["body"]) == {"text": "hi", "auth": {"token": TOKEN}}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "resolver_answers", "fragment"),
    [
        ("http://10.0.0.1/", None, "10.0.0.1: private"),
        ("http://169.254.169.254/latest/meta-data/", None, "link-local"),
        ("http://[::1]:8080/", None, "::1: loopback"),
        ("http://127.0.0.2/", None, "127.0.0.2: loopback"),  # the allow-list is /32
        ("http://metadata.test/", ["169.254.169.254"], "resolves to 169.254.169.254"),
        ("http://mixed.test/", ["93.184.216.34", "10.1.2.3"], "resolves to 10.1.2.3: private"),
    ],
)
async def test_refused_targets_fail_without_any_connection(
    make_ctx: MakeCtx,
    _loopback_traffic_only: list[str],
    url: str,
    resolver_answers: list[str] | None,
    fragment: str,
) -> None:
    looked_up: list[str] = []

    async def stub(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return list(resolver_answers or [])

    ctx = make_ctx(resolver=stub)
    outcome = await execute("http", {"url": url}, ctx)
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith("target refused: ")
    assert fragment in outcome.error
    assert _loopback_traffic_only == []  # no request was ever handed to a transport
    assert len(looked_up) == (0 if resolver_answers is None else 1)


async def test_redirect_to_a_refused_target_is_not_followed(
    server: _Server, make_ctx: MakeCtx, _loopback_traffic_only: list[str]
) -> None:
    payload = {"url": _url(server, "/redirect?to=http://10.0.0.1/admin"), "max_redirects": 3}
    outcome = await execute("http", payload, make_ctx())
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error == "target refused: redirect 1 refused: address 10.0.0.1: private " + (
        "address, not in the allow-list"
    )
    assert _loopback_traffic_only == ["127.0.0.1"]  # the first hop only


async def test_redirects_are_not_followed_by_default(server: _Server, make_ctx: MakeCtx) -> None:
    payload = {"url": _url(server, "/redirect?to=/status/200")}
    outcome = await execute("http", payload, make_ctx())
    assert (outcome.status, outcome.http_status) == ("failed", 302)
    followed = await execute("http", {**payload, "max_redirects": 1}, make_ctx())
    assert (followed.status, followed.http_status) == ("succeeded", 200)


async def test_connection_refused_is_retryable(make_ctx: MakeCtx) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on the port now
    outcome = await execute("http", {"url": f"http://127.0.0.1:{port}/"}, make_ctx())
    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert outcome.error is not None
    assert outcome.error.startswith("ConnectError")


async def test_a_host_that_does_not_resolve_is_retryable(
    server: _Server, make_ctx: MakeCtx, _loopback_traffic_only: list[str]
) -> None:
    """DNS failures are often temporary: the run uses its remaining attempts, and the error
    says what happened ("did not resolve"), not that a policy refused the target."""

    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    outcome = await execute("http", {"url": "http://nowhere.test/"}, make_ctx(resolver=nxdomain))
    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert outcome.error == "host 'nowhere.test' did not resolve (gaierror)"
    assert _loopback_traffic_only == []

    # A redirect to a name that does not resolve is the same weather, still retryable.
    payload = {"url": _url(server, "/redirect?to=http://nowhere.test/"), "max_redirects": 1}
    outcome = await execute("http", payload, make_ctx(resolver=nxdomain))
    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert outcome.error == "redirect 1: host 'nowhere.test' did not resolve (gaierror)"


async def test_timeout(server: _Server, make_ctx: MakeCtx) -> None:
    outcome = await execute("http", {"url": _url(server, "/slow")}, make_ctx(timeout_seconds=0.3))
    assert (outcome.status, outcome.retryable) == ("timeout", True)
    assert outcome.error == "timed out after 0.3 s"
    assert outcome.duration_ms < 1_000
