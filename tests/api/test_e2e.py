"""End to end: a schedule created over HTTP is materialised by the ticker, executed by a real
worker, and shows up over HTTP (run, attempts, events, stats, workers) with no drift between
the tables and the event log. The API runs as `pgsched_api`, the worker as `pgsched_worker`."""

from __future__ import annotations

from datetime import UTC, datetime

from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app import ticker
from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from tests.api.conftest import Tokens, as_role, wait_for
from tests.support.worker import running_worker


async def test_a_schedule_made_over_http_runs_and_is_visible_over_http(
    api: AsyncTestClient[Litestar], role_tokens: Tokens, db: Conn, dsn: str
) -> None:
    admin, viewer = role_tokens.auth("admin"), role_tokens.auth("viewer")
    created = await api.post(
        "/v1/schedules",
        headers=admin,
        json={
            "name": "e2e",
            "job_type": "noop",
            "run_at": datetime.now(UTC).isoformat(),
            "queue": "default",
        },
    )
    assert created.status_code == 201, created.text
    schedule = created.json()

    result = await ticker.tick(db, now=None)
    assert result.created == 1
    (run_id,) = result.run_ids

    async with running_worker(
        as_role(dsn, "pgsched_worker"), slots=2, poll_seconds=0.1, rescue_every_seconds=1
    ) as worker:

        async def finished() -> dict[str, object] | None:
            run = (await api.get(f"/v1/runs/{run_id}", headers=viewer)).json()
            return run if run["state"] == "succeeded" else None

        run = await wait_for(finished, within=15)
        workers = (await api.get("/v1/workers", headers=viewer)).json()["items"]
        assert [w["healthy"] for w in workers] == [True]
        health = (await api.get("/health")).json()
        assert health["components"]["workers"] == "healthy"

    assert worker.stats.succeeded == 1
    assert run["schedule_id"] == schedule["id"] and run["origin"] == "schedule"
    assert run["outcome"]["status"] == "succeeded" and run["finished_at"]
    (attempt,) = run["attempts"]
    assert (attempt["attempt"], attempt["result"]) == (1, "succeeded")
    assert attempt["worker_id"] == workers[0]["id"]

    listed = (await api.get(f"/v1/runs?schedule_id={schedule['id']}", headers=viewer)).json()
    assert [r["id"] for r in listed["items"]] == [run_id]
    events = (await api.get(f"/v1/runs/{run_id}/events", headers=viewer)).json()["items"]
    assert [e["type"] for e in events] == ["run.created", "run.claimed", "run.succeeded"]

    stats = (await api.get("/stats", headers=viewer)).json()
    assert stats["execution_stats"]["runs_24h"] == 1
    assert stats["execution_stats"]["success_rate"] == 1.0
    assert stats["error_stats"]["dead_runs_24h"] == 0

    feed = (await api.get("/v1/events?limit=200", headers=viewer)).json()["items"]
    mine = [e["type"] for e in feed if e["stream"] in ("schedule", "run")]
    assert mine == [
        "schedule.created",
        "run.created",
        "schedule.advanced",
        "run.claimed",
        "run.succeeded",
    ]
    assert await replay.verify(db) == []
