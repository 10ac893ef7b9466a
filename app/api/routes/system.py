"""The system's own state: /health (public), /stats, /v1/workers (viewer), /v1/tokens (admin)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import psycopg
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from psycopg_pool import PoolTimeout

from pgsched.app.api import cursors
from pgsched.app.api.common import (
    ADMIN,
    DEFAULT_PAGE,
    PUBLIC,
    VIEWER,
    Cursor,
    Limit,
    clock_now,
    page_size,
)
from pgsched.app.api.config import ApiSettings
from pgsched.app.api.problems import responses
from pgsched.app.api.schemas import (
    ErrorStats,
    ExecutionStats,
    Health,
    HealthComponents,
    HealthMetrics,
    JobCounts,
    Stats,
    Status,
    Token,
    WorkerPage,
    WorkerState,
    token_out,
    worker_out,
)
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.services import tokens

log = logging.getLogger("pgsched.api")

_HEALTH_TIMEOUT: Final = 3.0
_ORDER: Final[dict[Status, int]] = {"healthy": 0, "degraded": 1, "unhealthy": 2}
STATS_HOURS: Final = 24


def _components(row: Row, settings: ApiSettings) -> tuple[HealthComponents, dict[str, str]]:
    details = {"database": "reachable"}
    overdue = row["overdue_seconds"]
    ticker: Status = "healthy"
    if overdue is not None and overdue > settings.ticker_overdue_seconds:
        ticker = "degraded"
        details["ticker"] = f"an enabled schedule is {overdue:.0f} s overdue"
    else:
        details["ticker"] = "no enabled schedule is overdue"
    workers: Status = "healthy" if row["live_workers"] else "degraded"
    details["workers"] = (
        f"{row['live_workers']} live worker(s)"
        if row["live_workers"]
        else f"no worker has sent a heartbeat in {settings.worker_stale_seconds:.0f} s"
    )
    ahead = row["months_ahead"]
    partitions: Status = "healthy"
    if not ahead:
        partitions = "unhealthy"
    elif row["partition_alarm"] or row["default_partition_rows"]:
        partitions = "degraded"
    details["partitions"] = f"{ahead or 0} month(s) of partitions ahead"
    if row["default_partition_rows"]:
        details["partitions"] += (
            f"; rows in a DEFAULT partition: {row['default_partition_rows']}"
            " (they block creating their month's partition: docs/runbook.md)"
        )
    components = HealthComponents(
        database="healthy", ticker=ticker, workers=workers, partitions=partitions
    )
    return components, details


@get(
    "/health",
    operation_id="getHealth",
    summary="Health of the scheduler's components",
    tags=["system"],
    opt=PUBLIC,
    security=[{}],
    responses={
        503: ResponseSpec(Health, description="At least one component is unhealthy"),
        **{k: v for k, v in responses(public=True).items() if k != 503},
    },
)
async def health(request: Request[Any, Any, Any]) -> Response[Health]:
    """Open (no token). Each component is healthy, degraded or unhealthy; the overall status is
    the worst of them, and the HTTP status is 503 when that is unhealthy. One query, through
    indexes only."""
    state = request.app.state
    settings: ApiSettings = state.settings
    try:
        async with asyncio.timeout(_HEALTH_TIMEOUT):
            async with state.pool.connection(timeout=_HEALTH_TIMEOUT) as conn:
                row = await reads.health(
                    conn, stale_seconds=settings.worker_stale_seconds, now=clock_now(request)
                )
    except (TimeoutError, PoolTimeout, psycopg.Error) as exc:
        log.warning("health: database unreachable: %s", exc)
        down: Status = "unhealthy"
        body = Health(
            status=down,
            timestamp=datetime.now(UTC),  # the database, whose clock decides, is away
            components=HealthComponents(database=down, ticker=down, workers=down, partitions=down),
            details={"database": "unreachable; the other components cannot be assessed"},
            metrics=HealthMetrics(
                active_schedules=None,
                pending_runs=None,
                running_runs=None,
                live_workers=None,
                overdue_seconds=None,
                partition_months_ahead=None,
            ),
        )
        return Response(body, status_code=503)
    components, details = _components(row, settings)
    worst = max(
        (components.database, components.ticker, components.workers, components.partitions),
        key=_ORDER.__getitem__,
    )
    body = Health(
        status=worst,
        timestamp=row["now"],
        components=components,
        details=details,
        metrics=HealthMetrics(
            active_schedules=row["active_schedules"],
            pending_runs=row["pending_runs"],
            running_runs=row["running_runs"],
            live_workers=row["live_workers"],
            overdue_seconds=max(0.0, row["overdue_seconds"] or 0.0),
            partition_months_ahead=row["months_ahead"],
        ),
    )
    return Response(body, status_code=503 if worst == "unhealthy" else 200)


@get(
    "/stats",
    operation_id="getStats",
    summary="Schedule counts and the last 24 hours of runs",
    tags=["system"],
    opt=VIEWER,
    responses=responses(),
)
async def stats(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> Stats:
    """`runs_24h` counts runs that finished (succeeded, dead or cancelled) in the last 24 hours;
    `success_rate` is succeeded / (succeeded + dead), null without any; durations are seconds of
    the final attempt; `common_errors` are the most frequent errors of runs that went dead, as
    "message: count"; `active_jobs` is the runs running now."""
    now = clock_now(request)
    row = await reads.stats(conn, hours=STATS_HOURS, now=now)
    errors = await reads.common_errors(conn, hours=STATS_HOURS, limit=5, now=now)
    judged = row["succeeded_runs"] + row["dead_runs"]
    return Stats(
        timestamp=row["now"],
        job_counts=JobCounts(
            total_schedules=row["total_schedules"],
            enabled_schedules=row["enabled_schedules"],
            active_jobs=row["running_runs"],
            waiting_runs=row["waiting_runs"],
        ),
        execution_stats=ExecutionStats(
            runs_24h=row["finished_runs"],
            succeeded_24h=row["succeeded_runs"],
            cancelled_24h=row["cancelled_runs"],
            success_rate=round(row["succeeded_runs"] / judged, 4) if judged else None,
            avg_duration=_seconds(row["avg_duration"]),
            max_duration=_seconds(row["max_duration"]),
        ),
        error_stats=ErrorStats(
            failed_runs_24h=row["dead_runs"],
            common_errors=[f"{e['error']}: {e['count']}" for e in errors],
        ),
    )


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@get(
    "/workers",
    operation_id="listWorkers",
    summary="The worker registry",
    tags=["workers"],
    opt=VIEWER,
    responses=responses(),
)
async def list_workers(
    request: Request[Any, Any, Any],
    conn: NamedDependency[Conn],
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    states: Annotated[
        list[WorkerState] | None,
        QueryParameter(
            name="state", required=False, description="Registry states to include (repeatable)."
        ),
    ] = None,
) -> WorkerPage:
    """Newest first. `healthy`: active or draining with a heartbeat in the last 30 s (by the
    database clock); `running`: the runs it holds now."""
    settings: ApiSettings = request.app.state.settings
    size = page_size(limit)
    rows = await reads.page_workers(
        conn,
        limit=size + 1,
        stale_seconds=settings.worker_stale_seconds,
        now=clock_now(request),
        before_id=cursors.decode_id(cursor) if cursor else None,
        states=states,
    )
    more = len(rows) > size
    rows = rows[:size]
    return WorkerPage(
        items=[worker_out(r) for r in rows],
        next_cursor=cursors.encode(rows[-1]["id"]) if more else None,
    )


@get(
    "/tokens",
    operation_id="listTokens",
    summary="API tokens (metadata only)",
    tags=["tokens"],
    opt=ADMIN,
    responses=responses(),
)
async def list_tokens(request: Request[Any, Any, Any], conn: NamedDependency[Conn]) -> list[Token]:
    """Names, roles and display prefixes; never a token or its hash. Tokens are created and
    revoked with `pgsched token create|revoke`."""
    return [token_out(r) for r in await tokens.list_tokens(conn, now=clock_now(request))]


V1_ROUTES = [list_workers, list_tokens]
ROOT_ROUTES = [health, stats]
