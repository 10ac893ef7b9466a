"""Hostile bodies that used to answer 500: deep nesting and instants at the calendar's edges.

Each case was first reproduced over HTTP against the unchanged app (a 500 with "an internal
error occurred"); now each is a 422 problem naming the field, or the body for nesting
(app.api.decoding, ADR 0014 "Bounded input").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from pgsched.app.api.decoding import EARLIEST, LATEST, MAX_JSON_DEPTH, duplicate_key, nesting_depth
from pgsched.app.db.store import Conn
from tests.factories import make_schedule

Auth = Callable[[str], dict[str, str]]

EDGES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59-14:00",
    "1969-12-31T23:59:59.999999Z",
    "9000-01-01T00:00:00Z",
]


def problem(response: Any, status: int, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert [e["field"] for e in doc["errors"]] == [field], doc
    return doc


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON object nested `depth` levels (written out: json.dumps itself would recurse)."""
    return '{"a":' * depth + leaf + "}" * depth


async def _post(api: AsyncTestClient[Any], path: str, body: str, auth: Auth) -> Any:
    headers = {**auth("admin"), "content-type": "application/json"}
    return await api.post(path, content=body, headers=headers)


@pytest.mark.parametrize(
    "body",
    [
        '{"name":"x","job_type":"noop","cron":"* * * * *","payload":' + nested(1000) + "}",
        '{"name":"x","job_type":"noop","payload":{"a":' + "[" * 1000 + "]" * 1000 + "}}",
        "[" * 1000 + "]" * 1000,
        "[" * 5000,  # unterminated: the decoder would recurse before it saw the end
    ],
    ids=["payload-objects", "payload-arrays", "whole-body", "unterminated"],
)
async def test_deep_json_on_create_is_422_naming_the_body(
    api: AsyncTestClient[Any], auth: Auth, body: str
) -> None:
    doc = problem(await _post(api, "/v1/schedules", body, auth), 422, "body")
    assert f"at most {MAX_JSON_DEPTH}" in doc["detail"]


async def test_deep_json_on_update_and_backfill_is_422(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    schedule = await make_schedule(db)
    headers = {**auth("admin"), "content-type": "application/json"}
    patched = await api.patch(
        f"/v1/schedules/{schedule['id']}",
        content='{"payload":' + nested(1000) + "}",
        headers=headers,
    )
    problem(patched, 422, "body")
    backfill = await _post(
        api, f"/v1/schedules/{schedule['id']}/backfill", '{"from":' + nested(1000) + "}", auth
    )
    problem(backfill, 422, "body")


async def test_nesting_up_to_the_limit_is_accepted(api: AsyncTestClient[Any], auth: Auth) -> None:
    # The body and its payload, then the http body's own objects: exactly MAX_JSON_DEPTH.
    inner = nested(MAX_JSON_DEPTH - 2)
    body = (
        '{"name":"deep-ok","job_type":"http","cron":"* * * * *",'
        '"payload":{"url":"https://example.com/","method":"POST","body":' + inner + "}}"
    )
    assert nesting_depth(body.encode()) == MAX_JSON_DEPTH
    response = await _post(api, "/v1/schedules", body, auth)
    assert response.status_code == 201, response.text
    too_deep = body.replace(inner, nested(MAX_JSON_DEPTH - 1))
    problem(await _post(api, "/v1/schedules", too_deep, auth), 422, "body")


def test_nesting_depth_skips_brackets_in_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[{{{{\\"[[["}') == 1
    assert nesting_depth(b"42") == 0
    assert nesting_depth(b'[{"a": [1, {"b": []}]}, []]') == 5


@pytest.mark.parametrize(
    ("field", "timing"),
    [
        ("run_at", {}),
        ("starts_at", {"cron": "* * * * *"}),
        ("ends_at", {"cron": "* * * * *"}),
        ("starts_at", {"interval_seconds": 1}),
    ],
)
async def test_instants_at_the_calendars_edges_are_422_on_create(
    api: AsyncTestClient[Any], auth: Auth, field: str, timing: dict[str, Any]
) -> None:
    for edge in EDGES:
        body = {"name": "edge", "job_type": "noop", **timing, field: edge}
        response = await api.post("/v1/schedules", json=body, headers=auth("admin"))
        doc = problem(response, 422, field)
        assert "1970-01-01T00:00:00Z" in doc["detail"], edge


async def test_instants_at_the_calendars_edges_are_422_on_update(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    schedule = await make_schedule(db)
    for field in ("run_at", "starts_at", "ends_at"):
        for edge in EDGES:
            response = await api.patch(
                f"/v1/schedules/{schedule['id']}", json={field: edge}, headers=auth("admin")
            )
            problem(response, 422, field)


async def test_instants_at_the_calendars_edges_are_422_on_backfill(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    schedule = await make_schedule(db)
    for field in ("from", "to"):
        for edge in EDGES:
            body = {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z", field: edge}
            response = await api.post(
                f"/v1/schedules/{schedule['id']}/backfill", json=body, headers=auth("operator")
            )
            problem(response, 422, field)


async def test_the_range_ends_are_where_the_documentation_says(
    api: AsyncTestClient[Any], auth: Auth
) -> None:
    last = (LATEST - timedelta(microseconds=1)).isoformat()
    inside = [
        {
            "name": "first",
            "job_type": "noop",
            "cron": "* * * * *",
            "starts_at": "1970-01-01T00:00:00Z",
        },
        {"name": "last", "job_type": "noop", "run_at": last},
    ]
    for body in inside:
        response = await api.post("/v1/schedules", json=body, headers=auth("admin"))
        assert response.status_code == 201, response.text
    assert EARLIEST.isoformat() == "1970-01-01T00:00:00+00:00"
    outside = {"name": "after", "job_type": "noop", "run_at": LATEST.isoformat()}
    problem(await api.post("/v1/schedules", json=outside, headers=auth("admin")), 422, "run_at")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"run_at": 4102444800}, "run_at"),
        ({"run_at": 1e10}, "run_at"),
        ({"cron": "* * * * *", "starts_at": 0}, "starts_at"),
        ({"interval_seconds": "60"}, "interval_seconds"),
        ({"cron": "* * * * *", "enabled": "false"}, "enabled"),
        ({"cron": "* * * * *", "retry_backoff": {"factor": "2"}}, "retry_backoff.factor"),
    ],
)
async def test_values_of_another_json_type_are_422_naming_the_field(
    api: AsyncTestClient[Any], auth: Auth, over: dict[str, Any], field: str
) -> None:
    """The OpenAPI document says date-time strings, integers, booleans and numbers; a JSON
    value of another type was converted leniently (a number became a date-time)."""
    body = {"name": "typed", "job_type": "noop", **over}
    problem(await api.post("/v1/schedules", json=body, headers=auth("admin")), 422, field)


async def test_a_number_as_a_backfill_instant_is_422(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    schedule = await make_schedule(db)
    body = {"from": 0, "to": "2020-01-02T00:00:00Z"}
    response = await api.post(
        f"/v1/schedules/{schedule['id']}/backfill", json=body, headers=auth("operator")
    )
    problem(response, 422, "from")


async def test_an_empty_body_is_400_saying_a_body_is_required(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    schedule = await make_schedule(db)
    for method, path in [
        ("POST", "/v1/schedules"),
        ("PATCH", f"/v1/schedules/{schedule['id']}"),
        ("POST", f"/v1/schedules/{schedule['id']}/backfill"),
        ("POST", "/v1/runs"),
    ]:
        headers = {**auth("admin"), "content-type": "application/json"}
        response = await api.request(method, path, content=b" ", headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"].endswith("a JSON body is required"), response.text


async def test_if_match_uses_the_strong_comparison(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    """RFC 9110 13.1.1: If-Match compares strongly, so a weak validator never matches, and an
    entity tag matches only character for character (`"01"` is not `"1"`)."""
    schedule = await make_schedule(db)
    url = f"/v1/schedules/{schedule['id']}"
    admin = auth("admin")
    stale = ['W/"1"', 'W/"1", "x"', '"x", W/"1"', '"01"', '"+1"', '" 1"', '"1"x', '"1', "1"]
    stale += ['"1,2"', '"x,"1"', '"1" "1"', '*, "1"']
    for value in stale:
        response = await api.patch(url, json={"priority": 5}, headers={**admin, "If-Match": value})
        problem(response, 412, "If-Match")
    got = await api.get(url, headers=auth("viewer"))
    assert got.json()["version"] == 1 and got.json()["priority"] != 5, got.text
    version = 1
    for template in ['"{v}"', ' "x" ,\t"{v}" ', 'W/"{v}", "{v}"', "*"]:
        value = template.format(v=version)
        body = {"priority": version + 10}
        response = await api.patch(url, json=body, headers={**admin, "If-Match": value})
        assert response.status_code == 200, (value, response.text)
        assert response.json()["version"] == version + 1
        version += 1


CREATE = '"job_type":"noop","cron":"* * * * *"'


def http(body: str) -> str:
    """A create body for an http job whose request body (any JSON) is `body`."""
    return (
        '{"name":"h","job_type":"http","cron":"* * * * *",'
        '"payload":{"url":"https://example.com/","method":"POST","body":' + body + "}}"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"name":"z3",' + CREATE + ',"name":"dup"}', "name"),
        ('{"name":"z3",' + CREATE + ',"n\\u0061me":"dup"}', "name"),  # the same key, escaped
        (
            '{"name":"z3",' + CREATE + ',"retry_backoff":{"factor":2,"factor":3}}',
            "retry_backoff.factor",
        ),
        (http('{"a":[1,{"b":1,"b":2}]}'), "payload.body.a[1].b"),
        (http('[[], {"": 1, "" : 2}]'), "payload.body[1]."),
    ],
    ids=["top", "escaped", "nested", "in-array", "empty-key"],
)
async def test_a_duplicate_key_is_422_naming_it(
    api: AsyncTestClient[Any], auth: Auth, body: str, field: str
) -> None:
    """JSON decoders keep the last of two equal keys silently; the API refuses the body."""
    doc = problem(await _post(api, "/v1/schedules", body, auth), 422, field)
    assert "more than once" in doc["detail"], doc
    listed = await api.get("/v1/schedules", headers=auth("viewer"))
    assert listed.json()["items"] == [], "nothing was created"


async def test_a_duplicate_key_on_update_and_backfill_is_422(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    schedule = await make_schedule(db)
    headers = {**auth("admin"), "content-type": "application/json"}
    url = f"/v1/schedules/{schedule['id']}"
    patched = await api.patch(url, content='{"priority":1,"priority":2}', headers=headers)
    problem(patched, 422, "priority")
    body = '{"from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z","to":"2026-01-02T00:00:00Z"}'
    problem(await _post(api, url + "/backfill", body, auth), 422, "to")
    assert (await api.get(url, headers=auth("viewer"))).json()["version"] == 1


async def test_equal_keys_in_different_objects_or_strings_are_accepted(
    api: AsyncTestClient[Any], auth: Auth
) -> None:
    payload = '{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":"{\\"a\\":1,\\"a\\":2}","d":{"e\\"":1,"e":2}}'
    response = await _post(api, "/v1/schedules", http(payload), auth)
    assert response.status_code == 201, response.text
    assert response.json()["payload"]["body"]["d"] == {'e"': 1, "e": 2}


def test_duplicate_key_reads_keys_as_json_does() -> None:
    """Keys, not strings: braces, colons and escaped quotes inside strings are text."""
    assert duplicate_key(b'{"a": 1, "a" :2}') == "a"
    assert duplicate_key(b'{"a":1,"b":{"c":[{}, "x", {"d":1,"d":2}]}}') == "b.c[2].d"
    assert duplicate_key(b'[0, [1, 2], {"e\\u0022": 1, "e\\"": 2}]') == '[2].e"'
    assert duplicate_key(b'{"k":"\\":","k:":1}') is None
    assert duplicate_key(b'{"a":"{\\"a\\":1}", "b": {"a": {"a": 1}}}') is None
    assert duplicate_key(b'[{"a":1},{"a":1}]') is None
    assert duplicate_key(b'"a" : "a"') is None


# -- POST /v1/runs (enqueue, ADR 0027) -------------------------------------------------------


async def _define_http_job(api: AsyncTestClient[Any], auth: Auth) -> None:
    body = {
        "name": "hook",
        "job_type": "http",
        "payload": {"url": "https://example.com/", "method": "POST"},
    }
    response = await api.post("/v1/schedules", json=body, headers=auth("admin"))
    assert response.status_code == 201, response.text


async def _enqueue(api: AsyncTestClient[Any], body: str, auth: Auth) -> Any:
    headers = {**auth("operator"), "content-type": "application/json"}
    return await api.post(
        "/v1/runs", content=body.encode("utf-8", "surrogatepass"), headers=headers
    )


async def _no_runs(api: AsyncTestClient[Any], auth: Auth) -> None:
    listed = await api.get("/v1/runs", headers=auth("viewer"))
    assert listed.json()["items"] == [], "nothing was enqueued"


@pytest.mark.parametrize(
    "body",
    [
        '{"job":"hook","payload":{"body":' + nested(1000) + "}}",
        '{"job":"hook","payload":' + "[" * 1000 + "]" * 1000 + "}",
        '{"job":"hook","payload":{"body":' + nested(MAX_JSON_DEPTH - 1) + "}}",
        "[" * 5000,
    ],
    ids=["payload-objects", "payload-arrays", "one-too-deep", "unterminated"],
)
async def test_deep_json_on_enqueue_is_422_naming_the_body(
    api: AsyncTestClient[Any], auth: Auth, body: str
) -> None:
    await _define_http_job(api, auth)
    doc = problem(await _enqueue(api, body, auth), 422, "body")
    assert f"at most {MAX_JSON_DEPTH}" in doc["detail"]
    await _no_runs(api, auth)


async def test_run_at_at_the_calendars_edges_is_422_on_enqueue(
    api: AsyncTestClient[Any], auth: Auth
) -> None:
    await _define_http_job(api, auth)
    for edge in EDGES:
        body = {"job": "hook", "run_at": edge}
        response = await api.post("/v1/runs", json=body, headers=auth("operator"))
        doc = problem(response, 422, "run_at")
        assert "1970-01-01T00:00:00Z" in doc["detail"], edge
    # Inside the range but in a month that has no partition of runs (ADR 0005): a 422 for the
    # caller to fix, not the 503 of a maintenance that is behind.
    for inside in ("1970-01-01T00:00:00Z", "8999-12-31T23:59:59Z"):
        response = await api.post(
            "/v1/runs", json={"job": "hook", "run_at": inside}, headers=auth("operator")
        )
        problem(response, 422, "run_at")
    await _no_runs(api, auth)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ('{"job":"hook","payload":{"body":NaN}}', 400, None),
        ('{"job":"hook","payload":{"body":Infinity}}', 400, None),
        ('{"job":"hook","payload":{"body":1e400}}', 400, None),
        ('{"job":"hook","timeout_seconds":-1e400}', 400, None),
        ('{"job":"hook","priority":1e400}', 400, None),
        ('{"job":"hook","payload":{"body":"\\ud800"}}', 400, None),
        ('{"job":"hook","payload":{"body":1' + "0" * 400 + "}}", 422, "payload.body"),
        ('{"job":"hook","priority":9223372036854775808}', 422, "priority"),
        ('{"job":"hook","max_attempts":18446744073709551616}', 422, "max_attempts"),
        ('{"job":"hook","timeout_seconds":1e308}', 422, "timeout_seconds"),
        ('{"job":"hook","run_at":1e10}', 422, "run_at"),
        ('{"job":"hook","priority":"1"}', 422, "priority"),
        ('{"job":"hook","payload":{"body":{"\\u0000":1}}}', 422, "payload.body"),
        ('{"job":"hook","job":"other"}', 422, "job"),
        ('{"job":"hook","payload":{"a":1,"a":2}}', 422, "payload.a"),
        ('{"job":"' + "x" * 100_000 + '"}', 422, "job"),
        ('{"job":"hook","queue":"' + "\\u202e" * 101 + '"}', 422, "queue"),
    ],
)
async def test_hostile_values_on_enqueue_are_problems(
    api: AsyncTestClient[Any], auth: Auth, body: str, status: int, field: str | None
) -> None:
    await _define_http_job(api, auth)
    response = await _enqueue(api, body, auth)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        problem(response, status, field)
    await _no_runs(api, auth)
