"""The store is the only code that runs named SQL (ADR 0025), and every named query is used.

Scans the source (AST, no imports) of app/, workers/ and otel/: outside app/db/store/ nothing may
call `query(...)` or import it from app.db.sql; and each `-- name:` in app/db/queries/*.sql must
appear as a string in some store module, so a statement nothing runs cannot linger.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from pgsched.app.db import sql

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "workers", "otel")
STORE = ROOT / "app" / "db" / "store"
# Where `query` is defined, not run.
LOADER = ROOT / "app" / "db" / "sql.py"


def _sources() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def _in_store(path: Path) -> bool:
    return path.is_relative_to(STORE)


def runs_named_sql(tree: ast.AST) -> list[int]:
    """Lines that call `query(...)` (bare or as an attribute) or import it from app.db.sql."""
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "query":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module, names = node.module or "", {alias.name for alias in node.names}
            if (module.endswith("app.db.sql") and "query" in names) or (
                module.endswith("app.db") and "sql" in names
            ):
                lines.append(node.lineno)
    return lines


def test_the_scan_finds_what_it_must() -> None:
    """The detector itself: the three ways a module could run a named statement."""
    found = runs_named_sql(
        ast.parse(
            "from pgsched.app.db.sql import query\n"
            "from pgsched.app.db import sql\n"
            "async def f(conn):\n"
            "    await conn.execute(query('notify_runs'))\n"
            "    await conn.execute(sql.query('notify_runs'))\n"
        )
    )
    assert found == [1, 2, 4, 5]
    assert runs_named_sql(ast.parse("await store.wake_workers(conn)")) == []


def test_only_the_store_runs_named_sql() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _sources()
        if not _in_store(path) and path != LOADER
        for line in runs_named_sql(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], "named SQL run outside app/db/store/ (ADR 0025)"


@cache
def _store_strings() -> frozenset[str]:
    found: set[str] = set()
    for path in STORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return frozenset(found)


@pytest.mark.parametrize("name", sorted(sql.names()))
def test_every_named_query_is_run_by_a_store_module(name: str) -> None:
    assert name in _store_strings(), f"no module of app/db/store/ runs the query {name!r}"
