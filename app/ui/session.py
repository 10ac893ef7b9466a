"""The console's session: a signed cookie naming an API token, never holding it (ADR 0030).

Signing in takes an API token once (app.services.tokens.authenticate, as the API's guard). The
cookie then holds `v2.<token id>.<issued at>.<session id>.<MAC>`: the MAC is an HMAC-SHA256
under a key of this process, over the id, the issue time, a random session id and the token's
stored SHA-256, so the cookie is bound to that token and cannot be made by whoever reads it or
the database alone. Every request looks the token up again by id: a revoked or expired token
ends its sessions at the next click, and the role shown is the token's role now. Signing out
records the session id as ended (in this process, as long as the session could have lived, as
the key itself lives only as long as the process): a copy of the cookie taken before sign-out
is refused afterwards. The cookie is HttpOnly, SameSite=Strict, Path=/ui, and Secure when the
console is served over https.

Forms carry a CSRF token bound to the session (an HMAC of the cookie under the same key); the
sign-in form, before any session, a double-submit token (a random cookie and the same value in
the form). A POST without the right one is refused with 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from pgsched.app.api.auth import RANK, Principal
from pgsched.app.api.common import check_path_ids
from pgsched.app.db.store import console as console_store

COOKIE: Final = "pgsched_session"
LOGIN_COOKIE: Final = "pgsched_login"
PATH: Final = "/ui"
LIFETIME_SECONDS: Final = 12 * 3600  # a working day; the token's own expiry ends it sooner
PUBLIC: Final = "public"


class SignInRequired(Exception):
    """No valid session: the console answers with a redirect to its sign-in page."""


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    cookie: str
    csrf: str
    sid: str
    expires: int  # epoch seconds, when the cookie stops being accepted
    checked: int  # epoch seconds, the database's clock when the session was checked


def _key(connection: ASGIConnection[Any, Any, Any, Any]) -> bytes:
    """This process's signing key, made at first use: a restart signs everyone out (ADR 0030)."""
    state = connection.app.state
    key = state.get("ui_session_key")
    if not isinstance(key, bytes):
        key = state["ui_session_key"] = secrets.token_bytes(32)
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(key: bytes, token_id: int, issued: int, sid: str, token_sha256: bytes) -> str:
    message = f"{token_id}.{issued}.{sid}.".encode() + token_sha256
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _ended(connection: ASGIConnection[Any, Any, Any, Any]) -> dict[str, int]:
    """Session ids signed out in this process -> when they would have expired (epoch seconds)."""
    state = connection.app.state
    ended = state.get("ui_ended_sessions")
    if not isinstance(ended, dict):
        ended = state["ui_ended_sessions"] = {}
    return ended


def csrf_for(key: bytes, cookie: str) -> str:
    return _b64(hmac.new(key, b"csrf." + cookie.encode("ascii"), hashlib.sha256).digest())


def is_https(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    return connection.url.scheme == "https"


def session_cookie(
    connection: ASGIConnection[Any, Any, Any, Any], token_id: int, token_sha256: bytes, issued: int
) -> Cookie:
    sid = _b64(secrets.token_bytes(16))
    mac = _mac(_key(connection), token_id, issued, sid, token_sha256)
    value = f"v2.{token_id}.{issued}.{sid}.{mac}"
    return Cookie(
        key=COOKIE,
        value=value,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(connection),
        max_age=LIFETIME_SECONDS,
    )


def cleared(key: str = COOKIE) -> Cookie:
    return Cookie(key=key, value="", path=PATH, httponly=True, samesite="strict", max_age=0)


def login_cookie(connection: ASGIConnection[Any, Any, Any, Any], value: str) -> Cookie:
    return Cookie(
        key=LOGIN_COOKIE,
        value=value,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(connection),
        max_age=3600,
    )


# ASCII digits only: str.isdigit() accepts '²', which int() then refuses.
_COOKIE_FORMAT: Final = re.compile(
    r"v2\.([1-9][0-9]{0,18})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})"
)


def _parse(cookie: str) -> tuple[int, int, str, str] | None:
    found = _COOKIE_FORMAT.fullmatch(cookie)
    if found is None:
        return None
    return int(found[1]), int(found[2]), found[3], found[4]


async def load(connection: ASGIConnection[Any, Any, Any, Any]) -> Session:
    """The request's session, checked against the token as it is now; SignInRequired if none."""
    cookie = connection.cookies.get(COOKIE)
    parsed = _parse(cookie) if cookie else None
    if cookie is None or parsed is None:
        raise SignInRequired
    token_id, issued, sid, mac = parsed
    if sid in _ended(connection):
        raise SignInRequired
    state = connection.app.state
    now = state.clock.db_now()
    async with state.pool.connection() as conn:
        row = await console_store.live_token(conn, token_id, now=now)
    if row is None or not (issued <= row["now_epoch"] < issued + LIFETIME_SECONDS):
        raise SignInRequired
    key = _key(connection)
    expected = _mac(key, token_id, issued, sid, bytes(row["token_sha256"]))
    if not hmac.compare_digest(expected, mac):
        raise SignInRequired
    principal = Principal(row["id"], row["name"], row["role"], row["prefix"])
    return Session(
        principal, cookie, csrf_for(key, cookie), sid, issued + LIFETIME_SECONDS, row["now_epoch"]
    )


def end(connection: ASGIConnection[Any, Any, Any, Any], session: Session) -> None:
    """Sign this session out for good: its cookie, even a copy, is refused from now on. Ids of
    sessions that have expired anyway are forgotten here, so the record stays small."""
    ended = _ended(connection)
    for sid in [s for s, until in ended.items() if until <= session.checked]:
        del ended[sid]
    ended[session.sid] = session.expires


async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The console's guard, on every route under /ui: each declares `opt={"console": role}`.

    Default deny, as the API's: a route that declares no console role is refused to everyone.
    The API's bearer guard lets these routes through (they declare the API role `public`);
    this guard is what protects them.
    """
    required = handler.opt.get("console")
    if required == PUBLIC:
        return
    if required not in RANK:
        raise PermissionDeniedException("this page declares no role requirement")
    session = await load(connection)
    check_path_ids(connection, handler)  # after the session: nobody else learns input rules
    if RANK.get(session.principal.role, 0) < RANK[required]:
        raise PermissionDeniedException(f"this needs the {required} role")
    connection.scope["user"] = session.principal
    connection.scope["auth"] = session.principal.prefix
    connection.scope.setdefault("state", {})["ui_session"] = session


def current(request: Request[Any, Any, Any]) -> Session:
    session = request.scope.get("state", {}).get("ui_session")
    if not isinstance(session, Session):
        raise SignInRequired
    return session


def check_csrf(request: Request[Any, Any, Any], given: object) -> None:
    """403 unless the form's CSRF token is this session's."""
    expected = current(request).csrf
    if not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise PermissionDeniedException("the form's CSRF token is missing or wrong: reload")


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)
