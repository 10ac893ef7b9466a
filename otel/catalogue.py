"""Every metric pgsched records, declared once (otel/README.md is this table in prose).

A `Metric` names the OpenTelemetry instrument (dotted, exported over OTLP) and the name the
Prometheus exposition gives it (`/metrics`, and the collector's Prometheus exporter, which
translate the same way: dots to underscores, `_seconds` for unit `s`, `_total` for counters).
Dashboards and alert rules use the Prometheus names; a test checks that each one they mention
is in this catalogue, and another that the exposition really produces these names.

Labels are closed sets or operator-configured names (queues, job types, pools): never a run
id, schedule name, path or error text, so a series count cannot grow with traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["counter", "histogram", "gauge", "observable_gauge"]

# Seconds, from 5 ms to 1 h: claims and lags are milliseconds, jobs up to the timeout.
SECONDS_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str  # the OpenTelemetry instrument name
    prometheus: str  # the exposition name (histograms add _bucket/_sum/_count)
    kind: Kind
    unit: str
    labels: tuple[str, ...]
    description: str
    # Which processes record it: "worker", "ticker", "api", "sampler" (the database sampler
    # that runs in `pgsched run` and `pgsched api`).
    source: str


METRICS: Final[tuple[Metric, ...]] = (
    Metric(
        "pgsched.jobs.processed",
        "pgsched_jobs_processed_total",
        "counter",
        "{run}",
        ("status", "queue", "job_type"),
        "Attempts a worker finished, by what became of them: succeeded, failed (retry "
        "scheduled), dead, cancelled, released (shutdown), fenced (lease lost), unreported (the "
        "report could not be written; the lease will expire).",
        "worker",
    ),
    Metric(
        "pgsched.scheduler.lag",
        "pgsched_scheduler_lag_seconds",
        "histogram",
        "s",
        ("queue",),
        "First attempt's start minus the occurrence's due time (includes a schedule's jitter).",
        "worker",
    ),
    Metric(
        "pgsched.job.duration",
        "pgsched_job_duration_seconds",
        "histogram",
        "s",
        ("queue", "job_type", "status"),
        "Execution time of one attempt, from the start of the job to its report.",
        "worker",
    ),
    Metric(
        "pgsched.claim.duration",
        "pgsched_claim_duration_seconds",
        "histogram",
        "s",
        ("result",),
        "One claim transaction (lock limits, claim, next-due lookup); result is claimed or empty.",
        "worker",
    ),
    Metric(
        "pgsched.runs.claimed",
        "pgsched_runs_claimed_total",
        "counter",
        "{run}",
        ("queue",),
        "Runs claimed by this worker.",
        "worker",
    ),
    Metric(
        "pgsched.completions.fenced",
        "pgsched_completions_fenced_total",
        "counter",
        "{run}",
        ("reason",),
        "Reports refused because the attempt no longer held its lease (reason: completion, "
        "release (shutdown), cancel (a cancel request), lease_lost), each also recorded as a "
        "run.completion_fenced event.",
        "worker",
    ),
    Metric(
        "pgsched.runs.rescued",
        "pgsched_runs_rescued_total",
        "counter",
        "{run}",
        ("result",),
        "Runs whose lease expired, put back by this process's rescuer (result: waiting, dead).",
        "worker",
    ),
    Metric(
        "pgsched.runs.dead",
        "pgsched_runs_dead_total",
        "counter",
        "{run}",
        ("queue",),
        "Runs that this process moved to dead (attempts spent, a final failure, or a rescue).",
        "worker",
    ),
    Metric(
        "pgsched.worker.heartbeat.timestamp",
        "pgsched_worker_heartbeat_timestamp_seconds",
        "gauge",
        "s",
        (),
        "Unix time of this worker's last successful heartbeat (per process: the scrape target "
        "or service.instance.id tells workers apart).",
        "worker",
    ),
    Metric(
        "pgsched.worker.inflight",
        "pgsched_worker_inflight",
        "gauge",
        "{run}",
        (),
        "Runs this worker is executing now.",
        "worker",
    ),
    Metric(
        "pgsched.runs.created",
        "pgsched_runs_created_total",
        "counter",
        "{run}",
        (),
        "Runs materialised by the ticker (on-time and catch-up occurrences).",
        "ticker",
    ),
    Metric(
        "pgsched.occurrences.missed",
        "pgsched_occurrences_missed_total",
        "counter",
        "{occurrence}",
        ("reason",),
        "Occurrences that will not run (reason late: the missed policy skipped or superseded "
        "them; overlap: the overlap policy refused them).",
        "ticker",
    ),
    Metric(
        "pgsched.runs.dependency",
        "pgsched_runs_dependency_total",
        "counter",
        "{run}",
        ("decision",),
        "Runs of schedules with upstreams, by the ticker's decision (ADR 0033): blocked (held "
        "for its upstreams), released (they all succeeded), skipped (the wait timed out).",
        "ticker",
    ),
    Metric(
        "pgsched.ticker.tick.duration",
        "pgsched_ticker_tick_duration_seconds",
        "histogram",
        "s",
        (),
        "One tick: every due schedule materialised, batch by batch.",
        "ticker",
    ),
    Metric(
        "pgsched.ticker.last_tick.timestamp",
        "pgsched_ticker_last_tick_timestamp_seconds",
        "gauge",
        "s",
        (),
        "Unix time of this ticker's last completed tick.",
        "ticker",
    ),
    Metric(
        "pgsched.db.pool.connections",
        "pgsched_db_pool_connections",
        "observable_gauge",
        "{connection}",
        ("pool", "state"),
        "Connection pool usage (pool: api, worker, service; state: used, idle, waiting = "
        "requests waiting for a connection, max = the pool's limit).",
        "api, worker, ticker",
    ),
    Metric(
        "pgsched.queue.depth",
        "pgsched_queue_depth",
        "observable_gauge",
        "{run}",
        ("queue", "state"),
        "Runs per queue: ready (waiting and claimable now), scheduled (waiting for a later "
        "time), running.",
        "sampler",
    ),
    Metric(
        "pgsched.queue.oldest_ready_age",
        "pgsched_queue_oldest_ready_age_seconds",
        "observable_gauge",
        "s",
        ("queue",),
        "How long the oldest claimable run of the queue has been waiting (0 when none).",
        "sampler",
    ),
    Metric(
        "pgsched.schedules",
        "pgsched_schedules",
        "observable_gauge",
        "{schedule}",
        ("state",),
        "Live schedules by state (enabled, paused), pgsched's built-in ones not counted.",
        "sampler",
    ),
    Metric(
        "pgsched.schedules.health",
        "pgsched_schedules_health",
        "observable_gauge",
        "{schedule}",
        ("state",),
        "Live schedules by health (healthy, degraded, unhealthy; ADR 0032), pgsched's built-in "
        "maintenance included. A count per state, never a series per schedule: GET "
        "/v1/schedules?health=unhealthy names them.",
        "sampler",
    ),
    Metric(
        "pgsched.schedules.paused_by_breaker",
        "pgsched_schedules_paused_by_breaker",
        "observable_gauge",
        "{schedule}",
        (),
        "Live schedules the circuit breaker paused and nobody has resumed since (ADR 0032).",
        "sampler",
    ),
    Metric(
        "pgsched.schedules.overdue",
        "pgsched_schedules_overdue_seconds",
        "observable_gauge",
        "s",
        (),
        "How late the most overdue enabled schedule is (0 when none): the ticker is behind.",
        "sampler",
    ),
    Metric(
        "pgsched.workers",
        "pgsched_workers",
        "observable_gauge",
        "{worker}",
        ("state",),
        "Registered workers by state (live = active or stopping with a fresh heartbeat).",
        "sampler",
    ),
    Metric(
        "pgsched.partitions.months_ahead",
        "pgsched_partitions_months_ahead",
        "observable_gauge",
        "{month}",
        ("table",),
        "Monthly partitions that exist beyond the current month (alarm below 2, ADR 0005).",
        "sampler",
    ),
    Metric(
        "pgsched.partitions.default_rows",
        "pgsched_partitions_default_rows",
        "observable_gauge",
        "{row}",
        ("table",),
        "Rows (statistics estimate) in a DEFAULT partition of run or event; pgsched creates "
        "none, so anything but 0 is an alarm.",
        "sampler",
    ),
    Metric(
        "pgsched.sampler.timestamp",
        "pgsched_sampler_timestamp_seconds",
        "observable_gauge",
        "s",
        (),
        "Unix time of the last successful database sample (the gauges above are that old).",
        "sampler",
    ),
)

BY_NAME: Final = {m.name: m for m in METRICS}


def prometheus_names() -> frozenset[str]:
    """Every series name the exposition may contain for the catalogue's metrics."""
    names: set[str] = set()
    for m in METRICS:
        names.add(m.prometheus)
        if m.kind == "histogram":
            names.update(f"{m.prometheus}_{s}" for s in ("bucket", "sum", "count"))
    return frozenset(names)
