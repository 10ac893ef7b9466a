"""The console's access rules over HTTP (no browser): no page or action without a session, CSRF
on every form, the session cookie's flags and contents, a revoked token's session, and roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from pgsched.app.api import create_app
from pgsched.app.api.auth import RANK
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.services import tokens
from pgsched.app.ui import session
from tests.api.conftest import Tokens, settings_for
from tests.api.test_runs import _dead_run
from tests.factories import make_schedule
from tests.ui.conftest import csrf_of, sign_in

Client = AsyncTestClient[Litestar]
# Routes under /ui that answer without a session: the sign-in form and the static files.
OPEN = {("GET", "/ui/login"), ("POST", "/ui/login"), ("GET", "/ui/static/{file_path:path}")}


def _console_routes(app: Litestar) -> list[tuple[str, str, dict[str, object]]]:
    found = []
    for route in app.routes:
        if not route.path.startswith("/ui"):
            continue
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method not in ("HEAD", "OPTIONS"):
                    found.append((method, route.path, dict(handler.opt)))
    return found


def _concrete(path: str) -> str:
    return (
        path.replace("{schedule_id:str}", "1")
        .replace("{run_id:str}", "1")
        .replace("{action:str}", "pause")
        .replace("{file_path:path}", "console.css")
    )


async def test_no_console_route_answers_without_a_session(api: Client) -> None:
    routes = _console_routes(api.app)
    assert len(routes) >= 15
    wrong = []
    for method, path, opt in routes:
        if (method, path) in OPEN:
            continue
        assert opt.get("console") in ("viewer", "operator", "admin"), (method, path, opt)
        response = await api.request(method, _concrete(path), follow_redirects=False)
        if response.status_code != 303 or response.headers["location"] != "/ui/login":
            wrong.append(f"{method} {path}: {response.status_code}")
    assert not wrong, wrong
    # ... while the open ones do answer, and a bearer token opens nothing under /ui.
    login = await api.get("/ui/login")
    assert login.status_code == 200
    assert "default-src 'self'" in login.headers["content-security-policy"]
    assert login.headers["x-frame-options"] == "DENY"
    assert "pgsched token create --name NAME --role" in login.text  # the command as it is
    assert (await api.get("/ui/static/console.js")).status_code == 200


async def test_a_bearer_token_is_not_a_console_session(api: Client, role_tokens: Tokens) -> None:
    response = await api.get("/ui/runs", headers=role_tokens.auth("admin"), follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"


async def test_a_console_route_without_a_role_is_refused_to_everyone(
    dsn: str, role_tokens: Tokens
) -> None:
    """Default deny, as the API's guard: a page that forgets `console` in its opt is 403."""

    @get("/ui/forgotten", opt={"role": "public"}, guards=[session.guard])
    async def forgotten() -> str:
        return "should not be served"

    app = create_app(settings_for(dsn))
    app.register(forgotten)
    async with AsyncTestClient(app=app) as client:
        await sign_in(client, role_tokens, "admin")
        assert (await client.get("/ui/forgotten")).status_code == 403


async def test_the_session_cookie_flags_and_contents(api: Client, role_tokens: Tokens) -> None:
    form = await api.get("/ui/login")
    assert "HttpOnly" in form.headers["set-cookie"]
    nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
    token = role_tokens.values["operator"]
    response = await api.post(
        "/ui/login", data={"token": token, "nonce": nonce}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    (issued,) = [c for c in cookies if c.startswith(f"{session.COOKIE}=")]
    attributes = [a.strip().lower() for a in issued.split(";")]
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/ui" in attributes
    assert "secure" not in attributes  # served over plain http here
    value = issued.split(";")[0].split("=", 1)[1]
    assert token not in issued and token[4:] not in value and token[:12] not in value
    assert value.startswith("v2.")


async def test_the_cookie_is_secure_over_https(app: Litestar, role_tokens: Tokens) -> None:
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as client:
        form = await client.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        response = await client.post(
            "/ui/login",
            data={"token": role_tokens.values["viewer"], "nonce": nonce},
            follow_redirects=False,
        )
        cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
        (issued,) = [c for c in cookies if c.startswith(f"{session.COOKIE}=")]
        assert "secure" in [a.strip().lower() for a in issued.split(";")]


async def test_a_wrong_token_or_a_forged_form_signs_nobody_in(
    api: Client, role_tokens: Tokens
) -> None:
    form = await api.get("/ui/login")
    nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
    wrong = await api.post("/ui/login", data={"token": "pgs_nope", "nonce": nonce})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert session.COOKIE not in api.cookies
    # Without the sign-in form's nonce (a cross-site form post): 403, whatever the token.
    forged = await api.post(
        "/ui/login", data={"token": role_tokens.values["admin"], "nonce": "guessed"}
    )
    assert forged.status_code == 403
    assert session.COOKIE not in api.cookies


async def test_a_tampered_cookie_is_no_session(api: Client, role_tokens: Tokens) -> None:
    await sign_in(api, role_tokens, "viewer")
    value = api.cookies[session.COOKIE]
    _, token_id, issued, sid, mac = value.split(".")
    admin_id = int(token_id) + 2  # role_tokens creates viewer, operator, admin in order
    for forged in (
        f"v2.{admin_id}.{issued}.{sid}.{mac}",  # another token's id under this MAC
        f"v2.{token_id}.{int(issued) + 1}.{sid}.{mac}",  # a later issue time (a longer session)
        f"v2.{token_id}.{issued}.{sid[:-2]}AA.{mac}",  # another session id
        f"v2.{token_id}.{issued}.{sid}.{mac[:-2]}AA",
        f"v1.{token_id}.{issued}.{mac}",  # the old format
        "v1.%C2%B2.1.x",  # a digit str.isdigit() takes and int() refuses: no 500
        "v2.%C2%B2.1.x.y",
        "v1.1.2.3",
        "garbage",
    ):
        api.cookies.set(session.COOKIE, forged, path="/ui")
        response = await api.get("/ui/", follow_redirects=False)
        assert response.status_code == 303, forged


async def test_forms_without_the_csrf_token_are_refused(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    csrf = await sign_in(api, role_tokens, "admin")
    s = await make_schedule(db)
    for data in ({}, {"csrf": "x" * len(csrf)}, {"csrf": ""}):
        response = await api.post(f"/ui/schedules/{s['id']}/pause", data=data)
        assert response.status_code == 403, data
        assert "CSRF" in response.text
    assert (await store.schedules.get_schedule(db, s["id"]))["enabled"]
    # Another session's token is not this one's either: sign in again, send the old one.
    fresh = await sign_in(api, role_tokens, "operator")
    assert fresh != csrf
    refused = await api.post(f"/ui/schedules/{s['id']}/pause", data={"csrf": csrf})
    assert refused.status_code == 403
    csrf = fresh
    done = await api.post(
        f"/ui/schedules/{s['id']}/pause",
        data={"csrf": csrf, "version": str(s["version"])},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert not (await store.schedules.get_schedule(db, s["id"]))["enabled"]


async def test_sign_out_ends_the_session(api: Client, role_tokens: Tokens) -> None:
    csrf = await sign_in(api, role_tokens, "viewer")
    assert (await api.post("/ui/logout", data={}, follow_redirects=False)).status_code == 403
    out = await api.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert session.COOKIE not in api.cookies
    assert (await api.get("/ui/", follow_redirects=False)).status_code == 303


async def test_a_revoked_tokens_session_ends(api: Client, role_tokens: Tokens, db: Conn) -> None:
    await sign_in(api, role_tokens, "operator")
    assert (await api.get("/ui/runs")).status_code == 200
    await tokens.revoke_token(db, "operator-token", actor="test", now=None)
    response = await api.get("/ui/runs", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"


async def test_a_viewer_sees_no_action_and_may_not_post_one(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    dead = await _dead_run(db)
    csrf = await sign_in(api, role_tokens, "viewer")
    for path in ("/ui/dead", f"/ui/runs/{dead['id']}"):
        html = (await api.get(path)).text
        assert f"#{dead['id']}" in html
        assert "/retry" not in html and "Retry" not in html and "/cancel" not in html
    page = await api.get(f"/ui/schedules/{dead['schedule_id']}")
    assert "Pause" not in page.text and "Trigger now" not in page.text and "Delete" not in page.text
    assert csrf_of(page.text) == csrf
    refused = await api.post(f"/ui/runs/{dead['id']}/retry", data={"csrf": csrf})
    assert refused.status_code == 403
    assert (await api.get("/ui/runs/bulk?state=dead&action=retry")).status_code == 403
    assert (await api.get("/ui/schedules/new")).status_code == 403
    run = await store.reads.run_detail(db, dead["id"])
    assert run is not None and run["state"] == "dead"


async def test_a_signed_out_cookie_replayed_is_no_session(api: Client, role_tokens: Tokens) -> None:
    """Sign-out ends the session on the server: a copy of the cookie taken before is refused."""
    csrf = await sign_in(api, role_tokens, "operator")
    copied = api.cookies[session.COOKIE]
    out = await api.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    api.cookies.set(session.COOKIE, copied, path="/ui")
    replayed = await api.get("/ui/runs", follow_redirects=False)
    assert replayed.status_code == 303 and replayed.headers["location"] == "/ui/login"
    # A new sign-in with the same token is a new session, which works.
    api.cookies.clear()
    await sign_in(api, role_tokens, "operator")
    assert (await api.get("/ui/runs")).status_code == 200


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _secured(response: object) -> list[str]:
    headers = response.headers  # type: ignore[attr-defined]
    wrong = [k for k, v in SECURITY_HEADERS.items() if headers.get(k) != v]
    if "frame-ancestors 'none'" not in headers.get("content-security-policy", ""):
        wrong.append("content-security-policy")
    return wrong


async def test_security_headers_on_errors_and_redirects(api: Client, role_tokens: Tokens) -> None:
    """Every answer under /ui carries them: the redirect to sign-in, a 403, a 404, a 422."""
    to_login = await api.get("/ui/runs", follow_redirects=False)
    assert to_login.status_code == 303 and not _secured(to_login)
    csrf = await sign_in(api, role_tokens, "viewer")
    forbidden = await api.post("/ui/runs/1/retry", data={"csrf": csrf})
    missing = await api.get("/ui/runs/987654321")
    bad = await api.get("/ui/runs?state=nope")
    no_csrf = await api.post("/ui/logout", data={})
    for response, status in ((forbidden, 403), (missing, 404), (bad, 422), (no_csrf, 403)):
        assert response.status_code == status
        assert not _secured(response), (status, _secured(response))
    assert not _secured(await api.get("/ui/"))


async def test_a_malformed_path_id_without_a_session_learns_nothing(
    api: Client, role_tokens: Tokens
) -> None:
    """The session is checked before the id: no 422 to a caller who is not signed in."""
    for path in ("/ui/runs/abc", "/ui/runs/1.0", "/ui/schedules/%C2%B2"):
        response = await api.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login", path
    await sign_in(api, role_tokens, "viewer")
    signed_in = await api.get("/ui/runs/1.0")
    assert signed_in.status_code == 422 and "run_id" in signed_in.text


async def test_the_console_records_its_tokens_use(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    """A session is a use of its token: last_used_at moves, at most once a minute, as the API's."""
    await sign_in(api, role_tokens, "viewer")
    await db.execute(
        "UPDATE pgsched.api_token SET last_used_at = now() - interval '2 hours'"
        " WHERE name = 'viewer-token'"
    )
    assert (await api.get("/ui/runs")).status_code == 200
    listed = {t["name"]: t for t in await tokens.list_tokens(db, now=None)}
    used = listed["viewer-token"]["last_used_at"]
    assert used is not None and (datetime.now(UTC) - used) < timedelta(minutes=5)


# -- every form, every role ------------------------------------------------------------------


def _declared_roles(app: Litestar) -> dict[tuple[str, str], str]:
    return {
        (method, path): str(opt["console"])
        for method, path, opt in _console_routes(app)
        if (method, path) not in OPEN
    }


async def test_every_console_form_refuses_a_missing_or_wrong_csrf_token(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    """Every POST under /ui but sign-in (which has its own nonce) needs the session's token,
    and changes nothing without it."""
    s = await make_schedule(db)
    dead = await _dead_run(db)
    await sign_in(api, role_tokens, "admin")
    posts = [p for (m, p) in _declared_roles(api.app) if m == "POST"]
    assert len(posts) >= 7, posts
    wrong = []
    for path in posts:
        concrete = (
            path.replace("{schedule_id:str}", str(s["id"]))
            .replace("{run_id:str}", str(dead["id"]))
            .replace("{action:str}", "pause")
        )
        for data in ({}, {"csrf": "forged"}):
            response = await api.post(concrete, data={**data, "version": "1"})
            if response.status_code != 403 or "CSRF" not in response.text:
                wrong.append(f"{path} {data}: {response.status_code}")
    assert not wrong, wrong
    assert (await store.schedules.get_schedule(db, s["id"]))["enabled"]
    run = await store.reads.run_detail(db, dead["id"])
    assert run is not None and run["state"] == "dead"
    assert (await api.get("/ui/")).status_code == 200  # not signed out by the refused logout


async def test_every_console_route_refuses_the_roles_below_its_own(
    api: Client, role_tokens: Tokens
) -> None:
    """routes x roles: a signed-in role below the route's declared one gets 403, whatever
    the request holds (even the right CSRF token)."""
    declared = _declared_roles(api.app)
    assert {"viewer", "operator", "admin"} <= set(declared.values())
    wrong = []
    for role in ("viewer", "operator"):
        api.cookies.clear()
        csrf = await sign_in(api, role_tokens, role)
        for (method, path), required in sorted(declared.items()):
            if RANK[role] >= RANK[required]:
                continue
            data = {"csrf": csrf} if method == "POST" else None
            response = await api.request(method, _concrete(path), data=data)
            if response.status_code != 403:
                wrong.append(f"{role} {method} {path}: {response.status_code}")
    assert not wrong, wrong
