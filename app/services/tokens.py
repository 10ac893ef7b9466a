"""API tokens: their format, their storage as SHA-256, and creating, revoking and checking them.

A token reads `pgs_<43 base62 chars: 32 random bytes><6 base62 chars: CRC32 of the body>`, after
GitHub's format: the prefix lets secret scanners recognise a leaked
token, and the checksum rejects a mistyped or truncated one without a database round trip. Only
`sha256(token)` is stored; `prefix` (the first characters, enough to tell tokens apart in a list)
is what people see. Tokens are shown once, when created.

Creating and revoking a token are events on the 'system' stream, written in the same statement
as the row (ADR 0005), with the name, role and display prefix in meta, never the token or its
hash. Recording `last_used_at` is coordination, not history, and is not an event.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal, get_args

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row, TokenNameTaken

Role = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

PREFIX: Final = "pgs_"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INDEX: Final = {c: i for i, c in enumerate(_ALPHABET)}
_BODY_BYTES: Final = 32
_BODY_CHARS: Final = 43  # 62**43 > 2**256: every 32-byte value fits
_CHECK_CHARS: Final = 6  # 62**6 > 2**32: every CRC32 fits
TOKEN_LENGTH: Final = len(PREFIX) + _BODY_CHARS + _CHECK_CHARS
_SHOWN_CHARS: Final = 8  # body characters kept as the display prefix


__all__ = [
    "PREFIX",
    "ROLES",
    "TOKEN_LENGTH",
    "Role",
    "TokenNameTaken",
    "authenticate",
    "create_token",
    "digest",
    "display_prefix",
    "generate",
    "is_live",
    "list_tokens",
    "revoke_token",
    "well_formed",
]


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_ALPHABET[digit])
    if value:
        raise ValueError("value does not fit the width")
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECK_CHARS)


def generate() -> str:
    """A new random token (shown once; store only `digest(token)`)."""
    body = _base62(int.from_bytes(secrets.token_bytes(_BODY_BYTES), "big"), _BODY_CHARS)
    return PREFIX + body + _checksum(body)


def well_formed(token: str) -> bool:
    """Prefix, length, alphabet and checksum are right: worth a database lookup."""
    if len(token) != TOKEN_LENGTH or not token.startswith(PREFIX):
        return False
    rest = token[len(PREFIX) :]
    if any(c not in _INDEX for c in rest):
        return False
    body, check = rest[:_BODY_CHARS], rest[_BODY_CHARS:]
    return hmac.compare_digest(_checksum(body), check)


def digest(token: str) -> bytes:
    """What is stored and looked up: a fast hash suffices for 256 random bits."""
    return hashlib.sha256(token.encode("ascii")).digest()


def display_prefix(token: str) -> str:
    return token[: len(PREFIX) + _SHOWN_CHARS]


async def create_token(
    conn: Conn,
    *,
    name: str,
    role: Role,
    actor: str,
    now: datetime | None,
    expires_at: datetime | None = None,
    meta: Mapping[str, object] | None = None,
) -> tuple[Row, str]:
    """Store a new token and append token.created; returns (metadata row, the token itself)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = generate()
    row = await store.tokens.create_token(
        conn,
        name=name,
        role=role,
        token_sha256=digest(token),
        prefix=display_prefix(token),
        expires_at=expires_at,
        actor=actor,
        now=now,
        meta=meta or {},
    )
    return row, token


async def revoke_token(
    conn: Conn,
    name: str,
    *,
    actor: str,
    now: datetime | None,
    meta: Mapping[str, object] | None = None,
) -> Row | None:
    """Revoke the live token called `name` and append token.revoked; None if there is none."""
    return await store.tokens.revoke_token(conn, name, actor=actor, now=now, meta=meta or {})


async def list_tokens(conn: Conn, *, now: datetime | None) -> list[Row]:
    """Every token's metadata (never its hash), by name."""
    return await store.tokens.list_tokens(conn, now=now)


async def authenticate(conn: Conn, token: str, *, now: datetime | None) -> Row | None:
    """The live token row (id, name, role, prefix) for `token`, or None.

    Malformed tokens are refused before any lookup. The lookup is by hash through the unique
    index; the final comparison is constant-time anyway, so nothing here depends on how much
    of a guessed hash matched.
    """
    if not well_formed(token):
        return None
    hashed = digest(token)
    row = await store.tokens.live_token_by_hash(conn, hashed, now=now)
    if row is None or not hmac.compare_digest(bytes(row["token_sha256"]), hashed):
        return None
    return {k: v for k, v in row.items() if k != "token_sha256"}


async def is_live(conn: Conn, token_id: int, *, now: datetime | None) -> bool:
    """Whether the token is still neither revoked nor expired (for long-lived streams)."""
    return await store.tokens.token_is_live(conn, token_id, now=now)
