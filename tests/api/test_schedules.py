"""/v1/schedules over HTTP: create, list, get, update (ETag/If-Match), delete, pause, resume,
trigger (Idempotency-Key), backfill, preview; their errors as problem details; their audit
events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from tests.api.conftest import Tokens
from tests.factories import cover_last_month

Client = AsyncTestClient[Litestar]
ADMIN_UA = "pgsched-tests/1.0"


def body(**over: Any) -> dict[str, Any]:
    return {"name": "hourly", "job_type": "noop", "cron": "0 * * * *", **over}


async def create(api: Client, tokens: Tokens, **over: Any) -> dict[str, Any]:
    response = await api.post("/v1/schedules", json=body(**over), headers=tokens.auth("admin"))
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def events(db: Conn, stream_id: int, stream: str = "schedule") -> list[dict[str, Any]]:
    cur = await db.execute(
        "SELECT type, actor, data, meta FROM pgsched.event WHERE stream = %s AND stream_id = %s "
        "ORDER BY id",
        [stream, stream_id],
    )
    return await cur.fetchall()


def problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["type"].startswith("urn:pgsched:problem:")
    assert doc["title"] and doc["instance"]
    if field is not None:
        assert [e["field"] for e in doc["errors"]] == [field], doc
    return doc


async def test_create_computes_the_first_due_time_and_records_who(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    headers = {**role_tokens.auth("admin"), "User-Agent": ADMIN_UA}
    response = await api.post(
        "/v1/schedules",
        headers=headers,
        json=body(
            cron="0  9 * * MON-FRI",
            timezone="Europe/Berlin",
            queue="reports",
            priority=-5,
            max_attempts=5,
            retry_backoff={"delay_seconds": 30, "factor": 3, "max_delay_seconds": 900},
            overlap_policy="skip",
            missed_policy="all",
            missed_cap=10,
            max_concurrency=2,
            jitter_seconds=5,
        ),
    )
    assert response.status_code == 201, response.text
    s = response.json()
    assert response.headers["etag"] == '"1"' and s["version"] == 1
    assert response.headers["location"] == f"/v1/schedules/{s['id']}"
    assert s["kind"] == "cron" and s["cron"] == "0 9 * * MON-FRI"  # whitespace normalised
    assert s["retry_backoff"] == {"delay_seconds": 30.0, "factor": 3.0, "max_delay_seconds": 900.0}
    due = datetime.fromisoformat(s["next_due_at"])
    assert s["next_due_at"].endswith("Z") and s["created_at"].endswith("Z")
    local = due.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
    # From created_at: against a later now(), a creation at 08:59:59.9 (Berlin) failed.
    assert timedelta(0) <= due - datetime.fromisoformat(s["created_at"]) <= timedelta(days=4)

    cur = await db.execute("SELECT * FROM pgsched.schedule WHERE id = %s", [s["id"]])
    row = await cur.fetchone()
    assert row is not None
    assert (row["retry_delay_seconds"], row["retry_factor"], row["retry_max_delay_seconds"]) == (
        30,
        3,
        900,
    )
    (created,) = await events(db, s["id"])
    assert created["type"] == "schedule.created" and created["actor"] == "admin-token"
    assert created["meta"]["source_ip"] and created["meta"]["user_agent"] == ADMIN_UA
    assert created["meta"]["via"] == "api" and created["meta"]["token_prefix"].startswith("pgs_")
    assert await replay.verify(db) == []


async def test_create_interval_and_once(api: Client, role_tokens: Tokens) -> None:
    every = await create(api, role_tokens, name="every", cron=None, interval_seconds=90)
    assert every["kind"] == "interval"
    delta = datetime.fromisoformat(every["next_due_at"]) - datetime.fromisoformat(
        every["created_at"]
    )
    assert delta == timedelta(0), "an interval starts at its creation (the anchor)"
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    once = await create(api, role_tokens, name="once", cron=None, run_at=at.isoformat())
    assert once["kind"] == "once" and datetime.fromisoformat(once["next_due_at"]) == at
    # A one-off a moment in the past (a client's "now") still runs: within the grace period.
    just = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    late = await create(api, role_tokens, name="late", cron=None, run_at=just)
    assert late["next_due_at"] is not None
    paused = await create(api, role_tokens, name="paused", enabled=False)
    assert paused["enabled"] is False and paused["paused_at"] is not None


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * * *"}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"job_type": "ftp"}, "job_type"),
    ({"job_type": "http", "payload": {}}, "payload.url"),
    (
        {
            "job_type": "http",
            "payload": {"url": "https://x.example", "headers": {"Authorization": "Bearer x"}},
        },
        "payload.headers.Authorization",
    ),
    ({"payload": {"stray": 1}}, "payload.stray"),
    ({"payload": {"a\x00": 1}}, "payload"),
    ({"overlap_policy": "sometimes"}, "overlap_policy"),
    ({"missed_policy": "never"}, "missed_policy"),
    ({"interval_seconds": 60}, "interval_seconds"),
    ({"bogus": True}, "bogus"),
    ({"name": ""}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"cron": None, "run_at": "2030-01-01T00:00:00"}, "run_at"),
    ({"cron": None, "run_at": "2001-01-01T00:00:00Z"}, "run_at"),
    ({"starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}, "ends_at"),
    ({"ends_at": "2001-01-01T00:00:00Z"}, "ends_at"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"priority": 40000}, "priority"),
    ({"cron": None, "interval_seconds": 2**31}, "interval_seconds"),
    ({"retry_backoff": {"factor": 0.5}}, "retry_backoff.factor"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
]


async def test_invalid_definitions_are_422_naming_the_field(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    for over, field in INVALID:
        response = await api.post(
            "/v1/schedules", json=body(**over), headers=role_tokens.auth("admin")
        )
        doc = problem(response, 422, field)
        assert doc["detail"] and doc["errors"][0]["message"], over
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.schedule")
    assert await cur.fetchone() == {"n": 0}


async def test_a_schedule_without_timing_is_a_job_definition(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    """ADR 0027: none of cron, interval_seconds and run_at makes a job definition, never due;
    a PATCH cannot clear a schedule's timing, but may give a job definition one."""
    admin = role_tokens.auth("admin")
    job = await create(api, role_tokens, name="mail", cron=None, queue="mail", priority=2)
    assert (job["kind"], job["next_due_at"], job["cron"]) == ("job", None, None)
    url = f"/v1/schedules/{job['id']}"
    timed = await api.patch(url, json={"interval_seconds": 60}, headers=admin)
    assert timed.status_code == 200, timed.text
    assert timed.json()["kind"] == "interval" and timed.json()["next_due_at"] is not None
    cleared = problem(await api.patch(url, json={"interval_seconds": None}, headers=admin), 422)
    assert [e["field"] for e in cleared["errors"]] == ["interval_seconds"], cleared
    assert await replay.verify(db) == []


async def test_malformed_oversized_and_duplicate_bodies(
    api: Client, role_tokens: Tokens, app: Litestar
) -> None:
    admin = role_tokens.auth("admin")
    problem(await api.post("/v1/schedules", content=b'{"name": ', headers=admin), 400)
    problem(await api.post("/v1/schedules", content=b"[1, 2]", headers=admin), 422, "body")
    assert app.request_max_body_size == 256 * 1024
    huge = body(payload={"x": "y" * (300 * 1024)})
    problem(await api.post("/v1/schedules", json=huge, headers=admin), 413)
    await create(api, role_tokens)
    problem(await api.post("/v1/schedules", json=body(), headers=admin), 409, "name")


async def test_list_pages_and_filters(api: Client, role_tokens: Tokens) -> None:
    for i in range(5):
        await create(api, role_tokens, name=f"s{i}", queue="a" if i % 2 else "b")
    viewer = role_tokens.auth("viewer")
    first = (await api.get("/v1/schedules?limit=2", headers=viewer)).json()
    assert [s["name"] for s in first["items"]] == ["s0", "s1"] and first["next_cursor"]
    second = (
        await api.get(f"/v1/schedules?limit=2&cursor={first['next_cursor']}", headers=viewer)
    ).json()
    assert [s["name"] for s in second["items"]] == ["s2", "s3"]
    third = (
        await api.get(f"/v1/schedules?limit=2&cursor={second['next_cursor']}", headers=viewer)
    ).json()
    assert [s["name"] for s in third["items"]] == ["s4"] and third["next_cursor"] is None
    everything = (await api.get("/v1/schedules?limit=100000", headers=viewer)).json()
    assert len(everything["items"]) == 5, "an oversized limit is capped, not refused"
    queue_a = (await api.get("/v1/schedules?queue=a", headers=viewer)).json()
    assert [s["name"] for s in queue_a["items"]] == ["s1", "s3"]
    named = (await api.get("/v1/schedules?name=s4&enabled=true", headers=viewer)).json()
    assert [s["name"] for s in named["items"]] == ["s4"]
    problem(await api.get("/v1/schedules?cursor=%%%", headers=viewer), 422, "cursor")
    zero = problem(await api.get("/v1/schedules?limit=0", headers=viewer), 422, "limit")
    assert zero["errors"][0]["source"] == "query"


async def test_get_unknown_ids_routes_and_methods(api: Client, role_tokens: Tokens) -> None:
    viewer = role_tokens.auth("viewer")
    problem(await api.get("/v1/schedules/424242", headers=viewer), 404)
    problem(await api.get("/v1/nothing", headers=viewer), 404)
    doc = problem(await api.put("/v1/schedules", headers=viewer), 405)
    assert doc["type"] == "urn:pgsched:problem:method-not-allowed"


async def test_patch_with_if_match(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await create(api, role_tokens)
    admin = role_tokens.auth("admin")
    url = f"/v1/schedules/{s['id']}"
    got = await api.get(url, headers=role_tokens.auth("viewer"))
    assert got.headers["etag"] == '"1"'

    changed = await api.patch(
        url, json={"priority": 7, "payload": {}}, headers={**admin, "If-Match": '"1"'}
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == '"2"' and changed.json()["priority"] == 7
    assert changed.json()["next_due_at"] == s["next_due_at"], "no timing change, no recompute"

    stale = await api.patch(url, json={"priority": 8}, headers={**admin, "If-Match": '"1"'})
    problem(stale, 412, "If-Match")
    weak = await api.patch(url, json={"priority": 8}, headers={**admin, "If-Match": 'W/"2"'})
    problem(weak, 412, "If-Match")  # If-Match compares strongly (RFC 9110 13.1.1)
    strong = await api.patch(url, json={"priority": 8}, headers={**admin, "If-Match": '"2"'})
    assert strong.status_code == 200 and strong.headers["etag"] == '"3"'
    star = await api.patch(url, json={"queue": "q2"}, headers={**admin, "If-Match": "*"})
    assert star.status_code == 200
    bare = await api.patch(url, json={"queue": "q3"}, headers=admin)
    assert bare.status_code == 200 and bare.json()["version"] == 5
    same = await api.patch(url, json={"queue": "q3"}, headers=admin)
    assert same.json()["version"] == 5, "a change to nothing records nothing"

    *_, last = await events(db, s["id"])
    assert last["type"] == "schedule.updated" and last["actor"] == "admin-token"
    assert last["data"]["queue"] == "q3" and last["meta"]["old"] == {"queue": "q2"}
    assert last["meta"]["source_ip"]
    assert await replay.verify(db) == []


async def test_patch_timing_switches_kind_and_recomputes_from_now(
    api: Client, role_tokens: Tokens
) -> None:
    s = await create(api, role_tokens, cron="0 0 1 1 *")  # yearly: far away
    admin = role_tokens.auth("admin")
    url = f"/v1/schedules/{s['id']}"
    switch = {"cron": None, "interval_seconds": 60}  # a new kind clears the old timing
    response = await api.patch(url, json=switch, headers=admin)
    assert response.status_code == 200, response.text
    t = response.json()
    assert (t["kind"], t["cron"], t["interval_seconds"]) == ("interval", None, 60)
    due = datetime.fromisoformat(t["next_due_at"])
    assert timedelta(0) <= due - datetime.now(UTC) <= timedelta(seconds=61)
    problem(
        await api.patch(url, json={"interval_seconds": None}, headers=admin),
        422,
        "interval_seconds",
    )
    problem(await api.patch(url, json={"cron": "bad"}, headers=admin), 422, "cron")
    problem(await api.patch(url, json={"timezone": "Nowhere/City"}, headers=admin), 422, "timezone")
    problem(await api.patch(url, json={"version": 9}, headers=admin), 422, "version")
    problem(await api.patch("/v1/schedules/999999", json={}, headers=admin), 404)
    await create(api, role_tokens, name="other")
    problem(await api.patch(url, json={"name": "other"}, headers=admin), 409, "name")
    paused = await api.patch(url, json={"enabled": False}, headers=admin)
    assert paused.json()["paused_at"] is not None


async def test_delete_is_soft_and_frees_the_name(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    s = await create(api, role_tokens)
    admin = role_tokens.auth("admin")
    response = await api.delete(f"/v1/schedules/{s['id']}", headers=admin)
    assert response.status_code == 204 and response.content == b""
    problem(await api.get(f"/v1/schedules/{s['id']}", headers=admin), 404)
    problem(await api.delete(f"/v1/schedules/{s['id']}", headers=admin), 404)
    cur = await db.execute("SELECT deleted_at FROM pgsched.schedule WHERE id = %s", [s["id"]])
    row = await cur.fetchone()
    assert row is not None and row["deleted_at"] is not None
    *_, deleted = await events(db, s["id"])
    assert deleted["type"] == "schedule.deleted" and deleted["meta"]["old"]["deleted_at"] is None
    assert (await create(api, role_tokens))["id"] != s["id"]


async def test_pause_and_resume(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await create(api, role_tokens)
    op = {**role_tokens.auth("operator"), "User-Agent": "ops-console"}
    for _ in range(2):  # the second pause changes nothing
        paused = await api.post(f"/v1/schedules/{s['id']}/pause", headers=op)
        assert paused.status_code == 200 and paused.json()["enabled"] is False
    assert paused.headers["etag"] == '"2"'
    resumed = await api.post(f"/v1/schedules/{s['id']}/resume", headers=op)
    assert resumed.json()["enabled"] is True and resumed.json()["paused_at"] is None
    problem(await api.post("/v1/schedules/999999/pause", headers=op), 404)
    kinds = [
        (e["type"], e["actor"], e["meta"].get("user_agent")) for e in await events(db, s["id"])
    ]
    assert kinds[1:] == [
        ("schedule.paused", "operator-token", "ops-console"),
        ("schedule.resumed", "operator-token", "ops-console"),
    ]
    assert await replay.verify(db) == []


async def test_trigger_with_idempotency_keys(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await create(api, role_tokens)
    op = role_tokens.auth("operator")
    url = f"/v1/schedules/{s['id']}/trigger"
    first = await api.post(url, headers={**op, "Idempotency-Key": "deploy-42"})
    assert first.status_code == 201, first.text
    run = first.json()
    assert (run["origin"], run["state"], run["adhoc"]) == ("trigger", "waiting", True)
    again = await api.post(url, headers={**op, "Idempotency-Key": "deploy-42"})
    assert again.status_code == 200 and again.json()["id"] == run["id"]
    other = await api.post(url, headers={**op, "Idempotency-Key": "deploy-43"})
    assert other.status_code == 201 and other.json()["id"] != run["id"]
    keyless = await api.post(url, headers=op)
    assert keyless.status_code == 201
    problem(await api.post("/v1/schedules/999999/trigger", headers=op), 404)
    (created,) = await events(db, run["id"], "run")
    assert created["actor"] == "operator-token" and created["meta"]["source_ip"]


async def test_backfill(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await create(api, role_tokens, cron="*/10 * * * *")
    op = role_tokens.auth("operator")
    url = f"/v1/schedules/{s['id']}/backfill"
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await cover_last_month(db)  # the hour before `end` is last month's at 00:xx on the 1st
    span = {"from": (end - timedelta(hours=1)).isoformat(), "to": end.isoformat()}
    first = await api.post(url, json=span, headers=op)
    assert first.status_code == 200, first.text
    assert first.json()["requested"] == 6 and len(first.json()["created"]) == 6
    again = (await api.post(url, json=span, headers=op)).json()
    assert (again["requested"], again["created"]) == (6, []), "backfill is idempotent"
    future = {"from": end.isoformat(), "to": (end + timedelta(days=1)).isoformat()}
    problem(await api.post(url, json=future, headers=op), 422, "to")
    backwards = {"from": span["to"], "to": span["from"]}
    problem(await api.post(url, json=backwards, headers=op), 422, "to")
    problem(await api.post(url, json={"from": span["from"]}, headers=op), 422, "to")
    yearly = await create(api, role_tokens, name="yearly", cron="0 0 1 1 *")
    # July to July holds a 1 January every year (end - 3*365 d .. end - 2*365 d held none in 2024).
    retired = {
        "from": datetime(end.year - 3, 7, 1, tzinfo=UTC).isoformat(),
        "to": datetime(end.year - 2, 7, 1, tzinfo=UTC).isoformat(),
    }
    response = await api.post(f"/v1/schedules/{yearly['id']}/backfill", json=retired, headers=op)
    problem(response, 422, "from")
    *_, recorded = await events(db, s["id"])
    assert recorded["type"] == "schedule.backfilled" and recorded["actor"] == "operator-token"
    assert recorded["meta"]["created"] == 0 and recorded["meta"]["user_agent"]


async def test_preview(api: Client, role_tokens: Tokens) -> None:
    s = await create(api, role_tokens, cron="*/15 * * * *")
    viewer = role_tokens.auth("viewer")
    url = f"/v1/schedules/{s['id']}/preview"
    preview = (await api.get(f"{url}?count=3", headers=viewer)).json()
    due = [datetime.fromisoformat(t) for t in preview["due"]]
    assert len(due) == 3 and due[1] - due[0] == due[2] - due[1] == timedelta(minutes=15)
    assert due[0] > datetime.fromisoformat(preview["after"])
    problem(await api.get(f"{url}?count=0", headers=viewer), 422, "count")
    problem(await api.get(f"{url}?count=101", headers=viewer), 422, "count")
    problem(await api.get("/v1/schedules/999999/preview", headers=viewer), 404)


async def test_a_null_for_a_timing_field_already_null_changes_nothing(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    """`{"interval_seconds": null}` on a cron schedule asks for nothing: not a change of kind.
    Clearing the timing it has is refused in words that say what to send instead."""
    s = await create(api, role_tokens, cron="0 0 1 1 *")
    admin = role_tokens.auth("admin")
    url = f"/v1/schedules/{s['id']}"
    same = await api.patch(url, json={"interval_seconds": None, "run_at": None}, headers=admin)
    assert same.status_code == 200, same.text
    assert (same.json()["kind"], same.json()["cron"], same.json()["version"]) == (
        "cron",
        "0 0 1 1 *",
        s["version"],
    )
    doc = problem(await api.patch(url, json={"cron": None}, headers=admin), 422, "cron")
    assert (
        "a timed schedule cannot become a job definition; set interval_seconds or run_at"
        in (doc["errors"][0]["message"])
    ), doc
    both = {"cron": None, "interval_seconds": None}  # still nothing to time it by
    problem(await api.patch(url, json=both, headers=admin), 422, "cron")
    assert await replay.verify(db) == []


async def test_names_with_control_characters_and_tiny_timeouts_are_refused(
    api: Client, role_tokens: Tokens
) -> None:
    admin = role_tokens.auth("admin")
    for name in ("two\nlines", "tab\there", "esc\x1b[31m"):
        response = await api.post("/v1/schedules", json=body(name=name), headers=admin)
        doc = problem(response, 422, "name")
        assert "control characters" in doc["errors"][0]["message"], doc
    for timeout in (1e-300, 0.0009):
        response = await api.post(
            "/v1/schedules", json=body(timeout_seconds=timeout), headers=admin
        )
        problem(response, 422, "timeout_seconds")
    fast = await create(api, role_tokens, name="fast", timeout_seconds=0.001)
    assert fast["timeout_seconds"] == 0.001
