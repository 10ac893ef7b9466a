"""Description, owner and labels of a schedule over HTTP (ADR 0031): set on create and PATCH,
shown by GET, filtered in GET /v1/schedules, refused by name when malformed, carried by events
(verify stays clean); and the operator's defaults (PGSCHED_DEFAULT_*) for fields a create
leaves out."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar

from pgsched.app.api import create_app
from pgsched.app.db import replay
from pgsched.app.db.store import Conn
from tests.api.conftest import Tokens, settings_for
from tests.api.test_schedules import Client, body, create, events, problem

DEFAULTS = {"timezone": "Europe/Berlin", "max_attempts": 6, "timeout_seconds": 120.0}


@pytest.fixture
def app(dsn: str) -> Litestar:
    """The API as an operator with PGSCHED_DEFAULT_TIMEZONE, _MAX_ATTEMPTS and
    _TIMEOUT_SECONDS set runs it."""
    return create_app(settings_for(dsn, schedule_defaults=DEFAULTS))


async def _names(api: Client, tokens: Tokens, query: str) -> list[str]:
    response = await api.get(f"/v1/schedules?{query}", headers=tokens.auth("viewer"))
    assert response.status_code == 200, response.text
    return [s["name"] for s in response.json()["items"]]


async def test_metadata_is_set_shown_patched_and_in_events(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    made = await create(
        api,
        role_tokens,
        description="Nightly export for finance",
        owner="data-team",
        labels={"team": "data", "tier": "1"},
    )
    assert (made["description"], made["owner"], made["labels"]) == (
        "Nightly export for finance",
        "data-team",
        {"team": "data", "tier": "1"},
    )
    assert made["managed_by"] is None  # made over the API
    response = await api.patch(
        f"/v1/schedules/{made['id']}",
        json={"labels": {"team": "finance"}, "owner": None},
        headers=role_tokens.auth("admin"),
    )
    assert response.status_code == 200, response.text
    got = (await api.get(f"/v1/schedules/{made['id']}", headers=role_tokens.auth("viewer"))).json()
    assert (got["labels"], got["owner"], got["description"]) == (
        {"team": "finance"},
        None,
        "Nightly export for finance",
    )
    created, updated = await events(db, made["id"])
    assert created["data"]["labels"] == {"team": "data", "tier": "1"}
    assert updated["data"]["labels"] == {"team": "finance"} and updated["data"]["owner"] is None
    assert await replay.verify(db) == []


async def test_list_filters_by_label_owner_and_manager(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    await create(api, role_tokens, name="a", labels={"team": "data", "tier": "1"}, owner="ann")
    await create(api, role_tokens, name="b", labels={"team": "data"}, owner="bob")
    await create(api, role_tokens, name="c", labels={"team": "web", "tier": "1"})
    await create(api, role_tokens, name="d")
    assert await _names(api, role_tokens, "label=team:data") == ["a", "b"]
    assert await _names(api, role_tokens, "label=team:data&label=tier:1") == ["a"]
    assert await _names(api, role_tokens, "label=tier") == ["a", "c"]  # any value
    assert await _names(api, role_tokens, "label=team:") == []  # the empty value
    assert await _names(api, role_tokens, "owner=bob") == ["b"]
    assert await _names(api, role_tokens, "managed_by=team-a") == []
    await db.execute("UPDATE pgsched.schedule SET managed_by = 'team-a' WHERE name = 'd'")
    assert await _names(api, role_tokens, "managed_by=team-a") == ["d"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("label=te%3Aam:x", None), ("label=bad%20key", "label"), ("label=-x", "label")],
)
async def test_a_malformed_label_filter_is_a_problem_naming_it(
    api: Client, role_tokens: Tokens, query: str, field: str | None
) -> None:
    response = await api.get(f"/v1/schedules?{query}", headers=role_tokens.auth("viewer"))
    if field is None:  # split at the first colon: key `te`, value `am:x`
        assert response.status_code == 200, response.text
        return
    problem(response, 422, field)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"labels": {"team:x": "data"}}, "labels.team:x"),
        ({"labels": {"team": 5}}, "labels[...]"),  # msgspec names the mapping
        ({"labels": {"k": "v" * 201}}, "labels.k"),
        ({"labels": {f"k{i}": "v" for i in range(33)}}, "labels"),
        ({"owner": ""}, "owner"),
        ({"description": "d" * 2001}, "description"),
        ({"managed_by": "me"}, "managed_by"),  # the apply manager is not the API's to set
    ],
)
async def test_malformed_metadata_is_refused_by_field(
    api: Client, role_tokens: Tokens, over: dict[str, Any], field: str
) -> None:
    response = await api.post("/v1/schedules", json=body(**over), headers=role_tokens.auth("admin"))
    problem(response, 422, field)


async def test_the_operators_defaults_fill_what_a_create_leaves_out(
    api: Client, role_tokens: Tokens
) -> None:
    left_out = await create(api, role_tokens, name="defaulted")
    assert (left_out["timezone"], left_out["max_attempts"], left_out["timeout_seconds"]) == (
        "Europe/Berlin",
        6,
        120.0,
    )
    assert left_out["retry_backoff"] == {
        "delay_seconds": 10.0,
        "factor": 2.0,
        "max_delay_seconds": 3600.0,
    }  # no operator default: the built-in one
    given = await create(
        api,
        role_tokens,
        name="given",
        timezone="UTC",
        max_attempts=2,
        retry_backoff={"factor": 3},
    )
    assert (given["timezone"], given["max_attempts"], given["retry_backoff"]["factor"]) == (
        "UTC",
        2,
        3.0,
    )
    assert given["timeout_seconds"] == 120.0
