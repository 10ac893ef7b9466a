"""Telemetry for pgsched's processes: set-up from the environment, and the database sampler.

`start(role, env)` is what each `pgsched` command calls first: OpenTelemetry from the standard
`OTEL_*` variables (otel.config), logs as JSON (text on a terminal), secret values masked in
logs. `sample(conn)` reads the gauges that only the database knows (queue depth, schedules,
workers, partitions ahead) into the catalogue's observable gauges; the API process runs it
every `PGSCHED_METRICS_SAMPLE_SECONDS` (app.api.app), so `pgsched run` and `pgsched api` report
them and workers do not (N workers would report the same numbers N times).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime

import psycopg

from pgsched import otel
from pgsched.app import settings
from pgsched.app.background import Died, Loop, Supervisor
from pgsched.app.clock import Clock, SystemClock
from pgsched.app.db.store import Conn, reads
from pgsched.otel.logs import configure_logging

log = logging.getLogger("pgsched.telemetry")

QUEUE_STATES = ("ready", "scheduled", "running")


def start(role: str, env: Mapping[str, str]) -> otel.Telemetry:
    """Logging and OpenTelemetry for this process, in its role (after any fork); `env` is
    parsed by app.settings (a bad value: SettingsError, before anything is set up)."""
    config = settings.telemetry(env, role)
    logs = settings.logs(env)
    configure_logging(
        config.service_name, level=logs.level, fmt=logs.format, env=env, run_level=logs.run_level
    )
    # psycopg_pool warns at every failed reconnection attempt (one a second or two per
    # connection while the database is away); app.db.outage says it once per outage instead.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        telemetry = otel.setup(config)
    except OSError as exc:  # the /metrics server could not listen (a bad host, a busy port)
        raise settings.SettingsError(
            "PGSCHED_METRICS_HOST/PGSCHED_METRICS_PORT: cannot serve /metrics on "
            f"{config.metrics_host}:{config.metrics_port} ({exc.strerror or exc})"
        ) from None
    if telemetry.metrics_port is not None:
        log.info("metrics on http://%s:%s/metrics", config.metrics_host, telemetry.metrics_port)
    return telemetry


@contextlib.contextmanager
def running(role: str, env: Mapping[str, str]) -> Iterator[otel.Telemetry]:
    """`start`, and on the way out flush and stop the exporters (what they hold is sent)."""
    telemetry = start(role, env)
    try:
        yield telemetry
    finally:
        otel.shutdown()


async def sample(conn: Conn, *, stale_seconds: float = 30.0, now: datetime | None = None) -> None:
    """One sample of the database's gauges into this process's telemetry."""
    row = await reads.telemetry_sample(conn, stale_seconds=stale_seconds, now=now)
    tel = otel.current()
    queues = row["queues"]
    tel.observe(
        "pgsched.queue.depth",
        [
            (float(q[state]), {"queue": str(q["queue"]), "state": state})
            for q in queues
            for state in QUEUE_STATES
        ],
    )
    tel.observe(
        "pgsched.queue.oldest_ready_age",
        [(float(q["oldest_ready_seconds"]), {"queue": str(q["queue"])}) for q in queues],
    )
    tel.observe(
        "pgsched.schedules",
        [
            (float(row["enabled_schedules"]), {"state": "enabled"}),
            (float(row["paused_schedules"]), {"state": "paused"}),
        ],
    )
    tel.observe(
        "pgsched.schedules.health",
        [(float(n), {"state": str(state)}) for state, n in sorted(row["schedule_health"].items())],
    )
    tel.observe("pgsched.schedules.paused_by_breaker", [(float(row["paused_by_breaker"]), {})])
    tel.observe("pgsched.schedules.overdue", [(float(row["overdue_seconds"] or 0), {})])
    tel.observe(
        "pgsched.workers",
        [
            (float(row["live_workers"]), {"state": "live"}),
            (float(row["silent_workers"]), {"state": "silent"}),
        ],
    )
    tel.observe(
        "pgsched.partitions.months_ahead",
        [(float(v), {"table": str(k)}) for k, v in sorted(row["months_ahead"].items())],
    )
    tel.observe(
        "pgsched.partitions.default_rows",
        [(float(v), {"table": str(k)}) for k, v in sorted(row["default_rows"].items())],
    )
    tel.observe("pgsched.sampler.timestamp", [(time.time(), {})])


class Sampler(Loop):
    """One sample (`connection`) every period. A failed sample is logged and retried at the next
    period: the gauges keep their last values meanwhile, and pgsched_sampler_timestamp_seconds
    shows how old they are."""

    transient = ()  # an outage is a failed sample like any other: retried a period later

    def __init__(
        self, connection: Callable[[], Awaitable[None]], every_seconds: float, clock: Clock
    ) -> None:
        super().__init__("telemetry sampler", clock, every_seconds)
        self.connection = connection

    async def run_once(self) -> None:
        try:
            await self.connection()
        except psycopg.OperationalError as exc:  # the database is away: outage logs it once
            log.debug("metrics sample failed: %s", type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - keep sampling; the database may come back
            log.warning("metrics sample failed: %s", type(exc).__name__)


async def sample_forever(
    connection: Callable[[], Awaitable[None]],
    every_seconds: float,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    on_death: Callable[[Died], None] | None = None,
) -> None:
    """Call `connection` (one sample) every `every_seconds` on `clock` until `stop`. If the
    sampler dies (a bug, not a failed sample) it is logged once with its exception, and then
    given to `on_death` (the process stops, ADR 0024) or, without one, raised as `Died`."""
    sampler = Sampler(connection, every_seconds, clock or SystemClock())
    supervisor = Supervisor(on_death=on_death)
    sampler.start(supervisor)
    try:
        await supervisor.wait(stop)
    finally:
        await supervisor.stop()
    if supervisor.failure is not None and on_death is None:
        raise supervisor.failure
