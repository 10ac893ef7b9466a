"""Opaque keyset cursors: base64url of a small JSON array, e.g. the last row's (due_at, id).

Opaque to clients (they only pass back what they got) but not secret: a cursor only says where a
page starts, and every page is still filtered by the caller's own query. A cursor that does not
decode is a 422 naming `cursor` (or `after`), never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from pgsched.app.api.problems import ApiError


def encode(*parts: object) -> str:
    text = json.dumps(
        [p.isoformat() if isinstance(p, datetime) else p for p in parts], separators=(",", ":")
    )
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _parts(cursor: str, field: str, count: int) -> list[object]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "is not a cursor this API issued", field=field, source="query") from exc
    if not isinstance(parts, list) or len(parts) != count:
        raise ApiError(422, "is not a cursor this API issued", field=field, source="query")
    return parts


def _int(value: object, field: str) -> int:
    # bool is an int subclass; ids and transaction ids are positive bigints.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ApiError(422, "is not a cursor this API issued", field=field, source="query")
    return value


def decode_id(cursor: str, field: str = "cursor") -> int:
    (value,) = _parts(cursor, field, 1)
    return _int(value, field)


def decode_instant_id(cursor: str, field: str = "cursor") -> tuple[datetime, int]:
    at, ident = _parts(cursor, field, 2)
    try:
        instant = datetime.fromisoformat(str(at))
    except ValueError as exc:
        raise ApiError(422, "is not a cursor this API issued", field=field, source="query") from exc
    if instant.tzinfo is None:
        raise ApiError(422, "is not a cursor this API issued", field=field, source="query")
    return instant, _int(ident, field)


def decode_pair(cursor: str, field: str = "cursor") -> tuple[int, int]:
    first, second = _parts(cursor, field, 2)
    return _int(first, field), _int(second, field)
