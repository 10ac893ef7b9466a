"""Schedule health over HTTP (ADR 0032): thresholds set on create and PATCH, the health shown on
a schedule and filtered on, and /health's `schedules` component, which never fails the service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease
from pgsched.app.domain.schedule import HEALTH_POLICY
from tests.api.conftest import Tokens
from tests.api.test_schedules import create, events, problem
from tests.support import store as test_store

Client = AsyncTestClient[Litestar]


async def _dead_runs(db: Conn, schedule: dict[str, Any], n: int) -> None:
    """`n` runs of `schedule` that ended dead, now (the database clock)."""
    now = datetime.now(UTC)
    for k in range(n):
        due = now - timedelta(seconds=n - k)
        await store.insert_runs(
            db, [(schedule["id"], due, due)], origin="backfill", actor="t", now=None
        )
        (row,) = await test_store.claim_runs(
            db, worker_id=1, queues=[schedule["queue"]], limit=1, lease_seconds=30, actor="w",
            now=None,
        )  # fmt: skip
        await test_store.fail_run(
            db, Lease.of(row), {"status": "failed"}, jitter=0.0, actor="w", now=None, final=True
        )


async def test_thresholds_are_set_on_create_shown_and_patched_in_part(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    s = await create(
        api, role_tokens, health_policy={"consecutive_failures": 5}, pause_after_failures=10
    )
    assert s["health_policy"] == {**HEALTH_POLICY, "consecutive_failures": 5}
    assert (s["health"], s["health_reason"], s["health_since"]) == ("healthy", None, None)
    assert s["pause_after_failures"] == 10
    patched = await api.patch(
        f"/v1/schedules/{s['id']}",
        json={"health_policy": {"failure_rate": 0.25, "overdue_seconds": None}},
        headers=role_tokens.auth("admin"),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["health_policy"] == {
        **HEALTH_POLICY,
        "consecutive_failures": 5,
        "failure_rate": 0.25,
        "overdue_seconds": None,
    }
    off = await api.patch(
        f"/v1/schedules/{s['id']}",
        json={"pause_after_failures": None},
        headers=role_tokens.auth("admin"),
    )
    assert off.json()["pause_after_failures"] is None
    updates = [e for e in await events(db, s["id"]) if e["type"] == "schedule.updated"]
    assert updates[0]["data"]["health_policy"]["failure_rate"] == 0.25
    assert updates[1]["data"]["pause_after_failures"] is None
    assert await replay.verify(db) == []


async def test_bad_thresholds_are_problems_naming_the_field(
    api: Client, role_tokens: Tokens
) -> None:
    admin = role_tokens.auth("admin")
    for given, field in (
        ({"health_policy": {"failure_rate": 1.5}}, "health_policy.failure_rate"),
        ({"health_policy": {"failure_rate": 0}}, "health_policy.failure_rate"),
        ({"health_policy": {"window_runs": 0}}, "health_policy.window_runs"),
        ({"health_policy": {"consecutive": 3}}, "health_policy.consecutive"),
        ({"pause_after_failures": 0}, "pause_after_failures"),
    ):
        response = await api.post(
            "/v1/schedules", json={"name": "x", "job_type": "noop", **given}, headers=admin
        )
        problem(response, 422, field)


async def test_health_is_shown_filtered_and_reported_without_failing_the_service(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    viewer = role_tokens.auth("viewer")
    await store.register_worker(
        db, name="w", host="h", pid=1, version="t", queues=["default"], slots=1, now=None
    )
    ok = await create(api, role_tokens, name="fine")
    failing = await create(
        api, role_tokens, name="failing", queue="failing",
        health_policy={"consecutive_failures": 2},
    )  # fmt: skip
    before = (await api.get("/health")).json()
    assert before["components"]["schedules"] == "healthy"
    assert before["details"]["schedules"] == "every schedule is healthy"

    await _dead_runs(db, failing, 2)
    shown = (await api.get(f"/v1/schedules/{failing['id']}", headers=viewer)).json()
    assert (shown["health"], shown["health_reason"]) == ("unhealthy", "consecutive_failures")
    assert shown["health_since"] is not None
    listed = await api.get("/v1/schedules", params={"health": "unhealthy"}, headers=viewer)
    assert [s["id"] for s in listed.json()["items"]] == [failing["id"]]
    healthy = await api.get("/v1/schedules", params={"health": "healthy"}, headers=viewer)
    assert ok["id"] in [s["id"] for s in healthy.json()["items"]]
    problem(
        await api.get("/v1/schedules", params={"health": "sick"}, headers=viewer), 422, "health"
    )

    response = await api.get("/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "healthy"  # the service is; one of its jobs is not
    assert body["components"]["schedules"] == "unhealthy"
    assert body["details"]["schedules"] == (
        "1 unhealthy, 0 degraded; the worst is unhealthy (consecutive_failures)"
    )
    assert "failing" not in body["details"]["schedules"]  # public: no schedule names
    assert (body["metrics"]["unhealthy_schedules"], body["metrics"]["degraded_schedules"]) == (
        1,
        0,
    )


async def test_patching_a_threshold_judges_the_runs_at_once(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    s = await create(api, role_tokens, queue="q", health_policy={"failure_rate": 1.0})
    await _dead_runs(db, s, 2)
    assert (await api.get(f"/v1/schedules/{s['id']}", headers=role_tokens.auth("viewer"))).json()[
        "health"
    ] == "degraded"
    patched = await api.patch(
        f"/v1/schedules/{s['id']}",
        json={"health_policy": {"consecutive_failures": 2}},
        headers=role_tokens.auth("admin"),
    )
    assert (patched.json()["health"], patched.json()["health_reason"]) == (
        "unhealthy",
        "consecutive_failures",
    )
    changes = [e for e in await events(db, s["id"]) if e["type"] == "schedule.health_changed"]
    assert [(e["meta"]["from"], e["meta"]["to"]) for e in changes] == [
        ("healthy", "degraded"),
        ("degraded", "unhealthy"),
    ]
    assert await replay.verify(db) == []
