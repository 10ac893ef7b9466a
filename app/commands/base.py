"""What every `pgsched` command shares: the one-line error, which database, who acts, and asking
before a change that touches many rows.

Which database (`database_url`): `--database-url`, else `DATABASE_URL`, else the local cluster
that `pgsched run` started under `.pgsched/pgdata` of the working directory (ADR 0008), if it is
running. So after `bash scripts/run`, `pgsched token create` in another shell of the same
directory needs nothing set. `pgsched run` itself starts that cluster when it is not running;
the other commands never start a server behind the operator's back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from pgsched.app import settings
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.domain.errors import InvalidDefinition, InvalidRequest, OperationError
from pgsched.app.domain.jobs import InvalidPayload
from pgsched.app.domain.occurrences import InvalidSchedule
from pgsched.app.domain.schedule import EARLIEST, LATEST, RANGE_TEXT

LOCAL_DATA_DIR = Path(".pgsched") / "pgdata"
"""Where `pgsched run` keeps its local cluster when no database is given (its --data-dir)."""
LOCAL_DATABASE = "pgsched"

T = TypeVar("T")


class CommandError(Exception):
    """An expected failure: printed as one line, exit code 2."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def environ(args: argparse.Namespace) -> Mapping[str, str]:
    """The environment `main` read for this command (app.settings parses it)."""
    env: Mapping[str, str] = args.environ
    return env


def local_database_url(data_dir: Path = LOCAL_DATA_DIR) -> str | None:
    """The DSN of database `pgsched` on the local cluster running under `data_dir`, or None
    when no server runs there."""
    from pgsched.app import localpg

    try:
        if not localpg.is_running(data_dir):
            return None
        return localpg.start(data_dir).dsn(LOCAL_DATABASE)  # reuses the running server as it is
    except localpg.LocalPostgresError as exc:
        raise CommandError(str(exc)) from None


def database_url(args: argparse.Namespace) -> str:
    """The database this command works on (the module's docstring says which)."""
    url = settings.optional_database_url(environ(args), args.database_url)
    if url is not None:
        return url
    local = local_database_url()
    if local is None:
        raise CommandError(
            "DATABASE_URL is not set (or pass --database-url), and no local PostgreSQL runs "
            f"under {LOCAL_DATA_DIR} here (`pgsched run` in this directory starts one)"
        )
    return local


async def with_conn(url: str, work: Callable[[Conn], Awaitable[T]]) -> T:
    """Run `work` on one autocommit connection (each service call is its own transaction)."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise CommandError(f"cannot connect to the database: {first_line(exc)}") from None
    try:
        return await work(conn)
    finally:
        await conn.close()


def actor() -> str:
    """Who acts, as events record it: `cli:<os user>` (the API's actor is a token's name)."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no passwd entry (some containers)
        user = str(os.geteuid())
    return f"cli:{user}"


def audit_meta() -> dict[str, object]:
    """Where a change came from, kept in its event's meta like the API's (never a secret)."""
    return {"via": "cli", "host": socket.gethostname(), "pid": os.getpid()}


@contextlib.contextmanager
def operation_errors() -> Iterator[None]:
    """The services' expected refusals as one line naming the field, as the API's 4xx do."""
    try:
        yield
    except InvalidDefinition as exc:
        raise CommandError(f"{exc.field}: {exc.message}") from None
    except (InvalidRequest, OperationError, InvalidSchedule, InvalidPayload) as exc:
        raise CommandError(str(exc)) from None
    except store.NameTaken as exc:
        raise CommandError(f"name: {first_line(exc)}") from None


def confirm(question: str, *, yes: bool) -> bool:
    """Ask `question` on the terminal (y/N); True at once with --yes. Without a terminal to ask
    on (a script, a pipe, cron) and without --yes: refuse, since nobody can answer."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise CommandError(
            f"{question.rstrip('?')}: refused, no terminal to confirm on (pass --yes)"
        )
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_SPAN = re.compile(r"([0-9]+)([smhd])")
_DIGITS = re.compile(r"[0-9]+")
MAX_SPAN = timedelta(days=366 * 100)
"""The longest span back from now a command takes: a century reaches every run a database keeps,
and a bound keeps the arithmetic on instants in range."""
MAX_ID = 2**63 - 1  # a bigint: ids and versions
MAX_COUNT = 2**31 - 1  # an integer: limits and counts


def whole(raw: str, name: str, *, minimum: int = 1, maximum: int = MAX_ID) -> int:
    """A whole number in ASCII digits within [minimum, maximum], or one line naming `name`
    (`str.isdigit` also takes '²' and '١٢', which `int` refuses or reads as another number)."""
    text = raw.strip()
    if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= maximum:
        raise CommandError(f"{name} must be a whole number {minimum}..{maximum}, got {raw!r}")
    return int(text)


def positive(raw: str) -> int:
    """An argparse type: a count 1..MAX_COUNT (argparse names the option in its one line)."""
    try:
        return whole(raw, "it", maximum=MAX_COUNT)
    except CommandError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number 1..{MAX_COUNT}, got {raw!r}"
        ) from None


def when(raw: str, name: str) -> datetime | timedelta:
    """An instant with a time zone (`2026-12-04T10:00:00Z`), or a span back from now (`90m`,
    `2h`, `7d`, at most a century) that `at` resolves against the database's clock."""
    text = raw.strip()
    span = _SPAN.fullmatch(text)
    if span is not None:
        seconds = int(span[1]) * _UNITS[span[2]]
        if seconds > MAX_SPAN.total_seconds():
            raise CommandError(f"{name}: a span back from now is at most {MAX_SPAN.days}d")
        return timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise CommandError(
            f"{name} must be an instant with a time zone (2026-12-04T10:00:00Z) or a span "
            f"back from now (30m, 2h, 7d), got {raw!r}"
        )
    if not EARLIEST <= value < LATEST:  # as the API's instants: beyond, arithmetic overflows
        raise CommandError(f"{name} must be {RANGE_TEXT}, got {raw!r}")
    return value


def at(value: datetime | timedelta, now: datetime, name: str) -> datetime:
    """`when`'s answer as an instant: a span counts back from `now` (the database's)."""
    if isinstance(value, datetime):
        return value
    try:
        return now - value
    except OverflowError:  # before year 1
        raise CommandError(f"{name}: {value.days}d back from now is before year 1") from None


async def schedule_id(conn: Conn, ref: str) -> int:
    """A live schedule named by its id (digits) or its name; `id:N` and `name:X` say which.

    A name made of digits could also be another live schedule's id: rather than guess, that
    is refused unless both mean the same schedule (with no live schedule of that id, the name
    is the one meant)."""
    if ref.startswith("id:"):
        return whole(ref[3:], "schedule id")
    if ref.startswith("name:"):
        return await _named(conn, ref[5:])
    if not _DIGITS.fullmatch(ref):
        return await _named(conn, ref)
    sid = whole(ref, "schedule id", minimum=0)
    named = await store.schedules.live_schedule_id(conn, ref)
    if named is not None and named != sid:
        if await store.get_schedule(conn, sid) is None:
            return named
        raise CommandError(
            f"{ref!r} is schedule {named}'s name and schedule {sid}'s id: "
            f"say `id:{sid}` or `name:{ref}`"
        )
    return sid


async def _named(conn: Conn, name: str) -> int:
    found = await store.schedules.live_schedule_id(conn, name)
    if found is None:
        raise CommandError(f"no live schedule is named {name!r}")
    return found


def actions(
    sub: argparse._SubParsersAction[Any], group: str, summary: str, description: str
) -> Callable[[str, str], argparse.ArgumentParser]:
    """Add the command group `group` (e.g. `runs`) and return how to add one of its actions: a
    subparser whose --help repeats its one-line summary as its description."""
    gp = sub.add_parser(group, help=summary, description=description)
    acts = gp.add_subparsers(dest=f"{group}_command", required=True, metavar="ACTION")

    def add(name: str, help_line: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = acts.add_parser(name, help=help_line, description=help_line)
        return p

    return add


# A worker is live when its last heartbeat is this recent, as /health judges (ApiSettings).
WORKER_STALE_SECONDS = 30.0


async def warn_unserved(conn: Conn, queues: Iterable[str]) -> None:
    """One WARNING line on stderr per queue in `queues` that no live worker serves: work put
    there waits, silently, until a worker for it starts (PGSCHED_QUEUES names the queues of
    the worker `pgsched run` starts; `pgsched worker --queues` another's)."""
    wanted = sorted(set(queues))
    if not wanted:
        return
    for queue in await store.workers.unserved_queues(
        conn, wanted, stale_seconds=WORKER_STALE_SECONDS, now=None
    ):
        print(
            f"pgsched: WARNING: no live worker serves queue {queue!r}: its runs wait until one "
            f"does (`pgsched worker --queues {queue}`, or PGSCHED_QUEUES naming it for "
            "`pgsched run`)",
            file=sys.stderr,
        )
