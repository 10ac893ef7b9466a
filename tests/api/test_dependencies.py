"""Schedule dependencies over HTTP (ADR 0033): `depends_on` by name or id on create and update,
shown on GET; a cycle, an unknown upstream or a job definition refused as problem+json naming
`depends_on`; an upstream's delete refused while others depend on it; blocked runs listed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgsched.app import ticker
from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from tests.api.conftest import Tokens
from tests.api.test_schedules import Client, create, problem


async def test_create_and_get_show_depends_on_as_ids(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    a = await create(api, role_tokens, name="a")
    assert (a["depends_on"], a["dependency_timeout_seconds"]) == ([], 3600)
    b = await create(api, role_tokens, name="b", depends_on=["a"], dependency_timeout_seconds=90)
    c = await create(api, role_tokens, name="c", depends_on=[b["id"], "a", "a"])
    assert (b["depends_on"], b["dependency_timeout_seconds"]) == ([a["id"]], 90)
    assert c["depends_on"] == [b["id"], a["id"]], "the given order, each upstream once"
    got = await api.get(f"/v1/schedules/{c['id']}", headers=role_tokens.auth("viewer"))
    assert got.status_code == 200 and got.json()["depends_on"] == [b["id"], a["id"]]
    assert await replay.verify(db) == []


async def test_a_cycle_is_refused_naming_depends_on_and_the_cycle(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    a = await create(api, role_tokens, name="a")
    await create(api, role_tokens, name="b", depends_on=["a"])
    await create(api, role_tokens, name="c", depends_on=["b"])
    response = await api.patch(
        f"/v1/schedules/{a['id']}", json={"depends_on": ["c"]}, headers=role_tokens.auth("admin")
    )
    doc = problem(response, 422, "depends_on")
    assert doc["detail"] == "would make a cycle: a -> c -> b -> a"
    unchanged = await api.get(f"/v1/schedules/{a['id']}", headers=role_tokens.auth("viewer"))
    assert unchanged.json()["depends_on"] == [] and unchanged.json()["version"] == a["version"]


async def test_unknown_upstreams_and_bad_values_are_refused_naming_the_field(
    api: Client, role_tokens: Tokens
) -> None:
    auth = role_tokens.auth("admin")
    base = {"job_type": "noop", "cron": "0 * * * *"}
    unknown = await api.post(
        "/v1/schedules", json={**base, "name": "x", "depends_on": ["nope"]}, headers=auth
    )
    assert problem(unknown, 422, "depends_on")["detail"] == "'nope' is no live schedule"
    await api.post("/v1/schedules", json={"name": "j", "job_type": "noop"}, headers=auth)
    job = await api.post(
        "/v1/schedules", json={**base, "name": "x", "depends_on": ["j"]}, headers=auth
    )
    assert "job definition" in problem(job, 422, "depends_on")["detail"]
    zero = await api.post(
        "/v1/schedules",
        json={**base, "name": "x", "dependency_timeout_seconds": 0},
        headers=auth,
    )
    problem(zero, 422, "dependency_timeout_seconds")
    bad = await api.post(
        "/v1/schedules", json={**base, "name": "x", "depends_on": [1.5]}, headers=auth
    )
    assert bad.status_code == 422 and "depends_on" in bad.text


async def test_deleting_an_upstream_is_a_conflict_naming_its_dependents(
    api: Client, role_tokens: Tokens
) -> None:
    a = await create(api, role_tokens, name="a")
    await create(api, role_tokens, name="b", depends_on=["a"])
    response = await api.delete(f"/v1/schedules/{a['id']}", headers=role_tokens.auth("admin"))
    doc = problem(response, 409)
    assert doc["type"].endswith(":has-dependents") and "'b'" in doc["detail"]


async def test_a_blocked_run_is_listed_with_what_it_waits_for(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    a = await create(api, role_tokens, name="a", cron="*/5 * * * *")
    b = await create(api, role_tokens, name="b", depends_on=["a"], cron="*/5 * * * *")
    due = datetime.fromisoformat(b["next_due_at"])
    await ticker.tick(db, now=due)
    listed = await api.get(
        "/v1/runs", params={"status": "blocked"}, headers=role_tokens.auth("viewer")
    )
    assert listed.status_code == 200, listed.text
    (run,) = listed.json()["items"]
    assert run["schedule_id"] == b["id"] and run["state"] == "blocked"
    assert run["waits_for"] == [{"schedule_id": a["id"], "due_at": due.astimezone(UTC).isoformat()}]
    assert datetime.fromisoformat(run["wait_until"]) == due + timedelta(hours=1)
