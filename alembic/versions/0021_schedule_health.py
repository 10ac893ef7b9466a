"""Per-schedule health and the circuit breaker.

Revision ID: 0021
Revises: 0019
Create Date: 2026-12-04

Design: docs/adr/0032-schedule-health-and-circuit-breaker.md.

- `pgsched.schedule.health` (healthy, degraded, unhealthy), `health_reason` (why it is not
  healthy: consecutive_failures, failure_rate or overdue; NULL when healthy) and `health_since`
  (when it entered that state; NULL: since it was created): a projection of the
  schedule.health_changed events that app/db/queries/health.sql appends, so `pgsched verify`
  folds them like every other column.
- `health_policy` (the thresholds, a JSON object of consecutive_failures, failure_rate,
  window_runs, overdue_seconds) and `pause_after_failures` (the circuit breaker: NULL = off):
  client-settable, carried by schedule.created and schedule.updated like every column.
- Existing schedules get the default policy and `healthy`, and one schedule.migrated event each
  (actor pgsched) that says so: without it their events would fold to NULL in these columns
  and `verify` would report every one of them.
- The worker role (the reporter, the rescuer and the health sweep run as it) may set the health
  columns and, for the circuit breaker only, pause: UPDATE on those columns, and the event
  grants schedule.health_changed and schedule.paused (never resumed: only a person resumes).
  The API role (a changed policy is evaluated in the same transaction) may append
  schedule.health_changed too.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UP = """
SET LOCAL ROLE pgsched_owner;

ALTER TABLE pgsched.schedule
    ADD COLUMN health text NOT NULL DEFAULT 'healthy'
        CHECK (health IN ('healthy', 'degraded', 'unhealthy')),
    ADD COLUMN health_reason text
        CHECK (health_reason IN ('consecutive_failures', 'failure_rate', 'overdue')),
    ADD COLUMN health_since timestamptz,
    ADD COLUMN health_policy jsonb NOT NULL DEFAULT
        '{"consecutive_failures": 3, "failure_rate": 0.5, "window_runs": 20,
          "overdue_seconds": 3600}'
        CHECK (jsonb_typeof(health_policy) = 'object'),
    ADD COLUMN pause_after_failures integer CHECK (pause_after_failures >= 1),
    ADD CONSTRAINT schedule_health_reason
        CHECK ((health = 'healthy') = (health_reason IS NULL));

-- The columns above as events say them, for every schedule that exists (ADR 0005: the event
-- log is the truth, and a column its events never mention folds to NULL).
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
SELECT now(), 'schedule', s.id, 'schedule.migrated', 'pgsched',
       jsonb_build_object('health', s.health, 'health_reason', s.health_reason,
                          'health_since', s.health_since, 'health_policy', s.health_policy,
                          'pause_after_failures', s.pause_after_failures),
       jsonb_build_object('migration', '0021')
FROM pgsched.schedule s
ORDER BY s.id;

GRANT UPDATE (health, health_reason, health_since, enabled, paused_at, version, updated_at)
    ON pgsched.schedule TO pgsched_worker;

INSERT INTO pgsched.event_grant (role, stream, type, kind, keys, states) VALUES
    ('pgsched_worker', 'schedule', 'schedule.health_changed', 'transition',
     '{health,health_reason,health_since}', NULL),
    ('pgsched_worker', 'schedule', 'schedule.paused', 'transition',
     '{enabled,paused_at,version,updated_at}', NULL),
    ('pgsched_api', 'schedule', 'schedule.health_changed', 'transition',
     '{health,health_reason,health_since}', NULL);

RESET ROLE;
"""

DOWN = """
SET LOCAL ROLE pgsched_owner;

DELETE FROM pgsched.event_grant
WHERE (role, stream, type) IN (('pgsched_worker', 'schedule', 'schedule.health_changed'),
                               ('pgsched_worker', 'schedule', 'schedule.paused'),
                               ('pgsched_api', 'schedule', 'schedule.health_changed'));
REVOKE UPDATE (health, health_reason, health_since, enabled, paused_at, version, updated_at)
    ON pgsched.schedule FROM pgsched_worker;
ALTER TABLE pgsched.schedule
    DROP CONSTRAINT schedule_health_reason,
    DROP COLUMN pause_after_failures,
    DROP COLUMN health_policy,
    DROP COLUMN health_since,
    DROP COLUMN health_reason,
    DROP COLUMN health;

RESET ROLE;
"""


def upgrade() -> None:
    execute(UP)


def downgrade() -> None:
    execute(DOWN)
