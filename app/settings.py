"""Process settings, read once from the environment.

Everything that varies between deployments comes from environment variables; nothing else in the
code reads `os.environ` (secrets for jobs excepted, which the worker resolves at execution time).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from psycopg.conninfo import conninfo_to_dict


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        url = env.get("DATABASE_URL")
        if not url:
            raise SettingsError("DATABASE_URL is not set")
        return cls(
            database_url=libpq_url(url),
            http_host=env.get("PGSCHED_HTTP_HOST", "127.0.0.1"),
            http_port=_port(env, "PGSCHED_HTTP_PORT", 8000),
        )


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _port(env: dict[str, str], name: str, default: int) -> int:
    """A port to listen on, 1..65535: uvicorn does not refuse 99999 but listens on another port
    than the one asked for, and 0 would be a random port nobody is told about."""
    port = _int(env, name, default)
    if not 1 <= port <= 65535:
        raise SettingsError(f"{name} must be a port number 1..65535, got {port}")
    return port


def metrics_port(env: Mapping[str, str]) -> int | None:
    """`PGSCHED_METRICS_PORT`: where a worker or ticker process serves /metrics (unset: nowhere;
    0: any free port, logged). The API serves /metrics on its own port regardless."""
    raw = env.get("PGSCHED_METRICS_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"PGSCHED_METRICS_PORT must be a port number, got {raw!r}")
    return int(raw)


def libpq_url(url: str) -> str:
    """The URL as libpq/psycopg wants it (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def sqlalchemy_url(url: str | None = None) -> str:
    """The URL as SQLAlchemy wants it, for alembic: the psycopg 3 dialect."""
    url = libpq_url(url or os.environ.get("DATABASE_URL", ""))
    if not url:
        raise SettingsError("DATABASE_URL is not set")
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
