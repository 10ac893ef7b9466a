"""Run SQL text and released SQL files from alembic revisions.

SQL goes through the driver connection without parameters, so psycopg sends it as a simple query:
several statements, `%` and `:name` inside PL/pgSQL bodies all pass untouched (with
parameters, psycopg would read `%` as a placeholder).
Released files are immutable; the caller pins each one by SHA-256 so an edit fails loudly.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

from alembic import op

# The repository's sql/, carried in the package as pgsched/sql (ADR 0023).
SQL_DIR: Traversable = resources.files("pgsched").joinpath("sql")


def execute(sql: str) -> None:
    """Execute SQL text (any number of statements) in the migration's transaction."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def execute_file(relative: str, sha256: str) -> None:
    """Execute a released file under sql/, refusing it if it changed after release."""
    text = SQL_DIR.joinpath(relative).read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"sql/{relative} changed after release ({digest}); add a new _vN file")
    execute(text)
