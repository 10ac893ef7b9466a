"""Every setting pgsched reads from its environment, parsed and checked in one place.

An entry point hands the process's environment, as a mapping, to the section functions below:
`pgsched` (app.cli) calls `environment()` once per command, `create_app()` with no arguments
does the same under `uvicorn --factory`, alembic's env.py asks `sqlalchemy_url()`. Nothing else
in app/, workers/ or otel/ reads `os.environ` (app.localpg hands it on, whole, to the pg_ctl it
starts), and nothing writes it (tests/unit/test_settings_boundary.py keeps it so).

Each command parses the sections it uses before it starts anything. A bad value is a
`SettingsError` whose message is one line naming the variable, what it accepts and what it got
(`PGSCHED_WORKER_SLOTS must be a whole number 1..10000, got 'abc'`); the CLI prints it and exits
with code 2. An unset variable takes its default; a variable set to something is that value, so
`PGSCHED_QUEUES=` is refused rather than read as "default". Only the optional ones whose default
is "none" (`PGSCHED_ARCHIVE_DIR`, `PGSCHED_METRICS_PORT`, ...) read empty as unset.

Sections, and the commands that read them:
- database: `DATABASE_URL` (or `--database-url`), every command;
- api: `PGSCHED_HTTP_HOST`, `PGSCHED_HTTP_PORT`, `PGSCHED_HTTP_MAX_BODY_BYTES`,
  `PGSCHED_API_POOL_SIZE`, `PGSCHED_HTTP_TRUSTED_PROXIES`, `PGSCHED_METRICS_SAMPLE_SECONDS`
  (app.api.config.ApiSettings): `api`, `run`;
- worker: `PGSCHED_QUEUES`, `PGSCHED_WORKER_SLOTS`, `PGSCHED_LEASE_SECONDS`,
  `PGSCHED_SHUTDOWN_GRACE_SECONDS` (workers.worker.WorkerSettings): `worker`, `run`;
  `PGSCHED_IMPORT` (`job_modules`, the application's modules of `@pgsched.job` functions, ADR
  0027): `worker`;
- retention: `PGSCHED_MONTHS_AHEAD`, `PGSCHED_RUN_RETENTION_DAYS`,
  `PGSCHED_EVENT_RETENTION_DAYS`, `PGSCHED_ARCHIVE_DIR` (app.maintenance.Retention):
  `maintain`, `ticker`, `run` (the last two install the built-in schedule with it);
- schedule defaults: `PGSCHED_DEFAULT_TIMEZONE`, `PGSCHED_DEFAULT_QUEUE`,
  `PGSCHED_DEFAULT_MAX_ATTEMPTS`, `PGSCHED_DEFAULT_RETRY_DELAY_SECONDS`,
  `PGSCHED_DEFAULT_RETRY_FACTOR`, `PGSCHED_DEFAULT_TIMEOUT_SECONDS` (`schedule_defaults`, what a
  new schedule gets when its definition leaves the field out, ADR 0031): `api`, `run`, `apply`,
  `export`; `PGSCHED_APPLY_FILE` (`apply_file`, a schedules file `run` applies at start): `run`;
- telemetry: `PGSCHED_METRICS_PORT` here, `PGSCHED_LOG_LEVEL`, `PGSCHED_LOG_FORMAT`,
  `PGSCHED_RUN_LOG_LEVEL` (the per-run and per-tick lines), and the
  `OTEL_*` variables with `PGSCHED_METRICS_HOST` and `PGSCHED_TRACE_SQL`, which otel.config
  parses itself (otel is a leaf that imports nothing of app/): the long-running commands and
  `maintain`.

The one exception: what jobs use at execution time. `PGSCHED_SECRET_<NAME>`,
`PGSCHED_SQL_DSN_<NAME>`, `PGSCHED_SQL_JOB_PASSWORD`, `PGSCHED_HTTP_ALLOW` and
`PGSCHED_COMMAND_USER` are looked up by the worker in the environment mapping it was given
(`Worker(environ=...)`, which the CLI fills from this same mapping): a payload names a secret
or a DSN only when it runs (ADR 0012). `job_environment()` checks at start what can be checked
without running a job: the allow-list parses, the command user exists, each named DSN parses.
"""

from __future__ import annotations

import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from pgsched.app.api.config import ApiSettings
    from pgsched.app.maintenance import Retention
    from pgsched.otel.config import TelemetryConfig
    from pgsched.workers.worker import WorkerSettings

T = TypeVar("T")

# _SECTIONS: each section's dataclass stays with the code that uses it and is imported when the
# section is parsed, not here: those modules import this one (SettingsError, the parsers), and
# a command reading only DATABASE_URL should not import the API or the worker.


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line naming the variable."""


def environment() -> dict[str, str]:
    """A copy of this process's environment, for an entry point to hand to the functions below.

    The one read of `os.environ` in app/, workers/ and otel/; a copy, so that what a command
    was started with is what it keeps using.
    """
    return dict(os.environ)


# -- parsers: one raw value, the name to blame -------------------------------------------------

_WHOLE = re.compile(r"[0-9]+")
# More slots than this is a typo: each is a job at once, and the count is stored in an
# integer column (a larger one reached the database as "integer out of range").
MAX_SLOTS = 10_000
# Seconds settings are durations of a lease, a drain or a sampling period: more than a day is a
# typo (or milliseconds), and PostgreSQL intervals built from them must not overflow.
MAX_SECONDS = 86_400.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("auto", "json", "text")


def whole(raw: str, name: str, least: int = 1, most: int | None = None) -> int:
    """A whole number in `least..most` (no sign, no exponent: `1e3` is a typo here)."""
    text = raw.strip()
    value = int(text) if _WHOLE.fullmatch(text) else None
    if value is None or value < least or (most is not None and value > most):
        span = f"{least}..{most}" if most is not None else f">= {least}"
        raise SettingsError(f"{name} must be a whole number {span}, got {raw!r}")
    return value


def seconds(raw: str, name: str, *, zero: bool = False, most: float = MAX_SECONDS) -> float:
    """A finite number of seconds, > 0 (or >= 0 with `zero`), at most `most`."""
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    low_ok = value >= 0 if zero else value > 0
    if not (low_ok and value <= most):  # NaN fails both
        low = ">= 0" if zero else "> 0"
        raise SettingsError(
            f"{name} must be a number of seconds {low} and <= {most:g}, got {raw!r}"
        )
    return value


def port(raw: str, name: str, *, zero: bool = False) -> int:
    """A port to listen on, 1..65535: uvicorn does not refuse 99999 but listens on another port
    than the one asked for. 0 (any free port) only where the port is logged (`zero`)."""
    text = raw.strip()
    value = int(text) if _WHOLE.fullmatch(text) else -1
    least = 0 if zero else 1
    if not least <= value <= 65535:
        free = " (0: any free port)" if zero else ""
        raise SettingsError(f"{name} must be a port number {least}..65535{free}, got {raw!r}")
    return value


def queue_list(raw: str, name: str) -> tuple[str, ...]:
    """Comma-separated queue names; an empty list or name is refused, not read as "default"."""
    queues = tuple(q.strip() for q in raw.split(","))
    if not all(queues):
        raise SettingsError(
            f"{name} must be comma-separated queue names (a,b), none empty, got {raw!r}"
        )
    return queues


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def module_list(raw: str, name: str) -> tuple[str, ...]:
    """Comma-separated importable module names (myapp.jobs,billing.jobs); whether each imports
    is known only when the worker imports it (app.cli: a one-line error, exit 2)."""
    modules = tuple(m.strip() for m in raw.split(","))
    if not all(_MODULE.fullmatch(m) for m in modules):
        raise SettingsError(
            f"{name} must be comma-separated module names (myapp.jobs,other.jobs), got {raw!r}"
        )
    return modules


def choice(raw: str, name: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, compared without case; returned as spelled in `choices`."""
    for option in choices:
        if raw.strip().lower() == option.lower():
            return option
    raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")


def path(raw: str, name: str) -> str:
    """A directory, made absolute so it means the same whatever a process's working directory;
    something there that is not a directory is refused now rather than at the first write."""
    where = Path(raw.strip()).absolute()
    if where.exists() and not where.is_dir():
        raise SettingsError(f"{name} must be a directory, got {raw!r} (a file is there)")
    return str(where)


def text(raw: str, name: str) -> str:
    """A value that must not be blank (a host to bind, a user name)."""
    if not raw.strip():
        raise SettingsError(f"{name} must not be empty, got {raw!r}")
    return raw.strip()


# The same parsers with the bounds of one kind of setting, so each variable names its kind.


def slots(raw: str, name: str) -> int:
    return whole(raw, name, 1, MAX_SLOTS)


def months(raw: str, name: str) -> int:
    """Months of partitions ahead: at least one (the horizon alarm is at fewer than 2, ADR
    0005), at most ten years."""
    return whole(raw, name, 1, 120)


def days(raw: str, name: str) -> int:
    """Days of retention, up to a century: make_interval(days => …) takes an integer."""
    return whole(raw, name, 1, 36_500)


def log_level(raw: str, name: str) -> str:
    return choice(raw, name, LOG_LEVELS)


def log_format(raw: str, name: str) -> str:
    return choice(raw, name, LOG_FORMATS)


def _seconds_or_0(raw: str, name: str) -> float:
    return seconds(raw, name, zero=True)


def _port_or_0(raw: str, name: str) -> int:
    return port(raw, name, zero=True)


def _read(env: Mapping[str, str], name: str, default: T, parse: Callable[[str, str], T]) -> T:
    raw = env.get(name)
    return default if raw is None else parse(raw, name)


def _optional(env: Mapping[str, str], name: str, parse: Callable[[str, str], T]) -> T | None:
    raw = env.get(name, "")
    return parse(raw, name) if raw.strip() else None


# -- database -----------------------------------------------------------------------------------


def database_url(env: Mapping[str, str], given: str | None = None) -> str:
    """`--database-url` if given, else `DATABASE_URL`, as libpq wants it (SettingsError if
    neither is set or it does not parse). The value is never echoed: it may hold a password."""
    name = "--database-url" if given else "DATABASE_URL"
    raw = given or env.get("DATABASE_URL", "")
    if not raw.strip():
        raise SettingsError("DATABASE_URL is not set (or pass --database-url)")
    url = libpq_url(raw.strip())
    check_dsn(url, name)
    return url


def optional_database_url(env: Mapping[str, str], given: str | None = None) -> str | None:
    """As `database_url`, None when neither is set (`pgsched run` then starts its own)."""
    if not (given or env.get("DATABASE_URL", "").strip()):
        return None
    return database_url(env, given)


def check_dsn(dsn: str, name: str) -> None:
    """`dsn` parses as a libpq URL or key=value string and its ports are numbers (libpq itself
    says so only at the first connection, which a service started during an outage retries)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise SettingsError(
            f"{name} must be a PostgreSQL URL (postgresql://user@host:5432/db) or "
            "key=value conninfo; it does not parse (value not shown: it may hold a password)"
        ) from None
    for each in str(params.get("port", "")).split(","):
        if each.strip() and not (each.strip().isascii() and each.strip().isdigit()):
            raise SettingsError(f"{name} names port {each!r}, which is not a port number")


def libpq_url(url: str) -> str:
    """The URL as libpq/psycopg wants it (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def sqlalchemy_url(url: str | None = None) -> str:
    """The URL as SQLAlchemy wants it, for alembic: the psycopg 3 dialect. Without `url`,
    DATABASE_URL (the `alembic` command run by hand has no other way to be told)."""
    url = libpq_url(url) if url else database_url(environment())
    return "postgresql+psycopg://" + url.removeprefix("postgresql://")


def with_database(dsn: str, dbname: str) -> str:
    """`dsn` (a URL or key=value conninfo) as a postgresql:// URL naming database `dbname`."""
    params = {k: str(v) for k, v in conninfo_to_dict(libpq_url(dsn)).items()}
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    host = params.pop("host", "")
    port = params.pop("port", "")
    params.pop("dbname", None)
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    # A socket directory is a path: it goes in the query string, not the netloc.
    if host.startswith("/"):
        params["host"] = host
        host = ""
    netloc = f"{auth}{host}{':' + port if port and host else ''}"
    if port and not host:
        params["port"] = port
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"


# -- api ----------------------------------------------------------------------------------------


def api(env: Mapping[str, str], url: str | None = None) -> ApiSettings:
    """The API process's settings; the database is `url`, else DATABASE_URL."""
    from pgsched.app.api.config import DEFAULT_MAX_BODY_BYTES, ApiSettings  # noqa: PLC0415 - see _SECTIONS

    return ApiSettings(
        database_url=url or database_url(env),
        host=_read(env, "PGSCHED_HTTP_HOST", "127.0.0.1", text),
        port=_read(env, "PGSCHED_HTTP_PORT", 8000, port),
        max_body_bytes=_read(env, "PGSCHED_HTTP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, whole),
        pool_max_size=_read(env, "PGSCHED_API_POOL_SIZE", 10, whole),
        trusted_proxies=_optional(env, "PGSCHED_HTTP_TRUSTED_PROXIES", text),
        # 0: the API does not sample the database's gauges.
        metrics_sample_seconds=_read(env, "PGSCHED_METRICS_SAMPLE_SECONDS", 15.0, _seconds_or_0),
        schedule_defaults=schedule_defaults(env),
    )


# -- worker -------------------------------------------------------------------------------------


def worker(env: Mapping[str, str]) -> WorkerSettings:
    """A worker's settings, after checking what its jobs will read (`job_environment`)."""
    from pgsched.workers.worker import WorkerSettings  # noqa: PLC0415 - see _SECTIONS

    job_environment(env)
    job_modules(env)
    return WorkerSettings(
        queues=_read(env, "PGSCHED_QUEUES", ("default",), queue_list),
        slots=_read(env, "PGSCHED_WORKER_SLOTS", 4, slots),
        lease_seconds=_read(env, "PGSCHED_LEASE_SECONDS", 30.0, seconds),
        grace_seconds=_read(env, "PGSCHED_SHUTDOWN_GRACE_SECONDS", 30.0, _seconds_or_0),
    )


def job_modules(env: Mapping[str, str]) -> tuple[str, ...]:
    """`PGSCHED_IMPORT`: the modules `pgsched worker` and `pgsched run` import at start, so
    that the jobs they register with `@pgsched.job` are defined and their functions run
    (app.jobs; the worker's `--import` replaces it). Unset or empty: none."""
    return _optional(env, "PGSCHED_IMPORT", module_list) or ()


def job_environment(env: Mapping[str, str]) -> None:
    """What jobs read at execution time, checked at start where that costs nothing: the
    allow-list of `http` jobs parses (workers.netguard), the user of `command` jobs exists, and
    each `PGSCHED_SQL_DSN_<NAME>` parses. Secrets are only looked up when a payload names them."""
    from pgsched.workers.netguard import NetPolicy  # noqa: PLC0415 - see _SECTIONS

    NetPolicy.from_env(env.get("PGSCHED_HTTP_ALLOW"))  # AllowListError is a SettingsError
    user = _optional(env, "PGSCHED_COMMAND_USER", text)
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise SettingsError(
                f"PGSCHED_COMMAND_USER must name a user of this system, got {user!r}"
            ) from None
    for name, value in env.items():
        if name.startswith("PGSCHED_SQL_DSN_"):
            check_dsn(value, name)


# -- schedule defaults --------------------------------------------------------------------------

# As the API's bounds (app.api.schemas): a year is the longest delay or timeout, 100 attempts.
MAX_SCHEDULE_SECONDS = 366 * 86_400.0


def zone(raw: str, name: str) -> str:
    """An IANA time zone name a schedule may use (`Europe/Berlin`, `UTC`)."""
    from pgsched.app.domain.occurrences import is_known_zone  # noqa: PLC0415 - croniter, lazily

    if not is_known_zone(raw.strip()):
        raise SettingsError(f"{name} must be an IANA time zone name (Europe/Berlin), got {raw!r}")
    return raw.strip()


def factor(raw: str, name: str) -> float:
    """A retry backoff multiplier, 1..10."""
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not 1 <= value <= 10:  # NaN fails
        raise SettingsError(f"{name} must be a number 1..10, got {raw!r}")
    return value


def _attempts(raw: str, name: str) -> int:
    return whole(raw, name, 1, 100)


def _schedule_seconds(raw: str, name: str) -> float:
    return seconds(raw, name, most=MAX_SCHEDULE_SECONDS)


def _schedule_seconds_or_0(raw: str, name: str) -> float:
    return seconds(raw, name, zero=True, most=MAX_SCHEDULE_SECONDS)


_SCHEDULE_DEFAULTS: tuple[tuple[str, str, Callable[[str, str], object]], ...] = (
    ("PGSCHED_DEFAULT_TIMEZONE", "timezone", zone),
    ("PGSCHED_DEFAULT_QUEUE", "queue", text),
    ("PGSCHED_DEFAULT_MAX_ATTEMPTS", "max_attempts", _attempts),
    ("PGSCHED_DEFAULT_RETRY_DELAY_SECONDS", "retry_delay_seconds", _schedule_seconds_or_0),
    ("PGSCHED_DEFAULT_RETRY_FACTOR", "retry_factor", factor),
    ("PGSCHED_DEFAULT_TIMEOUT_SECONDS", "timeout_seconds", _schedule_seconds),
)


def schedule_defaults(env: Mapping[str, str]) -> dict[str, object]:
    """The operator's defaults for new schedules, by column, only those set: a definition that
    leaves the field out gets this value instead of the built-in one (app.domain.schedule
    DEFAULTS). Schedules that exist keep theirs (ADR 0031)."""
    return {
        column: parse(env[variable], variable)
        for variable, column, parse in _SCHEDULE_DEFAULTS
        if variable in env
    }


def apply_file(env: Mapping[str, str]) -> str | None:
    """`PGSCHED_APPLY_FILE`: a schedules file (`pgsched apply`'s) that `pgsched run` applies
    at start, as `--apply` does; it must be a readable file. Unset or empty: none."""
    return _optional(env, "PGSCHED_APPLY_FILE", readable_file)


def readable_file(raw: str, name: str) -> str:
    where = Path(raw.strip())
    if not where.is_file() or not os.access(where, os.R_OK):
        raise SettingsError(f"{name} must be a readable file, got {raw!r}")
    return str(where)


# -- retention ----------------------------------------------------------------------------------


def retention(env: Mapping[str, str]) -> Retention:
    """How far ahead partitions are kept and how long history is (app.maintenance)."""
    from pgsched.app.maintenance import Retention  # noqa: PLC0415 - see _SECTIONS

    return Retention(
        months_ahead=_read(env, "PGSCHED_MONTHS_AHEAD", 3, months),
        run_days=_read(env, "PGSCHED_RUN_RETENTION_DAYS", 30, days),
        event_days=_read(env, "PGSCHED_EVENT_RETENTION_DAYS", 90, days),
        archive_dir=_optional(env, "PGSCHED_ARCHIVE_DIR", path),
    )


# -- telemetry ----------------------------------------------------------------------------------


def metrics_port(env: Mapping[str, str]) -> int | None:
    """`PGSCHED_METRICS_PORT`: where a worker or ticker process serves /metrics (unset: nowhere;
    0: any free port, logged). The API serves /metrics on its own port regardless."""
    return _optional(env, "PGSCHED_METRICS_PORT", _port_or_0)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "INFO"
    format: str = "auto"  # text on a terminal, JSON otherwise
    # The line per run transition and per tick (loggers pgsched.runs and pgsched.ticks, see
    # otel.runs); None: PGSCHED_LOG_LEVEL's. WARNING keeps only dead, fenced and rescued runs.
    run_level: str | None = None


def logs(env: Mapping[str, str]) -> LogSettings:
    return LogSettings(
        level=_read(env, "PGSCHED_LOG_LEVEL", "INFO", log_level),
        format=_read(env, "PGSCHED_LOG_FORMAT", "auto", log_format),
        run_level=_optional(env, "PGSCHED_RUN_LOG_LEVEL", log_level),
    )


def telemetry(env: Mapping[str, str], role: str) -> TelemetryConfig:
    """What this process exports: otel.config's own parser of the OTEL_* variables (its
    TelemetryConfigError names the variable in one line, as SettingsError does)."""
    from pgsched.otel.config import TelemetryConfig, TelemetryConfigError  # noqa: PLC0415 - see _SECTIONS

    port_ = metrics_port(env)
    try:
        return TelemetryConfig.from_env(env, role, metrics_port=port_)
    except TelemetryConfigError as exc:
        raise SettingsError(str(exc)) from None
