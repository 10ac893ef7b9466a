"""POST /v1/runs over HTTP: an ad-hoc run of a job definition with arguments of its own
(ADR 0027), its Idempotency-Key, roles and problems; the run's own payload and timeout in the
run reads; a worker running it with the run's arguments, not the definition's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from tests.api.conftest import Tokens
from tests.support.worker import running_worker, wait_state

Client = AsyncTestClient[Litestar]
JOBS = "tests.workers.jobs_for_tests"


def problem(response: Any, status: int, field: str, source: str | None = "body") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["type"].startswith("urn:pgsched:problem:")
    assert [e["field"] for e in doc["errors"]] == [field], doc
    if source is not None:
        assert doc["errors"][0].get("source") == source, doc
    return doc


async def define(api: Client, tokens: Tokens, name: str = "mail", **over: Any) -> dict[str, Any]:
    """A job definition through the API: a schedule with no timing."""
    body = {"name": name, "job_type": "noop", **over}
    response = await api.post("/v1/schedules", json=body, headers=tokens.auth("admin"))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["kind"] == "job" and created["next_due_at"] is None, created
    return created


async def enqueue(
    api: Client, tokens: Tokens, body: dict[str, Any], *, key: str | None = None
) -> Any:
    headers = tokens.auth("operator") | ({"Idempotency-Key": key} if key is not None else {})
    return await api.post("/v1/runs", json=body, headers=headers)


async def test_an_enqueued_run_runs_with_its_own_payload(
    api: Client, role_tokens: Tokens, db: Conn, dsn: str
) -> None:
    await db.execute(
        "CREATE TABLE public.job_log (id bigserial, idempotency_key text, note text, pid int,"
        " at timestamptz DEFAULT clock_timestamp())"
    )
    definition = await define(
        api,
        role_tokens,
        job_type="python",
        payload={"target": f"{JOBS}:slow", "kwargs": {"dsn": dsn, "seconds": 3600}},
        timeout_seconds=60,
        max_attempts=1,
    )
    # The definition's arguments would outlast its timeout: the run's own are what it runs with.
    own = {"kwargs": {"dsn": dsn, "seconds": 0.01}}
    response = await enqueue(
        api, role_tokens, {"job": "mail", "payload": own, "priority": 3, "timeout_seconds": 30}
    )
    assert response.status_code == 201, response.text
    run = response.json()
    assert response.headers["location"] == f"/v1/runs/{run['id']}"
    assert (run["schedule_id"], run["schedule_name"]) == (definition["id"], "mail")
    assert (run["origin"], run["state"], run["adhoc"], run["priority"]) == (
        "enqueue",
        "waiting",
        True,
        3,
    )
    merged = {"target": f"{JOBS}:slow", **own}  # the definition's target, the run's kwargs
    assert (run["payload"], run["timeout_seconds"]) == (merged, 30)

    detail = (await api.get(f"/v1/runs/{run['id']}", headers=role_tokens.auth("viewer"))).json()
    assert (detail["payload"], detail["timeout_seconds"], detail["attempts"]) == (merged, 30, [])
    listed = await api.get("/v1/runs", headers=role_tokens.auth("viewer"))
    (item,) = listed.json()["items"]
    assert (item["id"], item["payload"], item["timeout_seconds"]) == (run["id"], merged, 30)

    async with running_worker(dsn):
        done = await wait_state(db, run["id"], {"succeeded"})
    assert done["attempt"] == 1
    cur = await db.execute("SELECT idempotency_key, note FROM public.job_log ORDER BY id")
    key = f"{run['id']}:1"
    assert await cur.fetchall() == [
        {"idempotency_key": key, "note": "start"},
        {"idempotency_key": key, "note": "end"},
    ]

    cur = await db.execute(
        "SELECT actor, meta FROM pgsched.event WHERE stream = 'run' AND stream_id = %s"
        " AND type = 'run.created'",
        [run["id"]],
    )
    (created,) = await cur.fetchall()
    assert created["actor"] == "operator-token" and created["meta"]["via"] == "api"
    assert await replay.verify(db) == []


async def test_a_run_without_overrides_takes_the_definitions_values(
    api: Client, role_tokens: Tokens
) -> None:
    await define(api, role_tokens, queue="mail", priority=7, max_attempts=4, timeout_seconds=20)
    response = await enqueue(api, role_tokens, {"job": "mail"})
    assert response.status_code == 201, response.text
    run = response.json()
    assert (run["queue"], run["priority"], run["max_attempts"]) == ("mail", 7, 4)
    # Null: the definition's payload and timeout, read when the run starts (ADR 0004).
    assert (run["payload"], run["timeout_seconds"]) == (None, None)

    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    nulls = {"payload": None, "queue": None, "priority": None, "max_attempts": None}
    body = {"job": "mail", "queue": "bulk", "run_at": later.isoformat(), "max_attempts": 1}
    response = await enqueue(api, role_tokens, body | {"priority": -5})
    assert response.status_code == 201, response.text
    run = response.json()
    assert (run["queue"], run["priority"], run["max_attempts"]) == ("bulk", -5, 1)
    assert datetime.fromisoformat(run["due_at"]) == later
    assert datetime.fromisoformat(run["available_at"]) == later
    explicit = await enqueue(api, role_tokens, {"job": "mail", **nulls})
    assert explicit.status_code == 201, explicit.text
    assert explicit.json()["queue"] == "mail"


async def test_a_repeated_idempotency_key_returns_the_same_run(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    await define(api, role_tokens)
    first = await enqueue(api, role_tokens, {"job": "mail", "priority": 1}, key="order-1")
    assert first.status_code == 201, first.text
    run = first.json()
    assert run["idempotency_key"] == "order-1"
    # As the trigger does: 200 with the first request's run, whatever this request's body.
    again = await enqueue(api, role_tokens, {"job": "mail", "priority": 2}, key="order-1")
    assert again.status_code == 200, again.text
    assert again.json() == run and "location" not in again.headers
    other = await enqueue(api, role_tokens, {"job": "mail"}, key="order-2")
    assert other.status_code == 201 and other.json()["id"] != run["id"]
    keyless = [await enqueue(api, role_tokens, {"job": "mail"}) for _ in range(2)]
    assert [r.status_code for r in keyless] == [201, 201]
    assert keyless[0].json()["id"] != keyless[1].json()["id"]
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.run")
    assert (await cur.fetchone() or {})["n"] == 4

    headers = role_tokens.auth("operator")
    for key in ("", "k" * 256, "a\x00b"):
        response = await api.post(
            "/v1/runs", json={"job": "mail"}, headers=headers | {"Idempotency-Key": key}
        )
        problem(response, 422, "Idempotency-Key", "header")


async def test_roles(api: Client, role_tokens: Tokens) -> None:
    await define(api, role_tokens)
    viewer = await api.post("/v1/runs", json={"job": "mail"}, headers=role_tokens.auth("viewer"))
    assert viewer.status_code == 403, viewer.text
    assert viewer.headers["content-type"].startswith("application/problem+json")
    anonymous = await api.post("/v1/runs", json={"job": "mail"})
    assert anonymous.status_code == 401, anonymous.text
    admin = await api.post("/v1/runs", json={"job": "mail"}, headers=role_tokens.auth("admin"))
    assert admin.status_code == 201, admin.text


async def test_an_unknown_or_deleted_definition_is_404_naming_job(
    api: Client, role_tokens: Tokens
) -> None:
    doc = problem(await enqueue(api, role_tokens, {"job": "nope"}), 404, "job")
    assert "'nope'" in doc["detail"]
    definition = await define(api, role_tokens)
    assert (await enqueue(api, role_tokens, {"job": "mail"})).status_code == 201  # now cached
    deleted = await api.delete(
        f"/v1/schedules/{definition['id']}", headers=role_tokens.auth("admin")
    )
    assert deleted.status_code == 204, deleted.text
    problem(await enqueue(api, role_tokens, {"job": "mail"}), 404, "job")


async def test_a_changed_definition_is_what_the_payload_is_validated_against(
    api: Client, role_tokens: Tokens
) -> None:
    """The API caches definitions (ADR 0027): a change after the cache was filled is seen."""
    definition = await define(api, role_tokens)
    assert (await enqueue(api, role_tokens, {"job": "mail"})).status_code == 201
    python = {"target": "os.path:join"}
    problem(
        await enqueue(api, role_tokens, {"job": "mail", "payload": python}), 422, "payload.target"
    )
    changed = await api.patch(
        f"/v1/schedules/{definition['id']}",
        json={"job_type": "python", "payload": python},
        headers=role_tokens.auth("admin"),
    )
    assert changed.status_code == 200, changed.text
    own = {"kwargs": {"a": "x"}}
    response = await enqueue(api, role_tokens, {"job": "mail", "payload": own})
    assert response.status_code == 201, response.text
    assert response.json()["payload"] == python | own


async def test_bad_values_are_422_naming_the_field(api: Client, role_tokens: Tokens) -> None:
    await define(
        api,
        role_tokens,
        job_type="http",
        payload={"url": "https://example.com/hook", "method": "POST"},
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"payload": {"method": "FETCH"}}, "payload.method"),
        ({"payload": {"url": "ftp://example.com/"}}, "payload.url"),
        ({"payload": {"unheard_of": 1}}, "payload.unheard_of"),
        ({"payload": {"body": "a\x00b"}}, "payload.body"),
        ({"payload": []}, "payload"),
        ({"priority": 40_000}, "priority"),
        ({"priority": "1"}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": -1.5}, "timeout_seconds"),
        ({"queue": ""}, "queue"),
        ({"queue": "a\x00"}, "queue"),
        ({"run_at": "2026-01-01T00:00:00"}, "run_at"),
        ({"run_at": 1_700_000_000}, "run_at"),
        ({"run_at": "8000-01-01T00:00:00Z"}, "run_at"),  # no partition that far ahead
        ({"job": 5}, "job"),
        ({"job": ""}, "job"),
        ({"job": "a\x00"}, "job"),
        ({"bogus": 1}, "bogus"),
    ]
    for over, field in cases:
        response = await enqueue(api, role_tokens, {"job": "mail", **over})
        doc = problem(response, 422, field, "body")
        assert doc["detail"].startswith(f"{field}: "), (over, doc)
    missing = await api.post("/v1/runs", json={}, headers=role_tokens.auth("operator"))
    problem(missing, 422, "job", "body")
    listed = await api.get("/v1/runs", headers=role_tokens.auth("viewer"))
    assert listed.json()["items"] == [], "nothing was enqueued"


SECRET = {"$secret": "DB"}
TAKEN_OVER = {
    "python-target": ("python", {"target": f"{JOBS}:ok"}, {"target": "os:system"}, "target"),
    "http-url": ("http", {"url": "https://example.com/a"}, {"url": "https://evil.example/"}, "url"),
    "http-headers": ("http", {"url": "https://example.com/a"}, {"headers": {"x": "1"}}, "headers"),
    "command-argv": ("command", {"argv": ["true"]}, {"argv": ["sh", "-c", "id"]}, "argv"),
    "command-env": ("command", {"argv": ["true"]}, {"env": {"LD_PRELOAD": "/x.so"}}, "env"),
    "sql": ("sql", {"statement": "SELECT 1"}, {"statement": "DROP TABLE x"}, "statement"),
    "secret": ("python", {"target": f"{JOBS}:ok"}, {"kwargs": {"k": SECRET}}, "kwargs.k"),
}


@pytest.mark.parametrize("case", TAKEN_OVER.values(), ids=TAKEN_OVER.keys())
async def test_an_operator_gives_arguments_never_what_runs(
    api: Client, role_tokens: Tokens, case: tuple[str, dict[str, Any], dict[str, Any], str]
) -> None:
    """Enqueueing needs the operator role, changing a definition the admin's: an enqueue gives a
    run its arguments (python kwargs, an http body, sql params), never another target, URL,
    headers, command, environment, statement or secret (ADR 0027)."""
    job_type, payload, override, field = case
    await define(api, role_tokens, job_type=job_type, payload=payload)
    response = await enqueue(api, role_tokens, {"job": "mail", "payload": override})
    problem(response, 422, f"payload.{field}")
