"""Authentication and authorisation: the token format, and every route x every role, over HTTP.

ROUTES is the API's inventory with the least role each route needs. The inventory test compares
it with the application's own route table, so a route added without a role declaration (or
without an entry here) fails the suite; the matrix test then sends a request to every route as
nobody, a viewer, an operator and an admin and checks 401/403/allowed.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from pgsched.app.api import create_app
from pgsched.app.api.auth import RANK, authorize, is_generated_options
from pgsched.app.api.config import ApiSettings
from pgsched.app.db.store import Conn
from pgsched.app.services import tokens
from tests.api.conftest import Tokens, settings_for

# (method, route template) -> least role. "public" routes need no token.
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/v1/schedules"): "admin",
    ("GET", "/v1/schedules"): "viewer",
    ("GET", "/v1/schedules/{schedule_id:str}"): "viewer",
    ("PATCH", "/v1/schedules/{schedule_id:str}"): "admin",
    ("DELETE", "/v1/schedules/{schedule_id:str}"): "admin",
    ("POST", "/v1/schedules/{schedule_id:str}/pause"): "operator",
    ("POST", "/v1/schedules/{schedule_id:str}/resume"): "operator",
    ("POST", "/v1/schedules/{schedule_id:str}/trigger"): "operator",
    ("POST", "/v1/schedules/{schedule_id:str}/backfill"): "operator",
    ("GET", "/v1/schedules/{schedule_id:str}/preview"): "viewer",
    ("POST", "/v1/runs"): "operator",
    ("GET", "/v1/runs"): "viewer",
    ("GET", "/v1/runs/{run_id:str}"): "viewer",
    ("GET", "/v1/runs/{run_id:str}/events"): "viewer",
    ("POST", "/v1/runs/{run_id:str}/retry"): "operator",
    ("POST", "/v1/runs/{run_id:str}/cancel"): "operator",
    ("GET", "/v1/events"): "viewer",
    ("GET", "/v1/events/stream"): "viewer",
    ("GET", "/v1/workers"): "viewer",
    ("GET", "/v1/workers/{worker_id:str}"): "viewer",
    ("GET", "/v1/tokens"): "admin",
    ("GET", "/health"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/stats"): "viewer",
    ("GET", "/schema"): "viewer",
    ("GET", "/schema/openapi.json"): "viewer",
    ("GET", "/schema/{path:str}"): "viewer",
}

PRINCIPALS = [None, "viewer", "operator", "admin"]


def _declared(app: Litestar) -> dict[tuple[str, str], str | None]:
    """Every (method, path) the app routes, with the role its handler declares; Litestar's own
    OPTIONS handlers (they only answer `Allow`) are left out. HEAD rides on GET."""
    found: dict[tuple[str, str], str | None] = {}
    for route in app.routes:
        if route.path == "/ui" or route.path.startswith("/ui/"):
            continue  # the console's: its own session guard (tests/ui/test_console_security.py)
        for handler in getattr(route, "route_handlers", []):
            if is_generated_options(handler):
                continue
            for method in handler.http_methods:
                if method == "HEAD":
                    continue
                found[(method, route.path)] = handler.opt.get("role")
    return found


def test_every_route_declares_a_role_and_is_in_the_inventory() -> None:
    # Built, never started: no database needed to read the route table.
    app = create_app(ApiSettings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    declared = _declared(app)
    undeclared = sorted(k for k, role in declared.items() if role not in {"public", *RANK})
    assert not undeclared, f"routes without a role requirement: {undeclared}"
    assert declared == ROUTES, "the route inventory changed: update ROUTES (and the ADR)"


def _concrete(path: str) -> str:
    """A request path for a route template: ids that do not exist, a schema file name."""
    return (
        path.replace("{schedule_id:str}", "987654")
        .replace("{run_id:str}", "987654")
        .replace("{worker_id:str}", "987654")
        .replace("{path:str}", "nothing-here")
    )


def _allowed(principal: str | None, required: str) -> bool:
    if required == "public":
        return True
    return principal is not None and RANK[principal] >= RANK[required]


async def test_every_route_by_every_role(
    api: AsyncTestClient[Litestar], role_tokens: Tokens
) -> None:
    """routes x {nobody, viewer, operator, admin}: 401 / 403 / allowed, as ROUTES says."""
    wrong: list[str] = []
    for (method, path), required in sorted(ROUTES.items()):
        # The SSE tail is endless when allowed; a cursor it cannot decode ends it with a 422
        # after the guard has let the request through, which is all this test needs to see.
        query = {"after": "not-a-cursor"} if path.endswith("/stream") else None
        for principal in PRINCIPALS:
            headers = role_tokens.auth(principal) if principal else {}
            response = await api.request(method, _concrete(path), headers=headers, params=query)
            status = response.status_code
            if _allowed(principal, required):
                ok = status not in (401, 403)
            elif principal is None:
                ok = (
                    status == 401
                    and response.headers["www-authenticate"].startswith("Bearer")
                    and response.headers["content-type"].startswith("application/problem+json")
                )
            else:
                ok = status == 403 and response.json()["type"] == "urn:pgsched:problem:forbidden"
            if not ok:
                wrong.append(f"{principal or 'nobody'} {method} {path}: {status}")
    assert not wrong, wrong


async def test_a_route_without_a_role_is_denied_to_everyone(role_tokens: Tokens, dsn: str) -> None:
    """Default deny: forgetting the declaration fails closed, even for an admin."""

    @get("/forgotten", opt={})
    async def forgotten() -> str:
        return "should not be served"

    app = create_app(settings_for(dsn))
    app.register(forgotten)
    assert authorize in app.guards
    async with AsyncTestClient(app=app) as client:
        for principal in PRINCIPALS:
            headers = role_tokens.auth(principal) if principal else {}
            response = await client.get("/forgotten", headers=headers)
            assert response.status_code == 403, principal
    assert ("GET", "/forgotten") not in ROUTES  # so the inventory test would also fail


async def test_litestar_options_answers_allow_without_a_token(api: AsyncTestClient[Any]) -> None:
    response = await api.options("/v1/runs")
    assert response.status_code == 204
    assert "GET" in response.headers["allow"]


# -- the token format and its lifecycle ----------------------------------------------------


def test_token_format_prefix_length_checksum() -> None:
    token = tokens.generate()
    assert token.startswith("pgs_") and len(token) == tokens.TOKEN_LENGTH == 53
    assert tokens.well_formed(token)
    assert token != tokens.generate()
    # One changed character breaks the checksum (CRC32 catches every single-symbol error).
    for i in range(4, len(token)):
        swapped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert not tokens.well_formed(swapped), i
    assert not tokens.well_formed(token[:-1])
    assert not tokens.well_formed("ghp_" + token[4:])
    assert tokens.digest(token) == hashlib.sha256(token.encode()).digest()
    assert tokens.display_prefix(token) == token[:12]


class _NoDatabase:
    async def execute(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a malformed token must be refused without a database lookup")


async def test_a_mistyped_token_is_refused_without_a_lookup() -> None:
    token = tokens.generate()
    typo = token[:-1] + ("x" if token[-1] != "x" else "y")
    conn: Any = _NoDatabase()
    assert await tokens.authenticate(conn, typo, now=None) is None
    assert await tokens.authenticate(conn, "Bearer", now=None) is None


async def test_only_the_hash_is_stored_and_events_never_hold_the_token(db: Conn) -> None:
    row, token = await tokens.create_token(
        db, name="ci", role="operator", actor="cli", now=None, meta={"host": "ci-1"}
    )
    cur = await db.execute("SELECT * FROM pgsched.api_token WHERE id = %s", [row["id"]])
    stored = await cur.fetchone()
    assert stored is not None and bytes(stored["token_sha256"]) == tokens.digest(token)
    assert stored["prefix"] == token[:12] and token not in str(stored)
    await tokens.revoke_token(db, "ci", actor="cli", now=None)
    cur = await db.execute("SELECT type, stream, actor, data, meta::text FROM pgsched.event")
    events = await cur.fetchall()
    assert [(e["type"], e["stream"], e["actor"]) for e in events] == [
        ("token.created", "system", "cli"),
        ("token.revoked", "system", "cli"),
    ]
    text = str(events)
    assert token not in text and token[12:] not in text
    assert tokens.digest(token).hex() not in text
    assert events[0]["data"] == {}


async def test_duplicate_token_names_are_refused(db: Conn) -> None:
    await tokens.create_token(db, name="same", role="viewer", actor="t", now=None)
    with pytest.raises(tokens.TokenNameTaken):
        await tokens.create_token(db, name="same", role="admin", actor="t", now=None)


async def test_bad_credentials_are_401(api: AsyncTestClient[Any]) -> None:
    for header in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer pgs_not-a-token",
        "bearer " + tokens.generate(),  # well-formed, but nobody has it
    ]:
        response = await api.get("/v1/schedules", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_revoked_and_expired_tokens_stop_working(api: AsyncTestClient[Any], db: Conn) -> None:
    _, revoked = await tokens.create_token(db, name="r", role="admin", actor="t", now=None)
    past = datetime.now(UTC) - timedelta(seconds=1)
    _, expired = await tokens.create_token(
        db, name="e", role="admin", actor="t", now=None, expires_at=past
    )
    ok = await api.get("/v1/schedules", headers={"Authorization": f"Bearer {revoked}"})
    assert ok.status_code == 200
    await tokens.revoke_token(db, "r", actor="t", now=None)
    for token in (revoked, expired):
        response = await api.get("/v1/schedules", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_use_is_recorded_without_an_event(
    api: AsyncTestClient[Any], db: Conn, role_tokens: Tokens
) -> None:
    await api.get("/v1/schedules", headers=role_tokens.auth("viewer"))
    cur = await db.execute("SELECT last_used_at FROM pgsched.api_token WHERE name = 'viewer-token'")
    row = await cur.fetchone()
    assert row is not None and row["last_used_at"] is not None
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.event WHERE type LIKE 'token.%%used'")
    assert await cur.fetchone() == {"n": 0}


async def test_admin_lists_tokens_without_secrets(
    api: AsyncTestClient[Any], role_tokens: Tokens
) -> None:
    response = await api.get("/v1/tokens", headers=role_tokens.auth("admin"))
    assert response.status_code == 200
    listed = response.json()
    assert {t["name"] for t in listed} == {"viewer-token", "operator-token", "admin-token"}
    assert all(set(t) >= {"prefix", "role", "active"} for t in listed)
    body = response.text
    for token in role_tokens.values.values():
        assert token not in body
