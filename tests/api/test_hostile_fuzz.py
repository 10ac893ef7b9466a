"""Hostile values in every body field, query parameter, path id and header of every route.

schemathesis's default strategies stay inside the documented types and found none of the
API's 500s (tests/api/test_schemathesis.py): deep JSON and instants at the calendar's edges
are valid JSON and valid date-time strings, but no default strategy reaches them. These
strategies do: instants from year 0 to 10000 with offsets up to ±23:59, leap seconds and
24:00; deep and unterminated nesting; NaN, Infinity, 1e400, integers beyond 2^63 and 10^400,
-0.0 and 5e-324; NUL, lone surrogates, right-to-left marks and 100,000-character strings;
cursors that decode to any of these. Each request puts hostile values into a valid request
(one field of a valid body, one or more parameters of a valid query), so the value reaches the
code behind the first check, and the whole body or a parameter is sometimes replaced outright.

The app runs under uvicorn on a real socket against a real database, as in production.
Checks: never a 5xx, every 4xx is problem+json. The run is derandomized and bounded
(`EXAMPLES` requests per strategy, 600 by default); `PGSCHED_FUZZ_EXAMPLES=20000` runs a
larger, randomized one (add `--timeout 0`). The number of requests and the statuses are printed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pgsched.app.api import create_app
from pgsched.app.db import store
from pgsched.app.services import schedules, tokens
from tests.api.conftest import serve, settings_for
from tests.conftest import connect
from tests.factories import make_schedule

EXAMPLES = int(os.environ.get("PGSCHED_FUZZ_EXAMPLES", "600"))
# The bounded run in the suite repeats itself exactly; a larger run explores afresh each time.
DERANDOMIZE = "PGSCHED_FUZZ_EXAMPLES" not in os.environ
pytestmark = [
    # Hypothesis warns when an example's repr is large; 100,000-character strings are the point.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
    # The server runs in a thread of this process, and OpenTelemetry draws its trace and span
    # ids from the global `random` while a strategy draws: Hypothesis takes that for a
    # strategy using `random`. The strategies here do not.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]
_names = itertools.count()


# -- JSON text with raw fragments ------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written verbatim: NaN, 1e400, deep or broken nesting."""

    text: str


def dump(value: object) -> str:
    """JSON text of `value`, with Raw fragments inline (json.dumps cannot write them)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


# -- hostile values --------------------------------------------------------------------------

EDGE_INSTANTS = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59-23:59",
    "1969-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00Z",
    "8999-12-31T23:59:59.999999Z",
    "9000-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "2016-12-31T23:59:60Z",
    "2026-01-01T24:00:00Z",
    "2026-02-29T00:00:00Z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01T00:00:00",
    "2026-01-01",
    "",
]
RAW_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e308",
    "-1e308",
    "5e-324",
    "1e-400",
    "-0.0",
    "-0",
    "0",
    "-1",
    "0.5",
    "2147483647",
    "2147483648",
    "-2147483649",
    "32768",
    "-32769",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1" + "0" * 400,
    "1E+2",
]
STRINGS = [
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\ufeff",
    "\U0001f642" * 1000,
    "x" * 100_000,
    "e\u0301" * 500,
    " ",
    "\n",
    "%00",
    "../../etc/passwd",
    "* * * * * * *",
    "@reboot",
    "Etc/GMT+14",
    "Factory",
    "posixrules",
    "America/Nowhere",
    "UTC\x00",
]
# Lone surrogates and invalid escapes: valid-looking JSON text that is not valid Unicode.
RAW_STRINGS = ['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"\\x41"', '"abc']
DEEP = [33, 100, 1000, 5000]


def _offset(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _wall(year: int, month: int, day: int) -> datetime:
    """A naive wall-clock time: the strategies append the offset as text, any offset at all."""
    return datetime(year, month, day)  # noqa: DTZ001


instants = st.one_of(
    st.sampled_from(EDGE_INSTANTS),
    st.builds(
        lambda at, minutes: at.isoformat() + _offset(minutes),
        st.datetimes(min_value=_wall(1, 1, 1), max_value=_wall(9999, 12, 31)),
        st.integers(-23 * 60 - 59, 23 * 60 + 59),
    ),
)
numbers = st.one_of(
    st.sampled_from(RAW_NUMBERS).map(Raw),
    st.integers().map(lambda n: Raw(str(n))),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Raw(repr(f))),
)
texts = st.one_of(
    st.sampled_from(STRINGS),
    st.text(max_size=40),
    st.sampled_from(RAW_STRINGS).map(Raw),
)
deep = st.one_of(
    st.sampled_from(DEEP).map(lambda n: Raw("[" * n + "]" * n)),
    st.sampled_from(DEEP).map(lambda n: Raw('{"a":' * n + "1" + "}" * n)),
    st.sampled_from(DEEP).map(lambda n: Raw("[" * n)),
)
# Values inside the documented ranges but at their edges: accepted, so they reach the domain
# (occurrence searches, next-due arithmetic, the database) instead of stopping at validation.
edgy = st.one_of(
    st.builds(
        lambda at, minutes: at.isoformat() + _offset(minutes),
        st.one_of(
            st.datetimes(min_value=_wall(1970, 1, 2), max_value=_wall(1970, 1, 3)),
            st.datetimes(min_value=_wall(8999, 12, 30), max_value=_wall(8999, 12, 31)),
            st.datetimes(min_value=_wall(1970, 1, 2), max_value=_wall(8999, 12, 31)),
        ),
        st.integers(-14 * 60, 14 * 60),
    ),
    st.sampled_from(
        [0, 1, 2147483647, 32767, -32768, 100, 10_000, 31_622_400, 1e-9, 1.0, 10.0, 0.0]
    ),
    st.sampled_from(
        ["* * * * *", "0 0 29 2 *", "0 0 31 * *", "0 0 29 2 MON", "59 23 31 12 *", "@yearly"]
    ),
    st.sampled_from(
        ["Pacific/Kiritimati", "Pacific/Pago_Pago", "America/Santiago", "Asia/Kathmandu", "UTC"]
    ),
)
scalars = st.one_of(
    instants, numbers, texts, st.booleans(), st.none(), st.just({}), st.just([]), deep, edgy
)
hostile = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _fragment(value: object) -> str:
    """A hostile value as query-parameter or header text."""
    return (
        value.text if isinstance(value, Raw) else value if isinstance(value, str) else dump(value)
    )


def _cursor(value: object) -> str:
    text = f"[{dump(value)},{dump(value)}]" if not isinstance(value, list) else dump(value)
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def _header(value: str) -> str:
    """HTTP carries visible ASCII in a header, not starting or ending with a space (clients
    refuse anything else)."""
    return "".join(c for c in value if " " <= c <= "~")[:8000].strip(" ")


query_values = st.one_of(
    scalars.map(_fragment),
    hostile.map(_cursor),  # a cursor that decodes to anything
    st.sampled_from(["1", "50", "201", "true", "maybe", "running", "dead"]),
)


# -- the routes and their valid requests -----------------------------------------------------

VALID_CREATE: dict[str, Any] = {"name": "fuzz", "job_type": "noop", "cron": "* * * * *"}
PAYLOAD_KEYS = {
    "http": ["url", "method", "headers", "body", "expected_status", "max_redirects"],
    "command": ["argv", "env", "cwd", "kill_after_seconds"],
    "sql": ["statement", "dsn", "params", "autocommit"],
    "python": ["target", "kwargs"],
}
VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "http": {"url": "https://example.com/hook", "method": "POST"},
    "command": {"argv": ["/bin/true"]},
    "sql": {"statement": "select 1"},
    "python": {"target": "os.path:join"},
}


@dataclass
class Target:
    """What the fuzzer may touch: the document's operations and ids that exist."""

    body_fields: dict[tuple[str, str], list[str]]
    queries: dict[tuple[str, str], list[str]]
    path_ops: list[tuple[str, str]]
    ids: dict[str, int] = field(default_factory=dict)


def _properties(doc: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every field of a request body, nested structs as `retry_backoff.factor`."""
    if "allOf" in schema:
        schema = schema["allOf"][0]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for name, prop in schema.get("properties", {}).items():
        yield prefix + name
        nested = prop if "$ref" in prop else None
        if nested is not None:
            yield from _properties(doc, nested, f"{prefix}{name}.")


def target_of(doc: dict[str, Any]) -> Target:
    bodies: dict[tuple[str, str], list[str]] = {}
    queries: dict[tuple[str, str], list[str]] = {}
    path_ops: list[tuple[str, str]] = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            key = (method.upper(), path)
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                bodies[key] = list(_properties(doc, schema))
            params = [p["name"] for p in op.get("parameters", []) if p["in"] != "path"]
            if params:
                queries[key] = params
            if "{" in path and method != "delete":
                path_ops.append(key)
    return Target(bodies, queries, path_ops)


def _set(body: dict[str, Any], dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = body
    for name in parents:
        if not isinstance(node.get(name), dict):  # an earlier draw may have put a scalar here
            node[name] = {}
        node = node[name]
    node[last] = value


def _valid_body(path: str) -> dict[str, Any]:
    """A valid body for the operation, for one hostile value to go into."""
    if path == "/v1/schedules":
        return dict(VALID_CREATE, name=f"fuzz-{next(_names)}")
    if path == "/v1/runs":
        return {"job": "job-http"}  # a definition _seed made
    if path.endswith("/backfill"):
        return {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}
    return {}


@st.composite
def body_requests(draw: st.DrawFn, target: Target) -> tuple[str, str, str, dict[str, str]]:
    key = draw(st.sampled_from(sorted(target.body_fields)))
    method, path = key
    body = _valid_body(path)
    kind = draw(st.sampled_from(["field", "field", "edgy", "payload", "whole", "extra"]))
    if kind == "payload" and "payload" in target.body_fields[key]:
        job_type = draw(st.sampled_from(sorted(PAYLOAD_KEYS)))
        payload = dict(VALID_PAYLOADS[job_type])
        payload[draw(st.sampled_from(PAYLOAD_KEYS[job_type]))] = draw(hostile)
        if path == "/v1/runs":  # merged over the definition of that job type (_seed)
            body |= {"job": f"job-{job_type}", "payload": payload}
        else:
            body |= {"job_type": job_type, "payload": payload}
        text = dump(body)
    elif kind == "whole":
        text = dump(draw(hostile))
    elif kind == "extra":
        body[draw(st.text(max_size=20))] = draw(hostile)
        text = dump(body)
    elif kind == "edgy":  # several in-range extremes at once, so they combine in the domain
        for name in draw(st.lists(st.sampled_from(target.body_fields[key]), max_size=4)):
            _set(body, name, draw(edgy))
        text = dump(body)
    else:
        _set(body, draw(st.sampled_from(target.body_fields[key])), draw(hostile))
        text = dump(body)
    headers = {"content-type": "application/json"}
    if method == "PATCH" and draw(st.booleans()):
        headers["If-Match"] = _header(draw(query_values))
    return method, path, text, headers


@st.composite
def query_requests(
    draw: st.DrawFn, target: Target
) -> tuple[str, str, list[tuple[str, str]], dict[str, str]]:
    key = draw(st.sampled_from(sorted(target.queries)))
    method, path = key
    names = draw(st.lists(st.sampled_from(target.queries[key]), min_size=1, max_size=4))
    params: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for name in names:
        value = draw(query_values)
        if name[0].isupper():  # a header: HTTP allows visible ASCII only
            headers[name] = _header(value)
        else:  # clients refuse URLs past 64 KiB; servers commonly stop at 8 KiB
            params.append((name, value[:4000]))
    return method, path, params, headers


ids_text = st.one_of(
    st.sampled_from(
        ["0", "-1", "9223372036854775807", "9223372036854775808", "1e3", "1" + "0" * 40, "0x10"]
    ),
    st.integers().map(str),
)


# -- the run ---------------------------------------------------------------------------------


async def _seed(dsn: str) -> tuple[str, dict[str, int]]:
    conn = await connect(dsn)
    try:
        _, token = await tokens.create_token(
            conn, name="hostile", role="admin", actor="t", now=None
        )
        first = await make_schedule(conn)
        waiting, _ = await schedules.trigger(conn, first["id"], actor="t", now=None)
        cancelled, _ = await schedules.trigger(conn, first["id"], actor="t", now=None)
        await store.cancel_run(conn, cancelled["id"], actor="t", now=None)
        for job_type, payload in VALID_PAYLOADS.items():  # what POST /v1/runs enqueues to
            await schedules.define_job(conn, f"job-{job_type}", job_type, payload, actor="t")
        return token, {"schedule_id": first["id"], "run_id": waiting["id"]}
    finally:
        await conn.close()


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def check(self, label: str, response: httpx.Response, sent: str) -> None:
        self.requests += 1
        self.statuses[(label, response.status_code)] += 1
        if response.status_code >= 500:
            self.failures.append(f"{label}: {response.status_code} for {sent[:300]!r}")
        elif response.status_code >= 400 and not response.headers.get(
            "content-type", ""
        ).startswith("application/problem+json"):
            self.failures.append(f"{label}: {response.status_code} without problem+json")


def _run(strategy: Any, examples: int, call: Callable[[Any], None]) -> None:
    @settings(
        max_examples=examples,
        derandomize=DERANDOMIZE,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


@pytest.fixture
def fuzz_server(dsn: str) -> Iterator[tuple[httpx.Client, Target]]:
    token, ids = asyncio.run(_seed(dsn))
    with serve(create_app(settings_for(dsn))) as server:
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        with client:
            doc = client.get("/schema/openapi.json").json()
            target = target_of(doc)
            target.ids = ids
            yield client, target


def _url(path: str, ids: dict[str, int]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", str(value))
    return path


def _report(name: str, tally: Tally, started: float, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        elapsed = time.monotonic() - started
        print(f"\n{name}: {tally.requests} requests in {elapsed:.1f} s, {len(tally.failures)} 5xx")
        by_label: dict[str, dict[int, int]] = {}
        for (label, status), count in sorted(tally.statuses.items()):
            by_label.setdefault(label, {})[status] = count
        for label, counts in by_label.items():
            print(f"  {label}: {counts}")


def test_hostile_bodies_never_get_a_5xx(
    fuzz_server: tuple[httpx.Client, Target], capsys: pytest.CaptureFixture[str]
) -> None:
    client, target = fuzz_server
    assert set(target.body_fields) == {
        ("POST", "/v1/schedules"),
        ("PATCH", "/v1/schedules/{schedule_id}"),
        ("POST", "/v1/schedules/{schedule_id}/backfill"),
        ("POST", "/v1/runs"),
    }
    tally, started = Tally(), time.monotonic()

    def call(case: tuple[str, str, str, dict[str, str]]) -> None:
        method, path, text, headers = case
        content = text.encode("utf-8", "surrogatepass")
        response = client.request(method, _url(path, target.ids), content=content, headers=headers)
        tally.check(f"{method} {path}", response, text)

    _run(body_requests(target), EXAMPLES, call)
    # What was accepted now reaches the occurrence function and the database: preview, backfill
    # and trigger every schedule the run created or changed.
    since_epoch = {"from": "1970-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    follow_ups = [
        ("GET", "/v1/schedules/{id}/preview?count=100", None),
        ("POST", "/v1/schedules/{id}/backfill", since_epoch),
        ("POST", "/v1/schedules/{id}/trigger", None),
    ]
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/schedules", params=params).json()
        for schedule in page["items"]:
            for method, template, body in follow_ups:
                url = template.replace("{id}", str(schedule["id"]))
                response = client.request(method, url, json=body)
                label = f"{method} {template.split('?')[0]} (accepted above)"
                tally.check(label, response, json.dumps(schedule, default=str))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    _report("hostile bodies", tally, started, capsys)
    assert not tally.failures, "\n".join(tally.failures[:10])
    assert tally.requests >= min(EXAMPLES, 100)
    # The mutations reached past decoding: some hostile values were valid, and were stored.
    assert tally.statuses[("POST /v1/schedules", 201)], tally.statuses
    assert tally.statuses[("PATCH /v1/schedules/{schedule_id}", 200)], tally.statuses
    assert tally.statuses[("POST /v1/runs", 201)], tally.statuses


def test_hostile_parameters_and_ids_never_get_a_5xx(
    fuzz_server: tuple[httpx.Client, Target], capsys: pytest.CaptureFixture[str]
) -> None:
    client, target = fuzz_server
    tally, started = Tally(), time.monotonic()

    def send(method: str, url: str, params: Any, headers: dict[str, str], label: str) -> None:
        if url.endswith("/stream"):  # endless when valid: read the status line only
            with client.stream(method, url, params=params, headers=headers) as response:
                tally.check(label, response, f"{params} {headers}")
            return
        response = client.request(method, url, params=params, headers=headers)
        tally.check(label, response, f"{params} {headers}")

    def call_query(case: tuple[str, str, list[tuple[str, str]], dict[str, str]]) -> None:
        method, path, params, headers = case
        send(method, _url(path, target.ids), params, headers, f"{method} {path}")

    def call_path(case: tuple[tuple[str, str], str]) -> None:
        (method, path), ident = case
        url = path.replace("{schedule_id}", ident).replace("{run_id}", ident)
        send(method, url, None, {}, f"{method} {path} (id)")

    _run(query_requests(target), EXAMPLES, call_query)
    _run(st.tuples(st.sampled_from(target.path_ops), ids_text), max(EXAMPLES // 4, 50), call_path)
    _report("hostile parameters", tally, started, capsys)
    assert not tally.failures, "\n".join(tally.failures[:10])
    reached = {label for label, _ in tally.statuses}
    assert {f"{m} {p}" for m, p in target.queries} <= reached
