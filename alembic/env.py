"""Alembic environment: online migrations only, against DATABASE_URL (or the URL a caller set).

pgsched's schema is SQL-first (ADR 0002): revisions execute SQL text, there is no ORM metadata to
autogenerate from, and offline (`--sql`) mode is not supported because revisions run SQL files
through the driver connection.
"""

from __future__ import annotations

from sqlalchemy import create_engine, pool

from alembic import context
from pgsched.app.settings import sqlalchemy_url


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or sqlalchemy_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit(
        "pgsched migrations run online only: set DATABASE_URL and run `alembic upgrade`"
    )
run_migrations_online()
