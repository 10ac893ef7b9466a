"""Per-schedule health and the circuit breaker.

Revision ID: 0021
Revises: 0020
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
  A column grant cannot say which value, so the trigger schedule_pause_guard lets a role that
  is neither the API nor the owner change enabled, paused_at, version or updated_at only by
  pausing an enabled live schedule (enabled to false, paused_at set, version + 1): it can
  neither resume a schedule nor bump a version. The API role (a changed policy is evaluated
  in the same transaction) may append schedule.health_changed too.
- Indexes for the evaluation and /health: each schedule's outcomes (succeeded, dead and
  skipped runs, `skipped` being the state migration 0022 adds) and its successes, newest
  occurrence first, so that a schedule that never succeeds is not read run by run across
  every partition; and the schedules that are not healthy. The run ones are built on every
  partition of pgsched.run under a SHARE lock (writes to runs wait while they build; reads
  do not), see docs/runbook.md.
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

-- The worker's grant on enabled, paused_at, version and updated_at is for the circuit
-- breaker's pause only (app/db/queries/health.sql); this says so for the values. The owner
-- (and its SECURITY DEFINER functions) and the API, whose routes pause, resume and edit, pass.
CREATE FUNCTION pgsched.schedule_pause_guard_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    IF current_setting('is_superuser') = 'on'
       OR pg_has_role(current_user, 'pgsched_owner', 'USAGE')
       OR pg_has_role(current_user, 'pgsched_api', 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF OLD.enabled AND NOT NEW.enabled AND NEW.paused_at IS NOT NULL
       AND NEW.version = OLD.version + 1 AND OLD.deleted_at IS NULL THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% may change enabled, paused_at, version or updated_at of schedule % only '
                    'to pause it', current_user, OLD.id
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'only the circuit breaker pauses as this role; only a person resumes '
                     '(ADR 0032)';
END
$$;
CREATE TRIGGER schedule_pause_guard BEFORE UPDATE ON pgsched.schedule
    FOR EACH ROW
    WHEN (OLD.enabled IS DISTINCT FROM NEW.enabled OR OLD.paused_at IS DISTINCT FROM NEW.paused_at
          OR OLD.version IS DISTINCT FROM NEW.version
          OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION pgsched.schedule_pause_guard_v1();

-- The evaluation's reads (app/db/queries/health.sql): a schedule's outcomes and its newest
-- success, newest occurrence first, without reading its other runs.
CREATE INDEX run_outcome_by_schedule ON pgsched.run (schedule_id, due_at DESC, id DESC)
    WHERE state IN ('succeeded', 'dead', 'skipped');
CREATE INDEX run_success_by_schedule ON pgsched.run (schedule_id, due_at DESC, id DESC)
    WHERE state = 'succeeded';
-- /health's counts of degraded and unhealthy schedules, and the worst of them.
CREATE INDEX schedule_not_healthy ON pgsched.schedule (health, id)
    WHERE health <> 'healthy' AND deleted_at IS NULL;

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
DROP INDEX pgsched.schedule_not_healthy;
DROP INDEX pgsched.run_success_by_schedule;
DROP INDEX pgsched.run_outcome_by_schedule;
DROP TRIGGER schedule_pause_guard ON pgsched.schedule;
DROP FUNCTION pgsched.schedule_pause_guard_v1();
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
