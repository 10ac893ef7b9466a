"""Authentication and authorisation: one guard on the whole application, default deny.

Every route handler declares the least role it needs in `opt={"role": ...}` (`public`, `viewer`,
`operator`, `admin`); roles are ordered, so an admin may do what an operator may. The guard runs
for every route of the application (the OpenAPI router included) before any parameter or body is
read, so a caller without a valid token learns nothing about input validation. A route that
declares no role is refused to everyone: forgetting the declaration fails closed, and the
route-inventory test fails (tests/api/test_auth.py).

`Authorization: Bearer <token>` is checked by shape and checksum first (no database lookup for a
mistyped or random string), then by its SHA-256 (app.services.tokens). 401 carries
`WWW-Authenticate: Bearer`; a valid token with too weak a role is 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from pgsched.app.services import tokens

PUBLIC: Final = "public"
RANK: Final[dict[str, int]] = {"viewer": 1, "operator": 2, "admin": 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name is the actor of every event the request writes."""

    token_id: int
    name: str
    role: str
    prefix: str


def _challenge(error: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="pgsched"' + (f', error="{error}"' if error else "")
    return {"WWW-Authenticate": value}


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def is_generated_options(handler: BaseRouteHandler) -> bool:
    """Litestar's own OPTIONS handler for a path: it only answers the `Allow` header."""
    name = getattr(handler.fn, "__qualname__", "")
    return getattr(handler, "http_methods", None) == {"OPTIONS"} and name.endswith(
        "create_options_handler.<locals>.options_handler"
    )


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The application's guard (see the module docstring)."""
    required = handler.opt.get("role")
    if required == PUBLIC or (required is None and is_generated_options(handler)):
        return
    if required not in RANK:
        # Default deny: a route nobody declared a role for is open to nobody.
        raise PermissionDeniedException("this route declares no role requirement")
    token = _bearer(connection)
    if token is None:
        raise NotAuthorizedException("a bearer token is required", headers=_challenge())
    state = connection.app.state
    async with state.pool.connection() as conn:
        row = await tokens.authenticate(conn, token, now=state.clock.db_now())
    if row is None:
        raise NotAuthorizedException(
            "the token is not valid (unknown, revoked, expired or mistyped)",
            headers=_challenge("invalid_token"),
        )
    principal = Principal(row["id"], row["name"], row["role"], row["prefix"])
    if RANK.get(principal.role, 0) < RANK[required]:
        raise PermissionDeniedException(f"this needs the {required} role")
    connection.scope["user"] = principal
    connection.scope["auth"] = principal.prefix


def principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as the guard authenticated it."""
    user = request.scope.get("user")
    if not isinstance(user, Principal):  # only on a public route, which never asks
        raise NotAuthorizedException("a bearer token is required", headers=_challenge())
    return user


_MAX_AGENT: Final = 256


def audit(request: Request[Any, Any, Any]) -> tuple[str, dict[str, object]]:
    """(actor, meta) for an event this request writes: the token's name, and where the request
    came from. No secret: the token itself never leaves the guard."""
    who = principal(request)
    agent = request.headers.get("user-agent")
    meta: dict[str, object] = {
        "source_ip": request.client.host if request.client else None,
        "user_agent": agent[:_MAX_AGENT] if agent else None,
        "token_prefix": who.prefix,
        "via": "api",
    }
    return who.name, meta
