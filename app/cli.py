"""The `pgsched` command.

Every subcommand reads DATABASE_URL (or --database-url). Expected failures (bad input, no
database, drift found) end with a one-line reason on stderr and a non-zero exit code, never a
traceback: 1 = the check found a problem, 2 = the command could not do its work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import psycopg
from alembic.util.exc import CommandError as AlembicError
from psycopg.rows import dict_row
from sqlalchemy.exc import SQLAlchemyError

from app.db import replay
from app.db.store import Conn
from app.settings import SettingsError, libpq_url, sqlalchemy_url

ROOT = Path(__file__).resolve().parents[1]


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise CommandError("DATABASE_URL is not set (or pass --database-url)")
    return libpq_url(url)


def migrate(url: str, target: str = "head") -> None:
    """`alembic upgrade <target>` against `url`, as run from the repository root."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    command.upgrade(cfg, target)


async def _with_conn(url: str, work: Callable[[Conn], Awaitable[int]]) -> int:
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise CommandError(f"cannot connect to the database: {_first_line(exc)}") from None
    try:
        return await work(conn)
    finally:
        await conn.close()


async def _verify(conn: Conn) -> int:
    differences = await replay.verify(conn)
    for difference in differences:
        print(difference)
    print(f"{len(differences)} difference(s) between the projections and the event log")
    return 1 if differences else 0


async def _rebuild(conn: Conn) -> int:
    counts = await replay.rebuild(conn)
    print(f"rebuilt {counts['schedules']} schedule(s) and {counts['runs']} run(s) from events")
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cmd_migrate(args: argparse.Namespace) -> int:
    migrate(_database_url(args), args.revision)
    print(f"migrated to {args.revision}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    return asyncio.run(_with_conn(_database_url(args), _verify))


def cmd_rebuild(args: argparse.Namespace) -> int:
    return asyncio.run(_with_conn(_database_url(args), _rebuild))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgsched", description=__doc__.splitlines()[0])
    p.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("migrate", help="apply the schema migrations (alembic upgrade)")
    m.add_argument("revision", nargs="?", default="head")
    m.set_defaults(func=cmd_migrate)

    v = sub.add_parser("verify", help="fold the event log and compare it with the tables")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("rebuild", help="rebuild the schedule and run tables from the event log")
    r.set_defaults(func=cmd_rebuild)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (CommandError, SettingsError) as exc:
        print(f"pgsched: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, SQLAlchemyError, AlembicError) as exc:
        print(f"pgsched: database error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
