"""The store: the only code that runs SQL (ADR 0025). One module per thing it owns:

- `schedules`, `runs`, `workers`, `tokens`, `events`: the state changes of each, every one a named
  statement (app/db/queries) that writes the projection row and appends its event together, so
  a change and its event commit or roll back as one (ADR 0005);
- `ticker`, `maintenance`, `replay`: the statements of those processes;
- `dependencies`: the dependency graph and the runs blocked on their upstreams (ADR 0033);
- `health`: schedule health's evaluation and counts (ADR 0032);
- `reads`: the read-only pages and aggregates of the API and the telemetry;
- `executor`: runs a named statement and turns the database errors the schema raises on purpose
  into pgsched's (PartitionMissing, NameTaken, TokenNameTaken), in one place.

Callers own the transaction: several calls in one `async with conn.transaction()` are atomic.
Time is passed in as `now` (None = the database's now(), ADR 0003). Nothing here decides policy
(defaults, validation, next due times): that is app.domain's, applied by app.services.

The names below are the ones callers use most, re-exported so `store.claim(...)` reads as before;
the modules hold the rest.
"""

from __future__ import annotations

from pgsched.app.db.store import (
    dependencies,
    enqueue,
    events,
    executor,
    health,
    maintenance,
    reads,
    replay,
    runs,
    schedules,
    ticker,
    tokens,
    workers,
)
from pgsched.app.db.store.events import record_system_event
from pgsched.app.db.store.executor import (
    Conn,
    NameTaken,
    PartitionMissing,
    Row,
    TokenNameTaken,
    db_now,
    jsonb,
)
from pgsched.app.db.store.runs import (
    Claim,
    Lease,
    Report,
    cancel_run,
    cancelled_attempt,
    claim,
    complete_attempts,
    insert_runs,
    record_fenced,
    release_run,
    renew_leases,
    rescue_expired,
    retry_run,
    wake_workers,
)
from pgsched.app.db.store.schedules import (
    claim_trigger_key,
    create_schedule,
    get_schedule,
    record_schedule_event,
    set_trigger_key_run,
    trigger_key_run,
    update_schedule,
)
from pgsched.app.db.store.workers import (
    configure_session,
    heartbeat_worker,
    listen_for_runs,
    mark_gone_workers,
    register_worker,
    seconds_until_next_run,
    set_queue_limit,
    set_worker_state,
)

__all__ = [
    "Claim",
    "Conn",
    "Lease",
    "NameTaken",
    "PartitionMissing",
    "Report",
    "Row",
    "TokenNameTaken",
    "cancel_run",
    "cancelled_attempt",
    "claim",
    "claim_trigger_key",
    "complete_attempts",
    "configure_session",
    "create_schedule",
    "db_now",
    "dependencies",
    "enqueue",
    "events",
    "executor",
    "get_schedule",
    "health",
    "heartbeat_worker",
    "insert_runs",
    "jsonb",
    "listen_for_runs",
    "maintenance",
    "mark_gone_workers",
    "reads",
    "record_fenced",
    "record_schedule_event",
    "record_system_event",
    "register_worker",
    "release_run",
    "renew_leases",
    "replay",
    "rescue_expired",
    "retry_run",
    "runs",
    "schedules",
    "seconds_until_next_run",
    "set_queue_limit",
    "set_trigger_key_run",
    "set_worker_state",
    "ticker",
    "tokens",
    "trigger_key_run",
    "update_schedule",
    "wake_workers",
    "workers",
]
