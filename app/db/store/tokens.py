"""API tokens: their rows and the events of their creation and revocation (stream 'system').

The statements are in app/db/queries/tokens.sql. Only a token's SHA-256 is stored or looked up;
the token itself never reaches this module (app.services.tokens hashes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pgsched.app.db.store.executor import Conn, Row, jsonb, one, row, rows


async def create_token(
    conn: Conn,
    *,
    name: str,
    role: str,
    token_sha256: bytes,
    prefix: str,
    expires_at: datetime | None,
    actor: str,
    now: datetime | None,
    meta: Mapping[str, object],
) -> Row:
    """Insert a token and append token.created; TokenNameTaken if the name is taken."""
    return await one(
        conn,
        "create_token",
        {
            "name": name,
            "role": role,
            "token_sha256": token_sha256,
            "prefix": prefix,
            "expires_at": expires_at,
            "actor": actor,
            "now": now,
            "meta": jsonb(meta),
        },
    )


async def revoke_token(
    conn: Conn, name: str, *, actor: str, now: datetime | None, meta: Mapping[str, object]
) -> Row | None:
    """Revoke the live token called `name` and append token.revoked; None if there is none."""
    return await row(
        conn, "revoke_token", {"name": name, "actor": actor, "now": now, "meta": jsonb(meta)}
    )


async def list_tokens(conn: Conn, *, now: datetime | None) -> list[Row]:
    """Every token's metadata (never its hash), by name."""
    return await rows(conn, "list_tokens", {"now": now})


async def live_token_by_hash(
    conn: Conn, token_sha256: bytes, *, now: datetime | None
) -> Row | None:
    """The live token (with its hash, for the caller's constant-time comparison) of this hash."""
    return await row(conn, "authenticate_token", {"token_sha256": token_sha256, "now": now})


async def token_is_live(conn: Conn, token_id: int, *, now: datetime | None) -> bool:
    """Whether the token is still neither revoked nor expired."""
    found = await row(conn, "token_is_live", {"id": token_id, "now": now})
    return bool(found and found["live"])
