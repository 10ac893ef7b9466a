"""The API process's settings: database, host, port and API limits.

Parsed from the environment by app.settings (`api`), which `ApiSettings.from_env` calls; tests
build one directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pgsched.app import settings

DEFAULT_MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ApiSettings:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    # Bodies larger than this are refused with 413 before they are read, so a client cannot
    # make the server buffer an unbounded body.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    pool_min_size: int = 1
    pool_max_size: int = 10
    # How long a request waits for a pooled connection before it is a 503.
    pool_timeout_seconds: float = 5.0
    # A worker whose heartbeat is older than this is not counted as live (they beat every 10 s).
    worker_stale_seconds: float = 30.0
    # /health calls the ticker degraded when an enabled schedule is this late.
    ticker_overdue_seconds: float = 60.0
    # The SSE feed polls the event table this often and sends a comment when idle this long.
    stream_poll_seconds: float = 0.5
    stream_keepalive_seconds: float = 15.0
    # Addresses whose X-Forwarded-For uvicorn believes (None: uvicorn's default, 127.0.0.1);
    # the audit trail's source_ip is only as true as this list is tight.
    trusted_proxies: str | None = None
    # How often the API samples the database's gauges for /metrics and OTLP (0: never).
    metrics_sample_seconds: float = 15.0
    # What a new schedule gets for a field its definition leaves out, by column, instead of
    # the built-in default (PGSCHED_DEFAULT_*, app.settings.schedule_defaults, ADR 0031).
    schedule_defaults: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        """From `env` (default: this process's environment, for `create_app()` with no
        arguments under `uvicorn --factory`); app.settings parses it."""
        return settings.api(settings.environment() if env is None else env)
