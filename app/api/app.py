"""The Litestar application: routes, the connection pool, auth, problem details, OpenAPI, metrics.

`create_app()` with no arguments reads the environment (`pgsched api` and `uvicorn --factory`
call it so); tests pass `ApiSettings` and a clock. Decisions: docs/adr/0014-rest-api.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Tag
from psycopg_pool import AsyncConnectionPool

from pgsched import otel
from pgsched.app.api.auth import authorize
from pgsched.app.api.common import strict_path_ids
from pgsched.app.api.config import ApiSettings
from pgsched.app.api.decoding import ApiRequest
from pgsched.app.api.metrics import MetricsController, prometheus_config
from pgsched.app.api.openapi import OpenAPIJson, correct_allow
from pgsched.app.api.problems import EXCEPTION_HANDLERS
from pgsched.app.api.routes import events, runs, schedules, system
from pgsched.app.api.tracing import opentelemetry_plugin
from pgsched.app.clock import Clock, SystemClock
from pgsched.app.db import outage
from pgsched.app.db.store import Conn, reads
from pgsched.app.telemetry import sample, sample_forever
from pgsched.app.ui import router as console_router
from pgsched.app.ui import template_config as console_templates

log = logging.getLogger("pgsched.api")

API_VERSION = "1"


async def _configure(conn: Conn) -> None:
    await reads.configure_api_session(conn)


@asynccontextmanager
async def _pool(app: Litestar) -> AsyncIterator[None]:
    settings: ApiSettings = app.state.settings
    # Autocommit connections (callers own their transactions, `async with conn.transaction()`,
    # as the store expects; a read is one statement and needs none), each checked before it is
    # handed out: after a database restart the idle ones are all dead (ADR 0022).
    pool = outage.pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        configure=_configure,
        name="api",
    )
    # Not open(wait=True): psycopg_pool closes a pool whose wait times out, for good. Started
    # while the database is down, the API serves anyway: /health says so, requests answer 503,
    # and the pool reconnects in the background (app.db.outage logs the outage once).
    await pool.open(wait=False)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


@asynccontextmanager
async def _telemetry(app: Litestar) -> AsyncIterator[None]:
    """Pool gauges, and the database sampler (queue depth, schedules, partitions: app.telemetry)."""
    settings: ApiSettings = app.state.settings
    pool: AsyncConnectionPool[Conn] = app.state.pool
    otel.current().watch_pool("api", pool)
    if not settings.metrics_sample_seconds:
        yield
        return

    async def once() -> None:
        async with pool.connection(timeout=settings.pool_timeout_seconds) as conn:
            await sample(conn, stale_seconds=settings.worker_stale_seconds)

    stop = asyncio.Event()
    # Whoever serves the app may ask to hear of the sampler's death (ADR 0024, app.cli).
    on_death = app.state.get("on_background_death")
    task = asyncio.create_task(
        sample_forever(once, settings.metrics_sample_seconds, stop, on_death=on_death)
    )
    try:
        yield
    finally:
        stop.set()
        await task


async def _provide_conn(state: State) -> AsyncIterator[Conn]:
    """One pooled connection per request, returned to the pool when the response is done."""
    async with state.pool.connection() as conn:
        yield conn


def create_app(settings: ApiSettings | None = None, clock: Clock | None = None) -> Litestar:
    settings = settings or ApiSettings.from_env()
    v1 = Router(
        path="/v1",
        route_handlers=[*schedules.ROUTES, *runs.ROUTES, *events.ROUTES, *system.V1_ROUTES],
    )
    openapi = OpenAPIConfig(
        title="pgsched",
        version=API_VERSION,
        description=(
            "A job scheduler on PostgreSQL whose every state change is an event. "
            "Authenticate with `Authorization: Bearer pgs_…` (pgsched token create)."
        ),
        render_plugins=[OpenAPIJson()],  # tidied: app.api.openapi
        use_handler_docstrings=True,
        # The schema documents every route: readable with any valid token (default deny).
        openapi_router=Router(
            path="/schema", route_handlers=[], opt={"role": "viewer"}, include_in_schema=False
        ),
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", bearer_format="pgs_ token", description=None
                )
            }
        ),
        security=[{"bearer": []}],
        tags=[
            Tag(name="schedules"),
            Tag(name="runs"),
            Tag(name="events"),
            Tag(name="workers"),
            Tag(name="system"),
            Tag(name="tokens"),
        ],
    )
    return Litestar(
        # The operator console at /ui/ (ADR 0030): its own cookie session, the same services.
        # The interactive API reference is one of its pages (/ui/api), not a public route.
        route_handlers=[v1, *system.ROOT_ROUTES, MetricsController, console_router()],
        template_config=console_templates(),
        lifespan=[_pool, _telemetry],
        dependencies={"conn": Provide(_provide_conn)},
        # Authorisation first: a caller without a token learns nothing about input rules.
        guards=[authorize, strict_path_ids],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[prometheus_config().middleware],
        plugins=[opentelemetry_plugin()],
        openapi_config=openapi,
        request_max_body_size=settings.max_body_bytes,
        # Bodies are bounded and strictly typed before any handler sees them (app.api.decoding).
        request_class=ApiRequest,
        before_send=[correct_allow],
        state=State({"settings": settings, "clock": clock or SystemClock()}),
        debug=False,
        # Logging is the process's business (`pgsched api` configures it), not the app's: a
        # library that reconfigures the root logger on import breaks its host's handlers.
        logging_config=None,
    )
