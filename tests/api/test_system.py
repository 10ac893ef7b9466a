"""/health, /stats, /v1/workers, /metrics, and how the API fails: 500s and an absent database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.api import create_app
from pgsched.app.api.config import ApiSettings
from pgsched.app.clock import FakeClock
from pgsched.app.db import store
from pgsched.app.db.store import Conn, Lease, reads
from pgsched.app.services import schedules
from pgsched.app.settings import SettingsError
from tests.api.conftest import Tokens, settings_for, wait_for
from tests.api.test_schedules import problem
from tests.factories import cover_last_month, make_schedule
from tests.support import store as test_store

Client = AsyncTestClient[Litestar]


async def _live_worker(db: Conn, name: str = "w1") -> int:
    row = await store.register_worker(
        db, name=name, host="h", pid=1, version="t", queues=["default"], slots=2, now=None
    )
    return int(row["id"])


async def test_health_healthy_and_degraded(api: Client, db: Conn) -> None:
    response = await api.get("/health")  # no token needed
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "degraded", "no worker yet"
    assert health["components"] == {
        "database": "healthy",
        "ticker": "healthy",
        "workers": "degraded",
        "partitions": "healthy",
        "schedules": "healthy",
    }
    assert health["metrics"]["partition_months_ahead"] == 3
    assert health["timestamp"].endswith("Z")

    await _live_worker(db)
    healthy = (await api.get("/health")).json()
    assert healthy["status"] == "healthy" and healthy["metrics"]["live_workers"] == 1

    # A schedule the ticker should have handled two minutes ago: the ticker is behind.
    await cover_last_month(db)  # `late` is last month's in the first two minutes of the 1st
    late = datetime.now(UTC) - timedelta(minutes=2)
    await make_schedule(db, now=late)
    behind = (await api.get("/health")).json()
    assert (behind["status"], behind["components"]["ticker"]) == ("degraded", "degraded")
    assert behind["metrics"]["overdue_seconds"] >= 119
    assert "overdue" in behind["details"]["ticker"]


async def _detach_future_partitions(db: Conn, keep: int) -> None:
    """Leave only `keep` months of partitions ahead (of runs and of events)."""
    for parent in ("pgsched.run", "pgsched.event"):
        cur = await db.execute(
            "SELECT p.partition::text AS name FROM pgsched.month_partitions_v1(%s::regclass) p "
            "WHERE p.month_start > now() ORDER BY p.month_start",
            [parent],
        )
        for row in (await cur.fetchall())[keep:]:
            # Identifiers from the catalog, not from input.
            await db.execute(f"ALTER TABLE {parent} DETACH PARTITION {row['name']}")


async def test_health_partitions_alarm_then_unhealthy(api: Client, db: Conn) -> None:
    await _live_worker(db)
    await _detach_future_partitions(db, keep=1)
    degraded = await api.get("/health")
    assert degraded.status_code == 200
    assert degraded.json()["components"]["partitions"] == "degraded"
    await _detach_future_partitions(db, keep=0)
    unhealthy = await api.get("/health")
    assert unhealthy.status_code == 503
    assert unhealthy.headers["content-type"].startswith("application/json")
    body = unhealthy.json()
    assert (body["status"], body["components"]["partitions"]) == ("unhealthy", "unhealthy")


async def test_health_degrades_when_a_default_partition_holds_rows(api: Client, db: Conn) -> None:
    """The second partition alarm (ADR 0005). pgsched makes no DEFAULT partition; one that
    someone attached and that caught a row would block creating that row's month later."""
    await _live_worker(db)
    healthy = (await api.get("/health")).json()
    assert healthy["components"]["partitions"] == "healthy", healthy
    s = await make_schedule(db)
    await db.execute("CREATE TABLE pgsched.run_stray PARTITION OF pgsched.run DEFAULT")
    far = datetime(2100, 1, 1, tzinfo=UTC)  # a month with no partition of its own
    await store.insert_runs(db, [(s["id"], far, far)], origin="backfill", actor="t", now=None)
    await db.execute("SELECT pg_stat_force_next_flush()")  # the count comes from the statistics

    async def degraded() -> dict[str, object] | None:
        body = (await api.get("/health")).json()
        return body if body["components"]["partitions"] == "degraded" else None

    body = await wait_for(degraded, within=10)
    assert "DEFAULT partition: pgsched.run 1" in str(body["details"]), body
    cur = await db.execute(
        "SELECT table_name, partition_name, live_rows FROM pgsched.partition_defaults"
    )
    assert await cur.fetchall() == [
        {"table_name": "pgsched.run", "partition_name": "pgsched.run_stray", "live_rows": 1}
    ]


async def test_without_a_database_health_is_503_and_requests_are_problems(
    role_tokens: Tokens,
) -> None:
    settings = ApiSettings(
        database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
        pool_timeout_seconds=0.5,
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["components"]["database"] == "unhealthy"
        refused = await client.get("/v1/schedules", headers=role_tokens.auth("viewer"))
        doc = problem(refused, 503)
        assert refused.headers["retry-after"] == "5" and "unavailable" in doc["detail"]


async def test_stats(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await make_schedule(db, max_attempts=1)
    await make_schedule(db, enabled=False)
    worker = await _live_worker(db)
    outcomes = [
        ("succeeded", None, 1500.0),
        ("failed", "Timeout: after 30 s", 30000.0),
        ("failed", "Timeout: after 30 s", 30000.0),
        ("failed", "HTTP 503", 100.0),
    ]
    for i, (status, error, ms) in enumerate(outcomes):
        await schedules.trigger(db, s["id"], actor="t", now=None, idempotency_key=str(i))
        (claimed,) = await test_store.claim_runs(
            db, worker_id=worker, queues=["default"], limit=1, lease_seconds=30, actor="w", now=None
        )
        outcome = {"status": status, "error": error, "duration_ms": ms}
        if status == "succeeded":
            await test_store.succeed_run(db, Lease.of(claimed), outcome, actor="w", now=None)
        else:
            await test_store.fail_run(db, Lease.of(claimed), outcome, jitter=0, actor="w", now=None)
    await schedules.trigger(db, s["id"], actor="t", now=None, idempotency_key="waiting")

    stats = (await api.get("/stats", headers=role_tokens.auth("viewer"))).json()
    assert stats["job_counts"] == {
        "total_schedules": 2,
        "enabled_schedules": 1,
        "active_jobs": 0,
        "waiting_runs": 1,
    }
    execution = stats["execution_stats"]
    assert (execution["runs_24h"], execution["succeeded_24h"]) == (4, 1)
    assert execution["success_rate"] == 0.25
    assert execution["max_duration"] == 30.0
    assert execution["avg_duration"] == pytest.approx((1.5 + 30 + 30 + 0.1) / 4, abs=1e-3)
    assert stats["error_stats"] == {
        "dead_runs_24h": 3,
        "failed_runs_24h": 3,
        "common_errors": ["Timeout: after 30 s: 2", "HTTP 503: 1"],
    }


async def test_workers(api: Client, role_tokens: Tokens, db: Conn) -> None:
    gone = await _live_worker(db, "old")
    await db.execute(
        "UPDATE pgsched.worker SET heartbeat_at = now() - interval '5 minutes' WHERE id = %s",
        [gone],
    )
    await store.mark_gone_workers(db, after_seconds=60, actor="t", now=None)
    live = await _live_worker(db, "new")
    s = await make_schedule(db)
    await schedules.trigger(db, s["id"], actor="t", now=None)
    await test_store.claim_runs(
        db, worker_id=live, queues=["default"], limit=1, lease_seconds=30, actor="w", now=None
    )
    viewer = role_tokens.auth("viewer")
    page = (await api.get("/v1/workers", headers=viewer)).json()
    assert [(w["name"], w["state"], w["healthy"], w["running"]) for w in page["items"]] == [
        ("new", "active", True, 1),
        ("old", "gone", False, 0),
    ]
    first = (await api.get("/v1/workers?limit=1", headers=viewer)).json()
    rest = (
        await api.get(f"/v1/workers?limit=1&cursor={first['next_cursor']}", headers=viewer)
    ).json()
    assert [w["name"] for w in rest["items"]] == ["old"] and rest["next_cursor"] is None
    active = (await api.get("/v1/workers?state=active", headers=viewer)).json()
    assert [w["name"] for w in active["items"]] == ["new"]


async def test_metrics_label_routes_by_template(api: Client, role_tokens: Tokens) -> None:
    await api.get("/v1/schedules/4242", headers=role_tokens.auth("viewer"))
    text = (await api.get("/metrics")).text
    assert "pgsched_api_requests_total" in text
    assert "pgsched_api_request_duration_seconds_bucket" in text
    assert 'path="/v1/schedules/{schedule_id}"' in text
    assert "/v1/schedules/4242" not in text


async def test_an_internal_error_is_a_logged_problem_without_details(
    dsn: str, role_tokens: Tokens, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(reads, "stats", broken)
    async with AsyncTestClient(app=create_app(settings_for(dsn))) as client:
        with caplog.at_level(logging.ERROR, logger="pgsched.api"):
            response = await client.get("/stats", headers=role_tokens.auth("viewer"))
    doc = problem(response, 500)
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert doc["detail"] == "an internal error occurred; it has been logged"
    assert any("hunter2" in (r.exc_text or "") for r in caplog.records), "logged with traceback"


def test_openapi_31_with_an_operation_id_on_every_operation(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    assert schema["openapi"] == "3.1.0"
    operations = [
        (method, path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "patch", "delete", "put"}
    ]
    ids = [op.get("operationId") for _, _, op in operations]
    assert all(ids) and len(ids) == len(set(ids)), ids
    assert all(
        path.startswith("/v1/")
        for _, path, _ in operations
        if "health" not in path and "stats" not in path
    )
    for method, path, op in operations:
        documented = set(op["responses"])
        assert {"401", "403"} <= documented or path == "/health", (method, path)
        problem_doc = op["responses"].get("422", {}).get("content", {})
        assert "application/problem+json" in problem_doc, (method, path)
    assert schema["paths"]["/health"]["get"]["security"] == [{}]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_create_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db.example:5433/pgsched")
    monkeypatch.setenv("PGSCHED_HTTP_PORT", "9001")
    monkeypatch.setenv("PGSCHED_HTTP_MAX_BODY_BYTES", "1024")
    app = create_app()
    settings = app.state.settings
    assert settings.database_url == "postgresql://u@db.example:5433/pgsched"
    assert (settings.port, settings.max_body_bytes) == (9001, 1024)
    assert app.request_max_body_size == 1024
    monkeypatch.setenv("PGSCHED_HTTP_MAX_BODY_BYTES", "lots")
    with pytest.raises(SettingsError, match="PGSCHED_HTTP_MAX_BODY_BYTES"):
        create_app()


async def test_the_injected_clock_decides(dsn: str, role_tokens: Tokens) -> None:
    """ADR 0003: with a clock given, every decision uses it, not the host's or the server's."""
    # At :07 of an hour three days on: a fake instant on the hour is itself the next "0 * * * *".
    fake = FakeClock((datetime.now(UTC) + timedelta(days=3)).replace(minute=7, microsecond=0))
    async with AsyncTestClient(app=create_app(settings_for(dsn), clock=fake)) as client:
        created = await client.post(
            "/v1/schedules",
            headers=role_tokens.auth("admin"),
            json={"name": "c", "job_type": "noop", "cron": "0 * * * *"},
        )
        s = created.json()
        assert datetime.fromisoformat(s["created_at"]) == fake.now()
        top_of_next_hour = fake.now().replace(minute=0, second=0) + timedelta(hours=1)
        assert datetime.fromisoformat(s["next_due_at"]) == top_of_next_hour
        run = (
            await client.post(
                f"/v1/schedules/{s['id']}/trigger", headers=role_tokens.auth("operator")
            )
        ).json()
        assert datetime.fromisoformat(run["due_at"]) == fake.now()
        preview = (
            await client.get(
                f"/v1/schedules/{s['id']}/preview?count=1", headers=role_tokens.auth("viewer")
            )
        ).json()
        assert datetime.fromisoformat(preview["after"]) == fake.now()
