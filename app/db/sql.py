"""Named SQL: every runtime statement lives in `app/db/queries/*.sql` under a `-- name:` header.

A file holds blocks like:

    -- name: claim_runs
    -- One-line purpose.
    WITH ... ;

Only the modules of `app.db.store` execute them (ADR 0025; tests/unit/test_sql_boundary.py fails
on a `query()` anywhere else in app/, workers/ or otel/, and on a named query no store module runs).
Parameters are psycopg named placeholders with explicit casts (`%(now)s::timestamptz`). The
loader fails at import on a duplicate name, and `query()` fails on an unknown one, so a typo
cannot reach the database.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, LiteralString]:
    queries: dict[str, LiteralString] = {}
    for entry in sorted(resources.files("pgsched.app.db").joinpath("queries").iterdir(), key=str):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        parts = _HEADER.split(text)
        # parts = [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"duplicate query name {name!r} in {entry.name}")
            statement = (
                "\n".join(
                    line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
                )
                .strip()
                .rstrip(";")
            )
            # The text comes from files shipped in this package, never from input: it is as
            # trustworthy as a literal in the code (procrastinate's reasoning for its queries).
            # mypy treats LiteralString as str (python/mypy#12554), so no cast is needed here.
            queries[name] = statement
    return queries


def query(name: str) -> LiteralString:
    """The statement called `name`."""
    try:
        return _load()[name]
    except KeyError:
        raise KeyError(f"no SQL query named {name!r} in app/db/queries") from None


def names() -> frozenset[str]:
    return frozenset(_load())
