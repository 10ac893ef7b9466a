"""The health of a pgsched installation, judged from one row of figures (the store's `health`
read): the same verdict for `GET /health` (app.api.routes.system) and `pgsched status`
(app.commands.status), so an operator's check and a load balancer's never disagree.

Pure: the caller reads the row and chooses the thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Status = Literal["healthy", "degraded", "unhealthy"]
ORDER: Final[dict[Status, int]] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True, slots=True)
class Assessment:
    """Each component's status (database, ticker, workers, partitions) and why."""

    components: dict[str, Status]
    details: dict[str, str]

    @property
    def status(self) -> Status:
        """The worst component's."""
        return max(self.components.values(), key=ORDER.__getitem__)


def assess(
    row: Mapping[str, Any], *, ticker_overdue_seconds: float, worker_stale_seconds: float
) -> Assessment:
    """Judge the figures of a database that answered (its status is healthy)."""
    details = {"database": "reachable"}
    overdue = row["overdue_seconds"]
    ticker: Status = "healthy"
    if overdue is not None and overdue > ticker_overdue_seconds:
        ticker = "degraded"
        details["ticker"] = f"an enabled schedule is {overdue:.0f} s overdue"
    else:
        details["ticker"] = "no enabled schedule is overdue"
    workers: Status = "healthy" if row["live_workers"] else "degraded"
    details["workers"] = (
        f"{row['live_workers']} live worker(s)"
        if row["live_workers"]
        else f"no worker has sent a heartbeat in {worker_stale_seconds:.0f} s"
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
    components: dict[str, Status] = {
        "database": "healthy",
        "ticker": ticker,
        "workers": workers,
        "partitions": partitions,
    }
    return Assessment(components, details)


def metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """The figures `/health` reports beside the verdict."""
    return {
        "active_schedules": row["active_schedules"],
        "pending_runs": row["pending_runs"],
        "running_runs": row["running_runs"],
        "live_workers": row["live_workers"],
        "overdue_seconds": max(0.0, row["overdue_seconds"] or 0.0),
        "partition_months_ahead": row["months_ahead"],
    }
