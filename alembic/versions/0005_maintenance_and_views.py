"""Partition maintenance as one SQL function, and the operator views (docs/operators.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute, execute_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Views run with the privileges of whoever queries them (security_invoker), so the read-only
# operator role sees exactly what its own grants allow.
VIEWS = """
SET LOCAL ROLE pgsched_owner;

-- Runs of the last 24 hours by job type and state.
CREATE VIEW pgsched.run_summary_24h WITH (security_invoker = true) AS
SELECT s.job_type, r.state, count(*) AS runs,
       avg(extract(epoch FROM r.finished_at - r.started_at)) AS avg_duration_seconds
FROM pgsched.run r
JOIN pgsched.schedule s ON s.id = r.schedule_id
WHERE r.created_at > now() - interval '24 hours'
GROUP BY s.job_type, r.state;

-- Failed attempts of the last 24 hours by error, from the events: every failed attempt counts,
-- not only the runs that ended dead.
CREATE VIEW pgsched.failed_attempts_24h WITH (security_invoker = true) AS
SELECT e.data -> 'outcome' ->> 'error' AS error,
       e.data -> 'outcome' ->> 'status' AS status,
       count(*) AS attempts,
       count(DISTINCT e.stream_id) AS runs,
       max(e.occurred_at) AS last_occurrence
FROM pgsched.event e
WHERE e.stream = 'run' AND e.type IN ('run.retry_scheduled', 'run.dead')
  AND e.occurred_at > now() - interval '24 hours'
GROUP BY 1, 2;

-- Runs running for more than 10 minutes.
CREATE VIEW pgsched.long_running_runs WITH (security_invoker = true) AS
SELECT r.id AS run_id, s.name AS schedule, s.job_type, r.queue, r.attempt, r.worker_id,
       r.started_at, extract(epoch FROM now() - r.started_at) AS running_seconds,
       r.lease_expires_at
FROM pgsched.run r
JOIN pgsched.schedule s ON s.id = r.schedule_id
WHERE r.state = 'running' AND r.started_at < now() - interval '10 minutes';

-- Enabled schedules whose next occurrence is more than 5 minutes overdue: the ticker is behind.
CREATE VIEW pgsched.overdue_schedules WITH (security_invoker = true) AS
SELECT s.id, s.name, s.job_type, s.kind, s.cron, s.timezone, s.next_due_at,
       extract(epoch FROM now() - s.next_due_at) AS overdue_seconds
FROM pgsched.schedule s
WHERE s.enabled AND s.deleted_at IS NULL AND s.next_due_at < now() - interval '5 minutes';

-- Enabled schedules with no run started in the last 2 hours (or never).
CREATE VIEW pgsched.quiet_schedules WITH (security_invoker = true) AS
SELECT s.id, s.name, s.job_type, s.kind, s.cron, s.next_due_at, max(r.started_at) AS last_started
FROM pgsched.schedule s
LEFT JOIN pgsched.run r ON r.schedule_id = s.id
WHERE s.enabled AND s.deleted_at IS NULL
GROUP BY s.id
HAVING max(r.started_at) IS NULL OR max(r.started_at) < now() - interval '2 hours';

-- Hourly performance over 24 hours, with the 95th percentile duration.
CREATE VIEW pgsched.hourly_performance WITH (security_invoker = true) AS
SELECT date_trunc('hour', r.started_at) AS hour, s.job_type,
       count(*) AS finished,
       count(*) FILTER (WHERE r.state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE r.state = 'dead') AS dead,
       round(100.0 * count(*) FILTER (WHERE r.state = 'succeeded') / count(*), 2)
           AS success_rate_percent,
       avg(extract(epoch FROM r.finished_at - r.started_at)) AS avg_duration_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.finished_at - r.started_at))
           AS p95_duration_seconds,
       max(extract(epoch FROM r.finished_at - r.started_at)) AS max_duration_seconds
FROM pgsched.run r
JOIN pgsched.schedule s ON s.id = r.schedule_id
WHERE r.started_at > now() - interval '24 hours' AND r.finished_at IS NOT NULL
GROUP BY 1, 2;

-- Per queue: runs claimable now, waiting for a later time, running, and the oldest claimable age.
CREATE VIEW pgsched.queue_depth WITH (security_invoker = true) AS
SELECT r.queue,
       count(*) FILTER (WHERE r.state = 'waiting' AND r.available_at <= now()) AS ready,
       count(*) FILTER (WHERE r.state = 'waiting' AND r.available_at > now()) AS scheduled,
       count(*) FILTER (WHERE r.state = 'running') AS running,
       coalesce(extract(epoch FROM now() - min(r.available_at)
                        FILTER (WHERE r.state = 'waiting' AND r.available_at <= now())), 0)
           AS oldest_ready_seconds,
       (SELECT q.max_running FROM pgsched.queue q WHERE q.name = r.queue) AS max_running
FROM pgsched.run r
WHERE r.state IN ('waiting', 'running')
GROUP BY r.queue;

-- The dead-letter state: runs whose attempts are spent; retry them with the API or CLI.
CREATE VIEW pgsched.dead_runs WITH (security_invoker = true) AS
SELECT r.id AS run_id, s.name AS schedule, s.job_type, r.queue, r.due_at, r.attempt,
       r.finished_at, r.outcome ->> 'status' AS status, r.outcome ->> 'error' AS error
FROM pgsched.run r
JOIN pgsched.schedule s ON s.id = r.schedule_id
WHERE r.state = 'dead';

-- Occurrences that did not run, and why (skip, superseded, over_cap, overlap).
CREATE VIEW pgsched.missed_occurrences WITH (security_invoker = true) AS
SELECT e.stream_id AS schedule_id, s.name AS schedule, (e.meta ->> 'due_at')::timestamptz AS due_at,
       e.meta ->> 'reason' AS reason, e.occurred_at AS recorded_at, e.actor
FROM pgsched.event e
LEFT JOIN pgsched.schedule s ON s.id = e.stream_id
WHERE e.type = 'schedule.occurrence_missed';

-- Who did what when, in the usual audit-log columns, from the event log.
CREATE VIEW pgsched.audit_log WITH (security_invoker = true) AS
SELECT e.id AS audit_id, e.actor, e.type AS action, e.stream AS resource_type,
       e.stream_id AS resource_id, e.meta -> 'old' AS old_value, e.data AS new_value,
       e.meta ->> 'source_ip' AS ip_address, e.meta ->> 'user_agent' AS user_agent,
       e.occurred_at AS created_at, e.trace_id
FROM pgsched.event e;

-- Table and partition health: sizes, dead tuples, vacuum and analyze times.
CREATE VIEW pgsched.table_health WITH (security_invoker = true) AS
SELECT c.relname AS table_name,
       CASE WHEN c.relispartition THEN (SELECT p.relname FROM pg_inherits i
                                         JOIN pg_class p ON p.oid = i.inhparent
                                         WHERE i.inhrelid = c.oid) END AS partition_of,
       pg_total_relation_size(c.oid) AS total_bytes,
       st.n_live_tup AS live_tuples, st.n_dead_tup AS dead_tuples,
       st.last_vacuum, st.last_autovacuum, st.last_analyze, st.last_autoanalyze,
       age(c.relfrozenxid) AS xid_age
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
WHERE n.nspname = 'pgsched' AND c.relkind = 'r';

GRANT SELECT ON pgsched.run_summary_24h, pgsched.failed_attempts_24h, pgsched.long_running_runs,
    pgsched.overdue_schedules, pgsched.quiet_schedules, pgsched.hourly_performance,
    pgsched.queue_depth, pgsched.dead_runs, pgsched.missed_occurrences, pgsched.audit_log,
    pgsched.table_health, pgsched.partition_horizon
    TO pgsched_operator, pgsched_api, pgsched_worker;
GRANT EXECUTE ON FUNCTION pgsched.maintain_v1(integer, interval, interval, timestamptz)
    TO pgsched_worker;
REVOKE ALL ON FUNCTION pgsched.maintain_v1(integer, interval, interval, timestamptz) FROM PUBLIC;
RESET ROLE;
"""

DROP_VIEWS = """
DROP VIEW pgsched.run_summary_24h, pgsched.failed_attempts_24h, pgsched.long_running_runs,
    pgsched.overdue_schedules, pgsched.quiet_schedules, pgsched.hourly_performance,
    pgsched.queue_depth, pgsched.dead_runs, pgsched.missed_occurrences, pgsched.audit_log,
    pgsched.table_health;
DROP FUNCTION pgsched.maintain_v1(integer, interval, interval, timestamptz);
"""


def upgrade() -> None:
    execute("SET LOCAL ROLE pgsched_owner")
    execute_file(
        "partitions/maintain_v1.sql",
        "70973b22905f4d09550b0a213682da310106fdcaefa1603b84a81dd009282c57",
    )
    execute(VIEWS)


def downgrade() -> None:
    execute(DROP_VIEWS)
