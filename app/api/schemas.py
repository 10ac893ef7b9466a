"""The API's contract: msgspec structs for every request and response body.

Requests forbid unknown fields (a typo is a 422, not a silently ignored setting) and carry their
bounds, which also appear in the OpenAPI document: integers fit their PostgreSQL columns, strings
refuse NUL (PostgreSQL text cannot hold it), datetimes must carry a time zone. Responses are built
from database rows by the `*_out` functions; timestamps are RFC 3339 in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from pgsched.app.api.decoding import RANGE_TEXT
from pgsched.app.domain.schedule import DEFAULTS, HEALTH_POLICY, MAX_HEALTH_RUNS, MIN_TIMEOUT

INT32: Final = 2**31 - 1
BIGINT: Final = 2**63 - 1
NO_NUL: Final = r"^[^\x00]*$"
MAX_SECONDS: Final = 366 * 86_400  # a year: longer delays and timeouts are mistakes

Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
QueueName = Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_NUL)]
CronText = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
ZoneName = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
# The range is checked where bodies are decoded (app.api.decoding): JSON Schema cannot say it.
Instant = Annotated[datetime, Meta(tz=True, description=f"RFC 3339 with an offset, {RANGE_TEXT}.")]
Id = Annotated[int, Meta(ge=1, le=BIGINT)]
JobType = Literal["http", "command", "sql", "python", "noop"]
Kind = Literal["cron", "interval", "once", "job"]
OverlapPolicy = Literal["allow", "skip", "queue"]
MissedPolicy = Literal["skip", "latest", "all"]
# blocked: waiting for its upstreams' runs; skipped: their wait timed out (ADR 0033).
RunState = Literal["waiting", "running", "succeeded", "dead", "cancelled", "blocked", "skipped"]
WorkerState = Literal["active", "stopping", "stopped", "gone"]
Status = Literal["healthy", "degraded", "unhealthy"]
HealthReason = Literal["consecutive_failures", "failure_rate", "overdue"]

IntervalSeconds = Annotated[int, Meta(ge=1, le=INT32)]
Priority = Annotated[int, Meta(ge=-32768, le=32767)]
MaxAttempts = Annotated[int, Meta(ge=1, le=100)]
Seconds = Annotated[float, Meta(ge=0, le=MAX_SECONDS)]
Timeout = Annotated[float, Meta(ge=MIN_TIMEOUT, le=MAX_SECONDS)]
Factor = Annotated[float, Meta(ge=1, le=10)]
MissedCap = Annotated[int, Meta(ge=1, le=10_000)]
Count32 = Annotated[int, Meta(ge=0, le=INT32)]
Concurrency = Annotated[int, Meta(ge=1, le=INT32)]
RunCount = Annotated[int, Meta(ge=1, le=MAX_HEALTH_RUNS)]
Rate = Annotated[float, Meta(gt=0, le=1)]
Overdue = Annotated[float, Meta(gt=0, le=MAX_SECONDS)]
PauseAfter = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_HEALTH_RUNS,
        description="The circuit breaker: pause the schedule after this many dead runs in a "
        "row (null: never). Resuming re-arms it for the next failure (ADR 0032).",
    ),
]
# An upstream schedule: its id, or a live schedule's name (ADR 0033).
UpstreamRef = Id | Name
DependsOn = Annotated[
    list[UpstreamRef],
    Meta(
        max_length=100,
        description=(
            "Upstream schedules (ids or names): an occurrence runs only after each upstream's "
            "runs due in its period (from its due time to its next occurrence) succeeded."
        ),
    ),
]
DependencyTimeout = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_SECONDS,
        description="How long an occurrence waits for its upstreams before it is skipped.",
    ),
]
Description = Annotated[str, Meta(min_length=1, max_length=2000, pattern=NO_NUL)]
Owner = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
# Keys and values are checked by app.domain.schedule.check_labels (the problem names the key).
Labels = Annotated[
    dict[str, str],
    Meta(
        description=(
            "String labels, at most 32: keys of 1-63 letters, digits or `._/-` (starting and "
            "ending with a letter or digit), values of at most 200 characters."
        )
    ),
]
# Left out, these take the operator's default (PGSCHED_DEFAULT_*), else the built-in one shown.
_OPERATOR_DEFAULT = "Left out: the operator's default (PGSCHED_DEFAULT_*), else {}."


# -- schedules -------------------------------------------------------------------------------


class RetryBackoff(Struct, forbid_unknown_fields=True, kw_only=True):
    """Retry delay after failed attempt n: `delay_seconds * factor^(n-1)`, at most
    `max_delay_seconds`, spread by ±10 %. A field left out takes the operator's default
    (PGSCHED_DEFAULT_RETRY_*), else the built-in one (10 s, 2, 3600 s)."""

    delay_seconds: Seconds | UnsetType = UNSET
    factor: Factor | UnsetType = UNSET
    max_delay_seconds: Seconds | UnsetType = UNSET


class RetryBackoffPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    delay_seconds: Seconds | UnsetType = UNSET
    factor: Factor | UnsetType = UNSET
    max_delay_seconds: Seconds | UnsetType = UNSET


class HealthPolicy(Struct, forbid_unknown_fields=True, kw_only=True):
    """How the schedule's health is judged from its finished runs (ADR 0032): unhealthy after
    `consecutive_failures` failed runs in a row, or when an occurrence or a waiting run is more
    than `overdue_seconds` late (null: never overdue); degraded when at least `failure_rate` of
    its last `window_runs` finished runs failed. A failed run is dead, or skipped because its
    upstreams did not succeed in time; a run that succeeded on a retry is a success; cancelled
    runs do not count."""

    consecutive_failures: RunCount = HEALTH_POLICY["consecutive_failures"]
    failure_rate: Rate = HEALTH_POLICY["failure_rate"]
    window_runs: RunCount = HEALTH_POLICY["window_runs"]
    overdue_seconds: Overdue | None = HEALTH_POLICY["overdue_seconds"]


class HealthPolicyPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    consecutive_failures: RunCount | UnsetType = UNSET
    failure_rate: Rate | UnsetType = UNSET
    window_runs: RunCount | UnsetType = UNSET
    overdue_seconds: Overdue | UnsetType | None = UNSET


class ScheduleCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    """A new schedule: one of `cron`, `interval_seconds` and `run_at` says when. With none of
    them it is a job definition (kind `job`): never due, it only carries the defaults of the
    runs enqueued to it (ADR 0027)."""

    name: Name
    job_type: JobType
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    cron: CronText | None = None
    interval_seconds: IntervalSeconds | None = None
    run_at: Instant | None = None
    timezone: (
        Annotated[ZoneName, Meta(description=_OPERATOR_DEFAULT.format(DEFAULTS["timezone"]))]
        | UnsetType
    ) = UNSET
    queue: (
        Annotated[QueueName, Meta(description=_OPERATOR_DEFAULT.format(DEFAULTS["queue"]))]
        | UnsetType
    ) = UNSET
    priority: Priority = DEFAULTS["priority"]
    max_attempts: (
        Annotated[MaxAttempts, Meta(description=_OPERATOR_DEFAULT.format(DEFAULTS["max_attempts"]))]
        | UnsetType
    ) = UNSET
    retry_backoff: (
        Annotated[
            RetryBackoff,
            Meta(
                description=_OPERATOR_DEFAULT.format(
                    f"delay {DEFAULTS['retry_delay_seconds']:g} s, factor "
                    f"{DEFAULTS['retry_factor']:g}, at most "
                    f"{DEFAULTS['retry_max_delay_seconds']:g} s"
                )
            ),
        ]
        | UnsetType
    ) = UNSET
    timeout_seconds: (
        Annotated[Timeout, Meta(description=_OPERATOR_DEFAULT.format(DEFAULTS["timeout_seconds"]))]
        | UnsetType
    ) = UNSET
    overlap_policy: OverlapPolicy = DEFAULTS["overlap_policy"]
    missed_policy: MissedPolicy = DEFAULTS["missed_policy"]
    missed_cap: MissedCap = DEFAULTS["missed_cap"]
    grace_seconds: Count32 = DEFAULTS["grace_seconds"]
    max_concurrency: Concurrency | None = None
    depends_on: DependsOn = msgspec.field(default_factory=list)
    dependency_timeout_seconds: DependencyTimeout = DEFAULTS["dependency_timeout_seconds"]
    enabled: bool = True
    starts_at: Instant | None = None
    ends_at: Instant | None = None
    jitter_seconds: Count32 = DEFAULTS["jitter_seconds"]
    health_policy: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    pause_after_failures: PauseAfter | None = None

    description: Description | None = None
    owner: Owner | None = None
    labels: Labels = msgspec.field(default_factory=dict)


class ScheduleUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    """A partial update: only the fields present change. Giving the current timing field a new
    value changes it; switching kind (say, cron to interval) needs the current timing field
    cleared in the same update (`{"cron": null, "interval_seconds": 300}`), else 422 naming the
    field given (ADR 0029)."""

    name: Name | UnsetType = UNSET
    job_type: JobType | UnsetType = UNSET
    payload: dict[str, Any] | UnsetType = UNSET
    cron: CronText | UnsetType | None = UNSET
    interval_seconds: IntervalSeconds | UnsetType | None = UNSET
    run_at: Instant | UnsetType | None = UNSET
    timezone: ZoneName | UnsetType = UNSET
    queue: QueueName | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    max_attempts: MaxAttempts | UnsetType = UNSET
    retry_backoff: RetryBackoffPatch | UnsetType = UNSET
    timeout_seconds: Timeout | UnsetType = UNSET
    overlap_policy: OverlapPolicy | UnsetType = UNSET
    missed_policy: MissedPolicy | UnsetType = UNSET
    missed_cap: MissedCap | UnsetType = UNSET
    grace_seconds: Count32 | UnsetType = UNSET
    max_concurrency: Concurrency | UnsetType | None = UNSET
    depends_on: DependsOn | UnsetType = UNSET
    dependency_timeout_seconds: DependencyTimeout | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    starts_at: Instant | UnsetType | None = UNSET
    ends_at: Instant | UnsetType | None = UNSET
    jitter_seconds: Count32 | UnsetType = UNSET
    health_policy: HealthPolicyPatch | UnsetType = UNSET
    pause_after_failures: PauseAfter | UnsetType | None = UNSET
    description: Description | UnsetType | None = UNSET
    owner: Owner | UnsetType | None = UNSET
    labels: Labels | UnsetType = UNSET


class RetryBackoffOut(Struct, kw_only=True):
    delay_seconds: float
    factor: float
    max_delay_seconds: float


class HealthPolicyOut(Struct, kw_only=True):
    consecutive_failures: int
    failure_rate: float
    window_runs: int
    overdue_seconds: float | None


class Schedule(Struct, kw_only=True):
    id: int
    name: str
    job_type: str
    payload: dict[str, Any]
    kind: Kind
    cron: str | None
    interval_seconds: int | None
    run_at: datetime | None
    timezone: str
    queue: str
    priority: int
    max_attempts: int
    retry_backoff: RetryBackoffOut
    timeout_seconds: float
    overlap_policy: str
    missed_policy: str
    missed_cap: int
    grace_seconds: int
    max_concurrency: int | None
    depends_on: list[int]
    dependency_timeout_seconds: int
    enabled: bool
    paused_at: datetime | None
    starts_at: datetime | None
    ends_at: datetime | None
    jitter_seconds: int
    next_due_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int
    health: Status
    health_reason: HealthReason | None
    health_since: datetime | None
    health_policy: HealthPolicyOut
    pause_after_failures: int | None
    description: str | None
    owner: str | None
    labels: dict[str, str]
    managed_by: Annotated[
        str | None,
        Meta(description="The `pgsched apply` manager that declares it; null: made here."),
    ]


class SchedulePage(Struct, kw_only=True):
    items: list[Schedule]
    next_cursor: str | None


class BackfillRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """Occurrences due in [from, to) become runs (those not run already)."""

    from_: Instant = msgspec.field(name="from")
    to: Instant


class BackfillResult(Struct, kw_only=True):
    schedule_id: int
    requested: Annotated[int, Meta(description="Occurrences in the range.")]
    created: Annotated[list[int], Meta(description="Runs made for those without one.")]
    reason: Annotated[
        str | None, Meta(description="Why nothing was created; null when something was.")
    ]


class Preview(Struct, kw_only=True):
    schedule_id: int
    after: datetime
    due: list[datetime]


# -- runs ------------------------------------------------------------------------------------


class RunCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    """An ad-hoc run of a job definition (a schedule, usually of kind `job`), with arguments of
    its own (ADR 0027). Every field but `job` may be left out (or null): the run then takes the
    definition's value."""

    # By name, as `pgsched.Client.enqueue` names it: a name outlives a definition deleted and
    # defined again (`define_job`), which gets a new id.
    job: Annotated[Name, Meta(description="The name of a live job definition (or schedule).")]
    payload: (
        Annotated[
            dict[str, Any],
            Meta(
                description=(
                    "Merged over the definition's payload (top-level keys) and validated for "
                    "its job type; left out, the run uses the definition's payload as it is "
                    "when the run starts."
                )
            ),
        ]
        | None
    ) = None
    queue: QueueName | None = None
    priority: Priority | None = None
    run_at: Instant | None = None
    max_attempts: MaxAttempts | None = None
    timeout_seconds: Timeout | None = None


class Run(Struct, kw_only=True):
    """A run. `payload` and `timeout_seconds` are the run's own (an enqueued run's, ADR 0027);
    null means the schedule's, read when the run starts."""

    id: int
    schedule_id: int
    schedule_name: str | None
    due_at: datetime
    adhoc: bool
    origin: str
    state: RunState
    queue: str
    priority: int
    available_at: datetime
    attempt: int
    max_attempts: int
    lease_expires_at: datetime | None
    worker_id: int | None
    started_at: datetime | None
    finished_at: datetime | None
    outcome: dict[str, Any] | None
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    payload: dict[str, Any] | None
    timeout_seconds: float | None
    # A run of a schedule with upstreams: the upstream occurrences ({schedule_id, due_at}) it
    # waited for, and until when (ADR 0033); null otherwise.
    waits_for: list[dict[str, Any]] | None = None
    wait_until: datetime | None = None


class Attempt(Struct, kw_only=True):
    """One attempt, from its claim to what ended it (`result`: the event that closed it, or
    `running` while it runs)."""

    attempt: int
    worker_id: int | None
    started_at: datetime
    ended_at: datetime | None
    result: str
    outcome: dict[str, Any] | None


class RunDetail(Run, kw_only=True):
    attempts: list[Attempt]


class RunPage(Struct, kw_only=True):
    items: list[Run]
    next_cursor: str | None


# -- events ----------------------------------------------------------------------------------


class Event(Struct, kw_only=True):
    id: int
    cursor: str
    tx_id: int
    occurred_at: datetime
    stream: str
    stream_id: int | None
    type: str
    actor: str
    data: dict[str, Any]
    meta: dict[str, Any]
    trace_id: str | None


class EventPage(Struct, kw_only=True):
    items: list[Event]
    next_cursor: str | None


# -- workers, health, stats, tokens ----------------------------------------------------------


class Worker(Struct, kw_only=True):
    id: int
    name: str
    host: str
    pid: int
    version: str
    queues: list[str]
    slots: int
    state: WorkerState
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    healthy: bool
    running: int


class WorkerPage(Struct, kw_only=True):
    items: list[Worker]
    next_cursor: str | None


class HealthComponents(Struct, kw_only=True):
    database: Status
    ticker: Status
    workers: Status
    partitions: Status
    # The worst schedule's health: reported, never part of the overall status (ADR 0032).
    schedules: Status


class HealthMetrics(Struct, kw_only=True):
    active_schedules: int | None
    pending_runs: int | None
    running_runs: int | None
    live_workers: int | None
    overdue_seconds: float | None
    partition_months_ahead: int | None
    degraded_schedules: int | None
    unhealthy_schedules: int | None


class Health(Struct, kw_only=True):
    status: Status
    timestamp: datetime
    components: HealthComponents
    details: dict[str, str]
    metrics: HealthMetrics


class JobCounts(Struct, kw_only=True):
    total_schedules: int
    enabled_schedules: int
    active_jobs: int
    waiting_runs: int


class ExecutionStats(Struct, kw_only=True):
    runs_24h: int
    succeeded_24h: int
    cancelled_24h: int
    success_rate: float | None
    avg_duration: float | None
    max_duration: float | None


class ErrorStats(Struct, kw_only=True):
    """A run whose attempts are spent is `dead` (the run state, the `pgsched.dead_runs` view,
    the `dead` status of the metrics); a `failed` attempt is one that will be retried."""

    dead_runs_24h: Annotated[int, Meta(description="Runs that went dead in the last 24 hours.")]
    failed_runs_24h: Annotated[
        int,
        Meta(
            description=(
                "Deprecated alias of `dead_runs_24h` (the same number), kept for monitoring "
                "scripts that read it."
            )
        ),
    ]
    common_errors: list[str]


class Stats(Struct, kw_only=True):
    timestamp: datetime
    job_counts: JobCounts
    execution_stats: ExecutionStats
    error_stats: ErrorStats


class Token(Struct, kw_only=True):
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool


# -- rows to responses -----------------------------------------------------------------------


def schedule_out(row: Mapping[str, Any]) -> Schedule:
    fields = {k: v for k, v in row.items() if not k.startswith("retry_")}
    fields["retry_backoff"] = {
        "delay_seconds": row["retry_delay_seconds"],
        "factor": row["retry_factor"],
        "max_delay_seconds": row["retry_max_delay_seconds"],
    }
    # NULL: a schedule stored before dependencies existed (migration 0022), which has none.
    fields["depends_on"] = row.get("depends_on") or []
    fields["dependency_timeout_seconds"] = (
        row.get("dependency_timeout_seconds") or DEFAULTS["dependency_timeout_seconds"]
    )
    fields["labels"] = row["labels"] or {}  # NULL on rows older than migration 0020
    return msgspec.convert(fields, Schedule)


def run_out(row: Mapping[str, Any]) -> Run:
    return msgspec.convert(row, Run)


def worker_out(row: Mapping[str, Any]) -> Worker:
    return msgspec.convert(row, Worker)


def token_out(row: Mapping[str, Any]) -> Token:
    return msgspec.convert(row, Token)
