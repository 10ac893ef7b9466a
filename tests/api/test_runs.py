"""/v1/runs over HTTP: keyset pages and filters, a run with its attempts, its events, and the
operator's retry and cancel (with their audit events, and no drift from the event log)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease
from pgsched.app.services import schedules
from tests.api.conftest import Tokens
from tests.api.test_enqueue_route import define, enqueue
from tests.api.test_schedules import problem
from tests.factories import cover_last_month, make_schedule
from tests.support import store as test_store

Client = AsyncTestClient[Litestar]


async def _worker(db: Conn) -> int:
    row = await store.register_worker(
        db, name="w1", host="h", pid=1, version="t", queues=["default"], slots=4, now=None
    )
    return int(row["id"])


async def _claim(db: Conn, worker_id: int, now: datetime | None = None) -> Lease:
    (claimed,) = await test_store.claim_runs(
        db, worker_id=worker_id, queues=["default"], limit=1, lease_seconds=30, actor="w1", now=now
    )
    return Lease.of(claimed)


async def _dead_run(db: Conn, *, max_attempts: int = 2) -> dict[str, Any]:
    """A run that failed every attempt, through the store as a worker would."""
    s = await make_schedule(db, max_attempts=max_attempts)
    run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)
    worker = await _worker(db)
    for attempt in range(max_attempts):
        # Each attempt a minute later by the store's clock, past the retry backoff.
        at = datetime.now(UTC) + timedelta(minutes=attempt + 1)
        lease = await _claim(db, worker, now=at)
        outcome = {"status": "failed", "error": f"boom {attempt + 1}", "duration_ms": 5.0}
        assert await test_store.fail_run(db, lease, outcome, jitter=0.5, actor="w1", now=at)
    got = await test_store.get_run(db, run["id"])
    assert got is not None and got["state"] == "dead"
    return got


async def test_list_runs_pages_and_filters(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await make_schedule(db, kind="cron", interval_seconds=None, cron="*/10 * * * *")
    other = await make_schedule(db, queue="other")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await cover_last_month(db)  # the hour before `end` is last month's at 00:xx on the 1st
    backfill = await schedules.backfill(
        db, s["id"], end - timedelta(hours=1), end, actor="t", now=None
    )
    assert len(backfill.created) == 6
    triggered, _ = await schedules.trigger(db, other["id"], actor="t", now=None)
    viewer = role_tokens.auth("viewer")

    seen: list[int] = []
    cursor = None
    while True:
        query = "/v1/runs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(query, headers=viewer)).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7, "keyset pages neither repeat nor skip"
    assert seen[0] == triggered["id"], "newest occurrence first"

    only = (await api.get(f"/v1/runs?schedule_id={other['id']}", headers=viewer)).json()
    assert [r["id"] for r in only["items"]] == [triggered["id"]]
    assert only["items"][0]["schedule_name"] == other["name"]
    queue = (await api.get("/v1/runs?queue=other", headers=viewer)).json()
    assert [r["id"] for r in queue["items"]] == [triggered["id"]]
    await store.cancel_run(db, backfill.created[0], actor="t", now=None)
    states = (await api.get("/v1/runs?status=cancelled&status=dead", headers=viewer)).json()
    assert [r["id"] for r in states["items"]] == [backfill.created[0]]
    since = (end - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    until = end.isoformat().replace("+00:00", "Z")
    window = (
        await api.get("/v1/runs", params={"since": since, "until": until}, headers=viewer)
    ).json()
    assert len(window["items"]) == 3  # :30, :40, :50
    problem(await api.get("/v1/runs?status=lost", headers=viewer), 422, "status")
    problem(await api.get("/v1/runs?cursor=WzFd", headers=viewer), 422, "cursor")
    naive = await api.get("/v1/runs", params={"since": "2030-01-01T00:00:00"}, headers=viewer)
    problem(naive, 422, "since")


async def test_a_run_with_its_attempts_and_events(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    dead = await _dead_run(db)
    viewer = role_tokens.auth("viewer")
    run = (await api.get(f"/v1/runs/{dead['id']}", headers=viewer)).json()
    assert run["state"] == "dead" and run["outcome"]["error"] == "boom 2"
    assert "lease_token" not in run
    attempts = run["attempts"]
    assert [(a["attempt"], a["result"]) for a in attempts] == [(1, "failed"), (2, "dead")]
    assert attempts[0]["outcome"]["error"] == "boom 1" and attempts[1]["worker_id"] is not None
    assert all(a["ended_at"] >= a["started_at"] for a in attempts)

    types: list[str] = []
    cursor = None
    while True:
        url = f"/v1/runs/{dead['id']}/events?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(url, headers=viewer)).json()
        types += [e["type"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert types == [
        "run.created",
        "run.claimed",
        "run.retry_scheduled",
        "run.claimed",
        "run.dead",
    ]
    problem(await api.get("/v1/runs/999999", headers=viewer), 404)
    problem(await api.get("/v1/runs/999999/events", headers=viewer), 404)


async def test_retry_a_dead_run(api: Client, role_tokens: Tokens, db: Conn) -> None:
    dead = await _dead_run(db, max_attempts=2)
    op = {**role_tokens.auth("operator"), "User-Agent": "runbook"}
    response = await api.post(f"/v1/runs/{dead['id']}/retry", headers=op)
    assert response.status_code == 200, response.text
    run = response.json()
    assert (run["state"], run["finished_at"], run["attempt"]) == ("waiting", None, 2)
    assert run["max_attempts"] == 4, "the schedule's attempts again, from where it stopped"
    cur = await db.execute(
        "SELECT actor, data, meta FROM pgsched.event WHERE stream = 'run' AND stream_id = %s "
        "AND type = 'run.retried'",
        [dead["id"]],
    )
    (event,) = await cur.fetchall()
    assert event["actor"] == "operator-token" and event["meta"]["user_agent"] == "runbook"
    assert event["meta"]["old"]["state"] == "dead" and event["data"]["state"] == "waiting"
    assert set(event["data"]) == {
        "state",
        "available_at",
        "max_attempts",
        "finished_at",
        "cancel_requested",
    }
    again = await api.post(f"/v1/runs/{dead['id']}/retry", headers=op)
    assert problem(again, 409)["detail"].startswith(f"run {dead['id']} is waiting")
    problem(await api.post("/v1/runs/999999/retry", headers=op), 404)
    # The retried run is claimable again, and the log still folds into the tables.
    lease = await _claim(db, await _worker(db))
    assert lease.attempt == 3
    assert await replay.verify(db) == []


async def test_cancel_waiting_and_running_runs(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await make_schedule(db)
    waiting, _ = await schedules.trigger(db, s["id"], actor="t", now=None, idempotency_key="a")
    running, _ = await schedules.trigger(db, s["id"], actor="t", now=None, idempotency_key="b")
    op = role_tokens.auth("operator")
    # Claim the older one (the claim takes the earliest available), then cancel both.
    lease = await _claim(db, await _worker(db))
    assert lease.run_id == waiting["id"]
    waiting, running = running, waiting

    cancelled = await api.post(f"/v1/runs/{waiting['id']}/cancel", headers=op)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    asked = await api.post(f"/v1/runs/{running['id']}/cancel", headers=op)
    assert (asked.json()["state"], asked.json()["cancel_requested"]) == ("running", True)
    problem(await api.post(f"/v1/runs/{running['id']}/cancel", headers=op), 409)
    problem(await api.post(f"/v1/runs/{waiting['id']}/cancel", headers=op), 409)
    problem(await api.post("/v1/runs/999999/cancel", headers=op), 404)
    cur = await db.execute(
        "SELECT type, actor, meta FROM pgsched.event WHERE stream = 'run' "
        "AND type IN ('run.cancelled', 'run.cancel_requested') ORDER BY id"
    )
    rows = await cur.fetchall()
    assert [(r["type"], r["actor"], r["meta"]["old"]["state"]) for r in rows] == [
        ("run.cancelled", "operator-token", "waiting"),
        ("run.cancel_requested", "operator-token", "running"),
    ]
    # A cancelled run can be retried: back to waiting, no longer marked for cancellation.
    retried = (await api.post(f"/v1/runs/{waiting['id']}/retry", headers=op)).json()
    assert (retried["state"], retried["cancel_requested"]) == ("waiting", False)
    assert await replay.verify(db) == []


async def test_retry_of_a_run_for_later_that_never_started_keeps_its_start(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    """A run enqueued for later, cancelled while it waited: retry puts it back to waiting for
    later (ADR 0004), not available at once; a run that did start may start again now."""
    await define(api, role_tokens)
    op = role_tokens.auth("operator")
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    created = await enqueue(api, role_tokens, {"job": "mail", "run_at": later.isoformat()})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    assert (await api.post(f"/v1/runs/{run_id}/cancel", headers=op)).status_code == 200
    retried = await api.post(f"/v1/runs/{run_id}/retry", headers=op)
    assert retried.status_code == 200, retried.text
    run = retried.json()
    assert (run["state"], run["attempt"]) == ("waiting", 0)
    assert datetime.fromisoformat(run["available_at"]) == later, run
    # Nothing claims it before its time.
    none = await test_store.claim_runs(
        db,
        worker_id=await _worker(db),
        queues=["default"],
        limit=5,
        lease_seconds=30,
        actor="w1",
        now=None,
    )
    assert [r["id"] for r in none if r["id"] == run_id] == []

    # A run that ran and died is available at once on retry, whatever its due time was.
    dead = await _dead_run(db, max_attempts=1)
    before = datetime.now(UTC)
    again = (await api.post(f"/v1/runs/{dead['id']}/retry", headers=op)).json()
    assert before - timedelta(seconds=5) <= datetime.fromisoformat(again["available_at"])
    assert datetime.fromisoformat(again["available_at"]) <= datetime.now(UTC) + timedelta(seconds=1)
    assert await replay.verify(db) == []
