"""Schedule dependencies: a schedule's occurrence runs after its upstreams' runs of its period.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-04

Design: docs/adr/0033-schedule-dependencies.md.

- `pgsched.schedule.depends_on` (the upstream schedules' ids) and
  `pgsched.schedule.dependency_timeout_seconds` (how long an occurrence waits for them).
  Both are nullable with no column default: a schedule stored before this migration keeps NULL,
  which is what the fold of its events says (its events never named the columns), so `verify`
  stays clean without rewriting history. NULL and an empty list both mean "no upstream"; a
  NULL timeout is the default one (app.domain.schedule.DEFAULTS). Every writer of this release
  stores both explicitly.
- Run states `blocked` (the ticker made the occurrence, its upstreams have not all succeeded
  yet; never claimed: every claim takes `waiting` runs only) and `skipped` (the wait timed
  out; terminal, the reason in `outcome`). `pgsched.run.waits_for` lists the upstream
  occurrences the run waits for ([{schedule_id, due_at}]), `pgsched.run.wait_until` when it
  stops waiting. The new state CHECK is added NOT VALID (a catalogue change under the table's
  brief ACCESS EXCLUSIVE lock) and validated after this migration's transaction commits
  (VALIDATE CONSTRAINT scans every run partition under SHARE UPDATE EXCLUSIVE: runs are
  claimed and finished meanwhile). Every existing row satisfies it (the old states are a subset).
- A schedule whose events already name `depends_on` or `dependency_timeout_seconds` (this
  migration was undone and is done again: the downgrade dropped the columns but no event can be
  dropped) gets one schedule.migrated event (actor pgsched) restating both as NULL, which is
  what its row now holds; without it `verify` would report the schedule.
- `run_blocked`: the few blocked runs, for the ticker's settle statement.
- The ticker's role (pgsched_worker) may set the two new run columns and append the three new
  run events (run.blocked, run.unblocked, run.skipped; the event guard of 0016).
"""

from __future__ import annotations

from alembic import op
from pgsched.app.db.migration_sql import execute

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

UP = """
SET LOCAL ROLE pgsched_owner;

ALTER TABLE pgsched.schedule
    ADD COLUMN depends_on bigint[],
    ADD COLUMN dependency_timeout_seconds integer CHECK (dependency_timeout_seconds > 0);

ALTER TABLE pgsched.run
    ADD COLUMN waits_for jsonb,
    ADD COLUMN wait_until timestamptz;
ALTER TABLE pgsched.run DROP CONSTRAINT run_state_check;
ALTER TABLE pgsched.run ADD CONSTRAINT run_state_check CHECK (
    state IN ('waiting', 'running', 'succeeded', 'dead', 'cancelled', 'blocked', 'skipped'))
    NOT VALID;
CREATE INDEX run_blocked ON pgsched.run (wait_until, id) WHERE state = 'blocked';

GRANT UPDATE (waits_for, wait_until) ON pgsched.run TO pgsched_worker;
INSERT INTO pgsched.event_grant (role, stream, type, kind, keys, states) VALUES
    ('pgsched_worker', 'run', 'run.blocked', 'transition',
     '{state,waits_for,wait_until}', '{blocked}'),
    ('pgsched_worker', 'run', 'run.unblocked', 'transition', '{state}', '{waiting}'),
    ('pgsched_worker', 'run', 'run.skipped', 'transition',
     '{state,finished_at,outcome}', '{skipped}');
-- An operator cancels a blocked run as a waiting one (runs.sql cancel_run): same event, same
-- columns, already granted to the API.

-- Schedules whose events name the new columns from before a downgrade: the fold would give
-- their values back, the rows hold NULL (ADR 0005: the event log is the truth).
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
SELECT now(), 'schedule', s.id, 'schedule.migrated', 'pgsched',
       jsonb_build_object('depends_on', NULL, 'dependency_timeout_seconds', NULL),
       jsonb_build_object('migration', '0022')
FROM pgsched.schedule s
WHERE EXISTS (SELECT 1 FROM pgsched.event e
              WHERE e.stream = 'schedule' AND e.stream_id = s.id
                AND (e.data ? 'depends_on' OR e.data ? 'dependency_timeout_seconds'))
ORDER BY s.id;

RESET ROLE;
"""

# Outside the migration's transaction, so that the scan does not hold ACCESS EXCLUSIVE. One
# simple query is one implicit transaction: the role is put back even if the scan fails.
VALIDATE = """
SET ROLE pgsched_owner;
ALTER TABLE pgsched.run VALIDATE CONSTRAINT run_state_check;
RESET ROLE;
"""

DOWN = """
SET LOCAL ROLE pgsched_owner;

DELETE FROM pgsched.event_grant
WHERE role = 'pgsched_worker' AND type IN ('run.blocked', 'run.unblocked', 'run.skipped');
REVOKE UPDATE (waits_for, wait_until) ON pgsched.run FROM pgsched_worker;
DROP INDEX pgsched.run_blocked;
-- Fails (on purpose: nothing is deleted) while a run is blocked or skipped.
ALTER TABLE pgsched.run DROP CONSTRAINT run_state_check;
ALTER TABLE pgsched.run ADD CONSTRAINT run_state_check CHECK (
    state IN ('waiting', 'running', 'succeeded', 'dead', 'cancelled'));
ALTER TABLE pgsched.run DROP COLUMN wait_until, DROP COLUMN waits_for;
ALTER TABLE pgsched.schedule DROP COLUMN dependency_timeout_seconds, DROP COLUMN depends_on;

RESET ROLE;
"""


def upgrade() -> None:
    execute(UP)
    with op.get_context().autocommit_block():
        execute(VALIDATE)


def downgrade() -> None:
    execute(DOWN)
