"""The console's access rules over HTTP (no browser): no page or action without a session, CSRF
on every form, the session cookie's flags and contents, a revoked token's session, and roles."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from pgsched.app.api import create_app
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
    assert value.startswith("v1.")


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
    _, token_id, issued, mac = value.split(".")
    admin_id = int(token_id) + 2  # role_tokens creates viewer, operator, admin in order
    for forged in (
        f"v1.{admin_id}.{issued}.{mac}",  # another token's id under this MAC
        f"v1.{token_id}.{int(issued) + 1}.{mac}",  # a later issue time (a longer session)
        f"v1.{token_id}.{issued}.{mac[:-2]}AA",
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
        f"/ui/schedules/{s['id']}/pause", data={"csrf": csrf}, follow_redirects=False
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
