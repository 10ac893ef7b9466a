"""Answers that say what is true, and the small gaps of the API, over HTTP on a real database.

A backfill before the database's history says so (not "retired"); a backfill that makes nothing
says why; a PATCH does not change a schedule's kind unless it says so; an unknown state is
refused with the valid ones; /stats names dead runs `dead`; events never hand out a lease token;
DELETE honours If-Match; one worker by id; the event feed and its SSE tail can start from now.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.services import schedules
from tests.api.conftest import LiveServer, Tokens
from tests.api.test_events import _read_sse
from tests.api.test_schedules import create, problem
from tests.factories import cover_last_month, make_schedule
from tests.support import store as test_store

Client = AsyncTestClient[Litestar]


def _span(start: datetime, end: datetime) -> dict[str, str]:
    return {"from": start.isoformat(), "to": end.isoformat()}


async def test_a_backfill_before_the_history_says_so_not_retired(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    yearly = await create(api, role_tokens, name="yearly", cron="0 0 1 1 *")
    op = role_tokens.auth("operator")
    url = f"/v1/schedules/{yearly['id']}/backfill"
    year = datetime.now(UTC).year
    # July to July holds the 1 January of last year: long before this fresh database's runs.
    before = _span(datetime(year - 2, 7, 1, tzinfo=UTC), datetime(year - 1, 7, 1, tzinfo=UTC))
    doc = problem(await api.post(url, json=before, headers=op), 422, "from")
    first_month = datetime.now(UTC).strftime("%Y-%m")
    assert "retired" not in doc["detail"], doc
    assert f"holds runs from {first_month} on, when its history starts" in doc["detail"]
    assert f"reaches {year - 1}-01" in doc["detail"]

    # Once maintenance has retired a month of runs, the answer says that instead.
    await db.execute(
        "INSERT INTO pgsched.event (occurred_at, stream, type, actor, meta) VALUES "
        "(now(), 'system', 'partition.retired', 'maintenance', "
        "jsonb_build_object('table', 'pgsched.run', 'partition', 'pgsched.run_old'))"
    )
    doc = problem(await api.post(url, json=before, headers=op), 422, "from")
    assert "older months of runs were retired" in doc["detail"]
    assert f"{first_month} is the oldest kept" in doc["detail"]


async def test_a_backfill_that_makes_nothing_says_why(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    op = role_tokens.auth("operator")
    now = datetime.now(UTC)
    every_minute = await create(
        api, role_tokens, name="every-minute", cron=None, interval_seconds=60
    )
    url = f"/v1/schedules/{every_minute['id']}/backfill"
    earlier = _span(now - timedelta(hours=2), now - timedelta(hours=1))
    response = await api.post(url, json=earlier, headers=op)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["requested"], result["created"]) == (0, [])
    assert "count from when it was created" in result["reason"], result
    assert every_minute["created_at"].replace("+00:00", "Z")[:19] in result["reason"]

    await cover_last_month(db)  # the hour before now may be last month's
    cron = await create(api, role_tokens, name="ten-minutes", cron="*/10 * * * *")
    url = f"/v1/schedules/{cron['id']}/backfill"
    end = now.replace(minute=0, second=0, microsecond=0)
    hour = _span(end - timedelta(hours=1), end)
    made = (await api.post(url, json=hour, headers=op)).json()
    assert (made["requested"], len(made["created"]), made["reason"]) == (6, 6, None)
    again = (await api.post(url, json=hour, headers=op)).json()
    assert (again["created"], again["reason"]) == (
        [],
        "every occurrence in the range already has a run",
    )
    empty = _span(end - timedelta(minutes=9), end - timedelta(minutes=1))
    none = (await api.post(url, json=empty, headers=op)).json()
    assert none["requested"] == 0
    assert none["reason"] == (
        "the schedule's first occurrence at or after `from` is "
        f"{end.isoformat().replace('+00:00', 'Z')}"
    )


async def test_a_patch_changes_the_kind_only_when_it_clears_the_old_timing(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    s = await create(api, role_tokens, cron="30 2 * * *")
    admin = role_tokens.auth("admin")
    url = f"/v1/schedules/{s['id']}"
    doc = problem(await api.patch(url, json={"interval_seconds": 300}, headers=admin), 422)
    assert [e["field"] for e in doc["errors"]] == ["interval_seconds"]
    assert '"cron": null' in doc["detail"], doc
    unchanged = (await api.get(url, headers=admin)).json()
    assert (unchanged["kind"], unchanged["cron"], unchanged["version"]) == ("cron", "30 2 * * *", 1)
    # Changing the timing of the same kind needs nothing more.
    same = await api.patch(url, json={"cron": "45 2 * * *"}, headers=admin)
    assert same.status_code == 200 and same.json()["cron"] == "45 2 * * *"

    switched = await api.patch(url, json={"cron": None, "interval_seconds": 300}, headers=admin)
    assert switched.status_code == 200, switched.text
    assert (switched.json()["kind"], switched.json()["cron"]) == ("interval", None)
    once = {"run_at": "2099-01-01T00:00:00Z"}
    problem(await api.patch(url, json=once, headers=admin), 422, "run_at")
    assert await replay.verify(db) == []


async def test_an_unknown_state_is_refused_with_the_valid_ones(
    api: Client, role_tokens: Tokens
) -> None:
    viewer = role_tokens.auth("viewer")
    doc = problem(await api.get("/v1/runs?status=failed", headers=viewer), 422, "status")
    assert doc["errors"][0]["message"] == (
        "must be one of waiting, running, succeeded, dead, cancelled, blocked, skipped;"
        " got 'failed'"
    )
    doc = problem(await api.get("/v1/workers?state=bogus", headers=viewer), 422, "state")
    assert "active, stopping, stopped, gone" in doc["errors"][0]["message"]


async def test_stats_name_dead_runs_dead(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await make_schedule(db, max_attempts=1)
    run, _ = await schedules.trigger(db, s["id"], actor="t", now=None)
    worker = await store.register_worker(
        db, name="w", host="h", pid=1, version="t", queues=["default"], slots=1, now=None
    )
    (claimed,) = await test_store.claim_runs(
        db,
        worker_id=worker["id"],
        queues=["default"],
        limit=1,
        lease_seconds=30,
        actor="w",
        now=None,
    )
    outcome = {"status": "failed", "error": "boom", "duration_ms": 1.0}
    assert await test_store.fail_run(
        db, store.Lease.of(claimed), outcome, jitter=0.5, actor="w", now=None
    )
    errors = (await api.get("/stats", headers=role_tokens.auth("viewer"))).json()["error_stats"]
    assert errors["dead_runs_24h"] == errors["failed_runs_24h"] == 1
    document = (await api.get("/schema/openapi.json", headers=role_tokens.auth("viewer"))).json()
    fields = document["components"]["schemas"]["ErrorStats"]["properties"]
    assert fields["failed_runs_24h"]["deprecated"] is True, "the old name is a documented alias"
    assert "deprecated" not in fields["dead_runs_24h"]
    dead = (await api.get("/v1/runs?status=dead", headers=role_tokens.auth("viewer"))).json()
    assert [r["id"] for r in dead["items"]] == [run["id"]]

    # A claim's event carries the lease token in the database (replay folds it), never over
    # the API, whatever the reader's role.
    cur = await db.execute(
        "SELECT count(*) AS n FROM pgsched.event WHERE data ? 'lease_token' OR meta ? 'lease_token'"
    )
    assert (await cur.fetchone())["n"] >= 1
    for role in ("viewer", "admin"):
        headers = role_tokens.auth(role)
        page = (await api.get(f"/v1/runs/{run['id']}/events", headers=headers)).json()
        feed = (await api.get("/v1/events?limit=200", headers=headers)).json()
        assert "run.claimed" in [e["type"] for e in page["items"]]
        assert "lease_token" not in json.dumps(page) + json.dumps(feed)
    detail = (await api.get(f"/v1/runs/{run['id']}", headers=headers)).json()
    assert detail["attempts"][0]["worker_id"] == worker["id"], "attempts still read the events"


async def test_delete_honours_if_match(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await create(api, role_tokens)
    admin = role_tokens.auth("admin")
    url = f"/v1/schedules/{s['id']}"
    await api.patch(url, json={"priority": 3}, headers=admin)  # now at version 2
    problem(await api.delete(url, headers={**admin, "If-Match": '"1"'}), 412, "If-Match")
    assert (await api.get(url, headers=admin)).status_code == 200, "a stale delete deletes nothing"
    deleted = await api.delete(url, headers={**admin, "If-Match": '"2"'})
    assert deleted.status_code == 204
    problem(await api.get(url, headers=admin), 404)
    other = await create(api, role_tokens, name="other")
    bare = await api.delete(f"/v1/schedules/{other['id']}", headers=admin)
    assert bare.status_code == 204, "without If-Match, as for PATCH, the delete is unconditional"
    assert await replay.verify(db) == []


async def test_one_worker_by_id(api: Client, role_tokens: Tokens, db: Conn) -> None:
    worker = await store.register_worker(
        db, name="w7", host="box", pid=42, version="t", queues=["default", "q2"], slots=3, now=None
    )
    viewer = role_tokens.auth("viewer")
    got = await api.get(f"/v1/workers/{worker['id']}", headers=viewer)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["id"], body["name"], body["queues"], body["slots"]) == (
        worker["id"],
        "w7",
        ["default", "q2"],
        3,
    )
    assert (body["healthy"], body["running"]) == (True, 0)
    listed = (await api.get("/v1/workers", headers=viewer)).json()["items"]
    assert listed == [body]
    problem(await api.get("/v1/workers/999999", headers=viewer), 404)
    problem(await api.get(f"/v1/workers/{worker['id']}"), 401)


async def test_the_feed_can_start_from_now(api: Client, role_tokens: Tokens, db: Conn) -> None:
    viewer = role_tokens.auth("viewer")
    await make_schedule(db)  # history: tokens and this schedule
    first = (await api.get("/v1/events?after=now", headers=viewer)).json()
    assert first["items"] == [] and first["next_cursor"]
    later = await make_schedule(db)
    page = (
        await api.get(f"/v1/events?after={first['next_cursor']}&limit=200", headers=viewer)
    ).json()
    assert [(e["type"], e["stream_id"]) for e in page["items"]] == [
        ("schedule.created", later["id"])
    ]


async def test_the_sse_tail_can_start_from_now(
    live_server: LiveServer, role_tokens: Tokens, db: Conn
) -> None:
    viewer = role_tokens.auth("viewer")
    await make_schedule(db)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        async with asyncio.timeout(15):
            async with client.stream(
                "GET", "/v1/events/stream?after=now", headers=viewer
            ) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                opening: dict[str, Any] = {}
                async for line in lines:  # the opening message: a comment, an id, a retry
                    if line == "":
                        break
                    key, _, value = line.partition(": ")
                    opening[key] = value
                assert opening.get("id"), opening
                later = await make_schedule(db)
                (live,) = await _read_sse(lines, 1)
                data = json.loads(live["data"])
                assert (live["event"], data["stream_id"]) == ("schedule.created", later["id"])
            # Reconnecting from the opening id (EventSource's Last-Event-ID) misses nothing.
            resume = {**viewer, "Last-Event-ID": opening["id"]}
            async with client.stream("GET", "/v1/events/stream", headers=resume) as response:
                (again,) = await _read_sse(response.aiter_lines(), 1)
            assert json.loads(again["data"])["stream_id"] == later["id"]


async def test_no_public_api_reference(api: Client, role_tokens: Tokens) -> None:
    """Only /health and /metrics answer without a caller: the reference is a console page
    (tests/ui/test_console_pages.py), and the document needs a token here."""
    assert (await api.get("/docs")).status_code == 404
    problem(await api.get("/schema/openapi.json"), 401)
    document = await api.get("/schema/openapi.json", headers=role_tokens.auth("viewer"))
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
    assert "/v1/workers/{worker_id}" in document.json()["paths"]
