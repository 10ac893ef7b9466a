"""The OpenAPI document and the API's behaviour agree (app.api.openapi, app.api.decoding).

Each test walks the served document, so a new route or body is covered without editing it:
request bodies that refuse unknown fields say `additionalProperties: false` (and do refuse
them), integer bounds are integers and exact, a JSON number where the document says date-time
is a 422 naming the field, and OPTIONS answers `Allow` with the methods the document lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from litestar.testing import AsyncTestClient

from pgsched.app.api.schemas import BIGINT
from pgsched.app.db.store import Conn
from tests.factories import make_schedule

Auth = Callable[[str], dict[str, str]]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# A valid body for each operation that takes one (the walk fails on a new one: add it here).
VALID = {
    ("post", "/v1/schedules"): {"name": "n", "job_type": "noop", "cron": "* * * * *"},
    ("patch", "/v1/schedules/{schedule_id}"): {},
    ("post", "/v1/schedules/{schedule_id}/backfill"): {
        "from": "2020-01-01T00:00:00Z",
        "to": "2020-01-02T00:00:00Z",
    },
    ("post", "/v1/runs"): {"job": "n"},
}


async def _document(api: AsyncTestClient[Any], auth: Auth) -> dict[str, Any]:
    response = await api.get("/schema/openapi.json", headers=auth("viewer"))
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    # Litestar wraps a body with examples in allOf.
    ref = schema["$ref"] if "$ref" in schema else schema["allOf"][0]["$ref"]
    name = ref.rsplit("/", 1)[-1]
    component: dict[str, Any] = doc["components"]["schemas"][name]
    return name, component


def _bodies(doc: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, component name, component) of every JSON request body."""
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if body is None:
                continue
            schema = body["content"]["application/json"]["schema"]
            yield (method, path, *_resolve(doc, schema))


def _schemas(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def _url(path: str, ids: dict[str, int]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", str(value))
    return path


async def _ids(db: Conn) -> dict[str, int]:
    schedule = await make_schedule(db)
    return {"schedule_id": schedule["id"], "run_id": 1}


async def test_every_request_body_forbids_unknown_fields_and_says_so(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    doc = await _document(api, auth)
    ids = await _ids(db)
    bodies = list(_bodies(doc))
    assert {(m, p) for m, p, _, _ in bodies} >= {
        ("post", "/v1/schedules"),
        ("patch", "/v1/schedules/{schedule_id}"),
        ("post", "/v1/schedules/{schedule_id}/backfill"),
        ("post", "/v1/runs"),
    }
    for method, path, name, component in bodies:
        assert component.get("additionalProperties") is False, (method, path, name)
        body = {**VALID[(method, path)], "zz_unknown": 1}
        response = await api.request(
            method.upper(), _url(path, ids), json=body, headers=auth("admin")
        )
        assert response.status_code == 422, (method, path, response.text)
        assert [e["field"] for e in response.json()["errors"]] == ["zz_unknown"], response.text
    # Nested request structs too: a typo inside retry_backoff is refused as well.
    for name in ("RetryBackoff", "RetryBackoffPatch"):
        assert doc["components"]["schemas"][name]["additionalProperties"] is False
    response = await api.post(
        "/v1/schedules",
        json={"name": "n", "job_type": "noop", "cron": "* * * * *", "retry_backoff": {"x": 1}},
        headers=auth("admin"),
    )
    assert [e["field"] for e in response.json()["errors"]] == ["retry_backoff.x"], response.text


async def test_integer_bounds_are_exact_integers(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    doc = await _document(api, auth)
    integers = [
        s
        for s in _schemas(doc)
        if s.get("type") == "integer"
        or {v.get("type") for v in s.get("oneOf", []) if isinstance(v, dict)} - {"null"}
        == {"integer"}
    ]
    assert integers
    for schema in integers:
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                assert type(schema[key]) is int, schema
    path_id = doc["paths"]["/v1/schedules/{schedule_id}"]["get"]["parameters"][0]["schema"]
    assert path_id["maximum"] == BIGINT
    # The documented maximum is accepted (404: no such row) and one more is refused as input.
    last = await api.get(f"/v1/schedules/{BIGINT}", headers=auth("viewer"))
    assert last.status_code == 404, last.text
    beyond = await api.get(f"/v1/schedules/{BIGINT + 1}", headers=auth("viewer"))
    assert beyond.status_code in (404, 422), beyond.text


async def test_a_number_where_the_document_says_date_time_is_422_naming_the_field(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    doc = await _document(api, auth)
    ids = await _ids(db)
    checked = 0
    for method, path, _, component in _bodies(doc):
        for field, schema in component["properties"].items():
            formats = {s.get("format") for s in _schemas(schema)}
            if "date-time" not in formats:
                continue
            body = {**VALID[(method, path)], field: 1_700_000_000}
            if field == "run_at":
                body.pop("cron", None)  # one timing at a time
            response = await api.request(
                method.upper(), _url(path, ids), json=body, headers=auth("admin")
            )
            assert response.status_code == 422, (method, path, field, response.text)
            assert [e["field"] for e in response.json()["errors"]] == [field], response.text
            checked += 1
    assert checked >= 9  # run_at, starts_at, ends_at twice; from, to; an enqueue's run_at


async def test_options_allows_what_the_document_lists(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    doc = await _document(api, auth)
    ids = await _ids(db)
    for path, operations in doc["paths"].items():
        documented = {m.upper() for m in operations if m in METHODS} | {"OPTIONS"}
        response = await api.options(_url(path, ids))
        assert response.status_code == 204, (path, response.text)
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == documented, (path, allowed, documented)
        # A method the path does not have: 405 with the same list.
        missing = next(m for m in ("PUT", "TRACE", "DELETE") if m not in documented)
        refused = await api.request(missing, _url(path, ids), headers=auth("admin"))
        assert refused.status_code == 405, (path, refused.text)
        assert {m.strip() for m in refused.headers["allow"].split(",")} == documented


async def test_a_number_in_a_date_time_query_parameter_is_422_naming_it(
    api: AsyncTestClient[Any], auth: Auth, db: Conn
) -> None:
    doc = await _document(api, auth)
    ids = await _ids(db)
    checked = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                formats = {s.get("format") for s in _schemas(parameter["schema"])}
                if parameter["in"] != "query" or "date-time" not in formats:
                    continue
                for number in ("1700000000", "1e9", "-1.5"):
                    response = await api.request(
                        method.upper(),
                        _url(path, ids),
                        params={parameter["name"]: number},
                        headers=auth("admin"),
                    )
                    assert response.status_code == 422, (path, parameter["name"], response.text)
                    fields = [e["field"] for e in response.json()["errors"]]
                    assert fields == [parameter["name"]], response.text
                ok = await api.request(
                    method.upper(),
                    _url(path, ids),
                    params={parameter["name"]: "2026-01-01T00:00:00+01:00"},
                    headers=auth("admin"),
                )
                assert ok.status_code == 200, ok.text
                checked += 1
    assert checked >= 2  # since, until
