"""Query, path and header parameters get the same rules as the body fields they mirror.

A bad parameter is a 422 problem that names the parameter as the client sent it, never a 500:
PostgreSQL refuses NUL in text (a filter with `%00` used to become a 500), and values beyond a
column's range or length are refused before they reach the database. Every parameter of every
route is tried here with the values that break it; the body rules themselves (`QueueName`, `Name`,
`Id` in app.api.schemas) are the single definition both sides use (app.api.common.bounds).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db.store import Conn
from pgsched.app.services import schedules
from tests.api.conftest import Tokens
from tests.api.test_schedules import problem
from tests.factories import make_schedule

Client = AsyncTestClient[Litestar]

NUL_TEXT = ["%00", "a%00b", "%00" * 50]
# A cursor that decodes to a JSON array holding a bigint too large, and a NUL in its instant.
CURSORS = [*NUL_TEXT, "c" * 513, "WzkyMjMzNzIwMzY4NTQ3NzU4MDhd", "WyIyMDIwLTAxLTAxXHUwMDAwIiwgMV0"]
IDS = ["0", "-1", str(2**63), str(10**30)]
PAGED = ["/v1/runs", "/v1/schedules", "/v1/workers", "/v1/runs/{run}/events"]
# Every route with an id in its path: (method, path with {} for the id, the path parameter).
ID_ROUTES: list[tuple[str, str, str]] = [
    *[
        (method, path, "run_id")
        for method, path in [
            ("GET", "/v1/runs/{}"),
            ("GET", "/v1/runs/{}/events"),
            ("POST", "/v1/runs/{}/retry"),
            ("POST", "/v1/runs/{}/cancel"),
        ]
    ],
    *[
        (method, path, "schedule_id")
        for method, path in [
            ("GET", "/v1/schedules/{}"),
            ("PATCH", "/v1/schedules/{}"),
            ("DELETE", "/v1/schedules/{}"),
            ("POST", "/v1/schedules/{}/pause"),
            ("POST", "/v1/schedules/{}/resume"),
            ("POST", "/v1/schedules/{}/trigger"),
            ("POST", "/v1/schedules/{}/backfill"),
            ("GET", "/v1/schedules/{}/preview"),
        ]
    ],
]

# (method, URL with {} for the bad value, the parameter the problem must name, bad values)
CASES: list[tuple[str, str, str, list[str]]] = [
    ("GET", "/v1/runs?queue={}", "queue", [*NUL_TEXT, "q" * 101, "q" * 500, ""]),
    ("GET", "/v1/schedules?queue={}", "queue", [*NUL_TEXT, "q" * 101, "q" * 500, ""]),
    ("GET", "/v1/schedules?name={}", "name", [*NUL_TEXT, "n" * 201, ""]),
    ("GET", "/v1/schedules?job_type={}", "job_type", ["%00", "bogus"]),
    ("GET", "/v1/schedules?enabled={}", "enabled", ["%00", "maybe"]),
    ("GET", "/v1/runs?status={}", "status", ["%00", "bogus"]),
    ("GET", "/v1/workers?state={}", "state", ["%00", "bogus"]),
    ("GET", "/v1/runs?schedule_id={}", "schedule_id", [*IDS, "%00", "x"]),
    *[
        ("GET", f"/v1/runs?{p}={{}}", p, ["%00", "2026-01-01T00:00:00%00", "2026-01-01"])
        for p in ("since", "until")
    ],
    *[("GET", path + "?cursor={}", "cursor", CURSORS) for path in PAGED],
    ("GET", "/v1/events?after={}", "after", CURSORS),
    ("GET", "/v1/events/stream?after={}", "after", CURSORS),
    *[("GET", path + "?limit={}", "limit", ["0", "%00"]) for path in [*PAGED, "/v1/events"]],
    ("GET", "/v1/schedules/{schedule}/preview?count={}", "count", ["0", "1001", str(10**30)]),
    *[(method, path, field, IDS) for method, path, field in ID_ROUTES],
]
HEADER_CASES: list[tuple[str, str, str, list[str]]] = [
    ("PATCH", "/v1/schedules/{schedule}", "If-Match", ["1" * 1001]),
    ("POST", "/v1/schedules/{schedule}/trigger", "Idempotency-Key", ["", "k" * 256]),
    ("GET", "/v1/events/stream", "Last-Event-ID", ["c" * 513, "%00"]),
]
BODIES: dict[str, Any] = {
    "PATCH": {"priority": 1},
    "backfill": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"},
}


def _path(url: str) -> str:
    return url.partition("?")[0]


def _body(method: str, url: str) -> Any:
    return BODIES["backfill"] if _path(url).endswith("/backfill") else BODIES.get(method)


@pytest.fixture
async def ids(db: Conn) -> dict[str, int]:
    """A live schedule and a run, so a route reaches the parameter checks behind its 404."""
    schedule = await make_schedule(db)
    run, _ = await schedules.trigger(db, schedule["id"], actor="t", now=None)
    return {"schedule": schedule["id"], "run": run["id"]}


@pytest.mark.parametrize("case", CASES, ids=[f"{m} {_path(u)} {f}" for m, u, f, _ in CASES])
async def test_a_bad_parameter_is_a_problem_naming_it(
    api: Client, role_tokens: Tokens, ids: dict[str, int], case: tuple[str, str, str, list[str]]
) -> None:
    method, url, field, values = case
    admin = role_tokens.auth("admin")
    for value in values:
        target = url.replace("{run}", str(ids["run"])).replace("{schedule}", str(ids["schedule"]))
        target = target.replace("{}", value)
        response = await api.request(method, target, headers=admin, json=_body(method, target))
        doc = problem(response, 422, field)
        assert doc["errors"][0]["source"] == ("path" if "?" not in url else "query"), doc
        assert "Traceback" not in response.text


def loose_spellings(n: int) -> list[str]:
    """Spellings of id `n` that Python's int() (Litestar's `int` path converter) or msgspec's lax
    conversion read as a number, none of them the document's integer: sign, spaces, other
    scripts' digits, underscores, leading zeros, decimals and exponents."""
    digits = str(n)
    arabic_indic = "".join(chr(0x660 + int(d)) for d in digits)  # U+0661 is ARABIC-INDIC ONE
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in digits)
    return [
        f"+{n}",
        f"%20{n}",
        f"{n}%20",
        f"%09{n}",
        quote(arabic_indic),
        quote(fullwidth),
        f"0{n}",
        f"0_{n}",
        "_".join(digits) + "_0",  # n0 as int() reads it
        "1_0",
        f"{n}.0",
        f"{n}e0",
        f"{n}E0",
        "abc",
    ]


@pytest.mark.parametrize("route", ID_ROUTES, ids=[f"{m} {p}" for m, p, _ in ID_ROUTES])
async def test_a_loosely_spelled_path_id_is_a_problem_naming_it(
    api: Client, role_tokens: Tokens, ids: dict[str, int], route: tuple[str, str, str]
) -> None:
    """Only `^[1-9][0-9]{0,18}$` names a row: `+1` or `%D9%A1` used to reach schedule 1."""
    method, url, field = route
    admin = role_tokens.auth("admin")
    n = ids["run" if field == "run_id" else "schedule"]
    for value in loose_spellings(n):
        target = url.replace("{}", value)
        response = await api.request(method, target, headers=admin, json=_body(method, target))
        doc = problem(response, 422, field)
        assert doc["errors"][0]["source"] == "path", (target, doc)
    # Nothing was changed through a loose spelling: the schedule is still at version 1, live.
    got = await api.get(f"/v1/schedules/{ids['schedule']}", headers=admin)
    assert got.status_code == 200 and got.json()["version"] == 1, got.text


@pytest.mark.parametrize("case", HEADER_CASES, ids=[f"{m} {u} {h}" for m, u, h, _ in HEADER_CASES])
async def test_a_bad_header_is_a_problem_naming_it(
    api: Client, role_tokens: Tokens, ids: dict[str, int], case: tuple[str, str, str, list[str]]
) -> None:
    method, url, header, values = case
    target = url.replace("{schedule}", str(ids["schedule"]))
    for value in values:
        headers = {**role_tokens.auth("admin"), header: value}
        response = await api.request(method, target, headers=headers, json=_body(method, target))
        problem(response, 422, header)


async def test_parameters_at_their_bounds_are_accepted(api: Client, role_tokens: Tokens) -> None:
    viewer = role_tokens.auth("viewer")
    for url in [
        "/v1/runs?queue=" + "q" * 100,
        "/v1/schedules?queue=" + "q" * 100,
        "/v1/schedules?name=" + "n" * 200,
        f"/v1/runs?schedule_id={2**63 - 1}",
        "/v1/workers?state=active&state=gone",
    ]:
        response = await api.get(url, headers=viewer)
        assert response.status_code == 200, (url, response.text)
        assert response.json()["items"] == []
    assert (await api.get(f"/v1/runs/{2**63 - 1}", headers=viewer)).status_code == 404


def test_the_openapi_document_carries_the_queue_rules(app: Litestar) -> None:
    """The bounds are declared, so clients (and schemathesis) see them in the schema."""
    paths = app.openapi_schema.to_schema()["paths"]
    for path in ("/v1/runs", "/v1/schedules"):
        (queue,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == "queue"]
        schema = queue["schema"]
        assert {"type": "string"} in schema["oneOf"]
        assert (schema["minLength"], schema["maxLength"]) == (1, 100)
        assert schema["pattern"] == r"^[^\x00]*$"


INT_FILTERS = [
    ("/v1/runs?schedule_id={}", "schedule_id", "must be a whole number >= 1"),
    ("/v1/runs?limit={}", "limit", "must be a whole number >= 1"),
    ("/v1/schedules?limit={}", "limit", "must be a whole number >= 1"),
    ("/v1/workers?limit={}", "limit", "must be a whole number >= 1"),
    ("/v1/events?limit={}", "limit", "must be a whole number >= 1"),
    ("/v1/runs/{run}/events?limit={}", "limit", "must be a whole number >= 1"),
    ("/v1/schedules/{schedule}/preview?count={}", "count", "must be a whole number from 1 to"),
]


@pytest.mark.parametrize("case", INT_FILTERS, ids=[f"{_path(u)} {f}" for u, f, _ in INT_FILTERS])
async def test_an_integer_filter_refuses_null_in_plain_words(
    api: Client, role_tokens: Tokens, ids: dict[str, int], case: tuple[str, str, str]
) -> None:
    """`schedule_id=null` (a script's `jq -r .id` of nothing) listed EVERY schedule's runs as
    the caller's; `abc` was answered with the validator's "Expected `int | null`, got `str`"."""
    url, field, words = case
    viewer = role_tokens.auth("viewer")
    url = url.replace("{run}", str(ids["run"])).replace("{schedule}", str(ids["schedule"]))
    for value in ["null", "abc", "", "1.0", "%201", "0"]:
        doc = problem(await api.get(url.replace("{}", value), headers=viewer), 422, field)
        message = doc["errors"][0]["message"]
        assert message.startswith(words), doc
        assert "Expected" not in doc["detail"] and "`" not in doc["detail"], doc
        assert doc["errors"][0]["source"] == "query", doc
    assert (await api.get(url.replace("{}", "1"), headers=viewer)).status_code == 200
