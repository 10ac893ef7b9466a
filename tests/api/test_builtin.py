"""The built-in schedule `pgsched.maintenance` over HTTP: it keeps partitions ahead, so the API
refuses to delete it, give it another name or job, or anything that would stop it quietly (409,
a problem naming the field; ADR 0021), and allows what an operator may need (pause, resume,
another minute of the hour). The ticker puts back what must hold when it starts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app import maintenance
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from tests.api.conftest import Tokens

Client = AsyncTestClient[Litestar]


@pytest.fixture
async def builtin(db: Conn) -> dict[str, Any]:
    return await maintenance.ensure_builtin_schedule(db, maintenance.Retention(), now=None)


def conflict(response: Any, field: str | None) -> dict[str, Any]:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["type"] == "urn:pgsched:problem:builtin-schedule"
    assert "'pgsched.maintenance'" in doc["detail"]
    assert [e["field"] for e in doc.get("errors", [])] == ([field] if field else [])
    return doc


async def test_the_builtin_schedule_cannot_be_deleted(
    api: Client, role_tokens: Tokens, db: Conn, builtin: dict[str, Any]
) -> None:
    response = await api.delete(f"/v1/schedules/{builtin['id']}", headers=role_tokens.auth("admin"))
    doc = conflict(response, None)
    assert "cannot be deleted" in doc["detail"]
    cur = await db.execute(
        "SELECT deleted_at, version FROM pgsched.schedule WHERE id = %s", [builtin["id"]]
    )
    assert await cur.fetchone() == {"deleted_at": None, "version": builtin["version"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "mine-now"}, "name"),
        ({"job_type": "noop", "payload": {}}, "job_type"),
        ({"payload": {"target": "os:system", "kwargs": {}}}, "payload"),
        ({"cron": None, "interval_seconds": 60}, "kind"),  # a switch of kind says so (ADR 0029)
        # What would stop it quietly: a queue no worker serves, a start far off, an end, a
        # cron that never fires (or not hourly), a timeout it cannot finish in.
        ({"queue": "nowhere"}, "queue"),
        ({"starts_at": "2099-01-01T00:00:00Z"}, "starts_at"),
        ({"ends_at": "2030-01-01T00:00:00Z"}, "ends_at"),
        ({"cron": "0 0 29 2 1"}, "cron"),
        ({"cron": "7 3 * * *"}, "cron"),
        ({"timeout_seconds": 1}, "timeout_seconds"),
        ({"timezone": "Asia/Kathmandu"}, "timezone"),
    ],
)
async def test_the_builtin_schedule_keeps_its_name_and_job(
    api: Client,
    role_tokens: Tokens,
    *,
    db: Conn,
    builtin: dict[str, Any],
    change: dict[str, Any],
    field: str,
) -> None:
    response = await api.patch(
        f"/v1/schedules/{builtin['id']}", json=change, headers=role_tokens.auth("admin")
    )
    conflict(response, field)
    cur = await db.execute(
        "SELECT version, next_due_at FROM pgsched.schedule WHERE id = %s", [builtin["id"]]
    )
    assert await cur.fetchone() == {
        "version": builtin["version"],
        "next_due_at": builtin["next_due_at"],
    }


async def test_the_ticker_puts_back_what_would_stop_it(db: Conn, builtin: dict[str, Any]) -> None:
    """Changed anyway (by the owner, or before this release), the built-in schedule gets its
    queue, start and cron back when the ticker starts (install_builtin_maintenance_v1), due
    within the hour again; a pause stays, and the log still folds into the table."""
    changes = {
        "queue": "nowhere",
        "starts_at": datetime(2099, 1, 1, tzinfo=UTC),
        "cron": "0 0 29 2 1",
        "next_due_at": datetime(2099, 1, 1, tzinfo=UTC),
        "enabled": False,
        "paused_at": datetime.now(UTC),
    }
    broken = await store.update_schedule(
        db, builtin["id"], changes, event_type="schedule.updated", actor="t", now=None
    )
    assert broken is not None
    again = await maintenance.ensure_builtin_schedule(db, maintenance.Retention(), now=None)
    assert again["id"] == builtin["id"]
    assert (again["queue"], again["starts_at"], again["cron"]) == ("default", None, "7 * * * *")
    cur = await db.execute("SELECT now() + interval '1 hour' AS hour")
    hour = (await cur.fetchone() or {})["hour"]
    assert again["next_due_at"] <= hour
    assert again["enabled"] is False  # a pause is the operator's
    assert await replay.verify(db) == []


async def test_its_minute_survives_a_restart(db: Conn, builtin: dict[str, Any]) -> None:
    moved = await store.update_schedule(
        db,
        builtin["id"],
        {"cron": "37 * * * *"},
        event_type="schedule.updated",
        actor="t",
        now=None,
    )
    assert moved is not None
    again = await maintenance.ensure_builtin_schedule(db, maintenance.Retention(), now=None)
    assert (again["cron"], again["version"]) == ("37 * * * *", moved["version"])


async def test_an_operator_may_still_pause_it_and_move_its_minute(
    api: Client, role_tokens: Tokens, db: Conn, builtin: dict[str, Any]
) -> None:
    admin = role_tokens.auth("admin")
    paused = await api.post(f"/v1/schedules/{builtin['id']}/pause", headers=admin)
    assert paused.status_code == 200, paused.text
    resumed = await api.post(f"/v1/schedules/{builtin['id']}/resume", headers=admin)
    assert resumed.status_code == 200, resumed.text
    moved = await api.patch(
        f"/v1/schedules/{builtin['id']}", json={"cron": "37 * * * *"}, headers=admin
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["cron"] == "37 * * * *"
    assert await replay.verify(db) == []


async def test_other_schedules_are_deleted_as_before(
    api: Client, role_tokens: Tokens, builtin: dict[str, Any]
) -> None:
    """Only the live built-in one is protected: a schedule of the operator's is deleted."""
    admin = role_tokens.auth("admin")
    made = await api.post(
        "/v1/schedules",
        json={"name": "pgsched.maintenance-copy", "job_type": "noop", "cron": "0 * * * *"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    response = await api.delete(f"/v1/schedules/{made.json()['id']}", headers=admin)
    assert response.status_code == 204, response.text
