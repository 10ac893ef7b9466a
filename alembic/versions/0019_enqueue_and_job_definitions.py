"""Runs with arguments of their own, ad-hoc runs that never collide, and job definitions.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04

ADR 0027 (enqueue and job definitions):
- `pgsched.run.payload` and `pgsched.run.timeout_seconds`: per-run overrides of the schedule's
  (NULL = the schedule's, read at claim time as before, ADR 0004). An enqueued run with its own
  arguments stores the definition's payload merged with them.
- Occurrences are unique, ad-hoc runs are not: the stored generated column `occurrence` (true
  for an occurrence, NULL for an ad-hoc run) replaces `adhoc` in the unique constraint
  `run_occurrence`; NULLs are distinct, so any number of ad-hoc runs of one schedule may share
  an instant (one transaction's `now()`), while `ON CONFLICT (schedule_id, due_at, occurrence)`
  still makes a repeated materialisation a no-op. The index keeps every run, ad-hoc ones
  included, so it still serves "this schedule's runs, newest first" (0010).
- `run_by_key`: a run found by (schedule_id, idempotency_key), for an enqueue repeated with the
  same key.
- origin `enqueue`; schedule kind `job`: a job definition with no timing and no next due time,
  which the ticker never sees (its scan needs next_due_at).
- `pgsched_worker` may take idempotency keys (python jobs run as it and may enqueue).
run.created already carries any key for both roles that create runs (event_grant keys NULL,
0016), so the guard needs no new row.

**It rewrites every run partition.** A stored generated column makes PostgreSQL rewrite each
partition of `pgsched.run`, and the unique index `run_occurrence` is built again, under ACCESS
EXCLUSIVE on the run table: claims, the ticker and enqueues wait until it is done, for about as
long as copying the kept runs takes (seconds per million rows on ordinary disks). Upgrade in a
quiet moment; docs/runbook.md, "Upgrading", says so.

The downgrade puts back what 0018 left; it fails (on purpose, nothing is deleted) while job
definitions, enqueued runs or ad-hoc runs sharing an instant exist.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UP = """
SET LOCAL ROLE pgsched_owner;

ALTER TABLE pgsched.run
    ADD COLUMN payload jsonb,
    ADD COLUMN timeout_seconds double precision CHECK (timeout_seconds > 0),
    ADD COLUMN occurrence boolean GENERATED ALWAYS AS (CASE WHEN NOT adhoc THEN true END) STORED;
ALTER TABLE pgsched.run DROP CONSTRAINT run_occurrence;
ALTER TABLE pgsched.run ADD CONSTRAINT run_occurrence UNIQUE (schedule_id, due_at, occurrence);
ALTER TABLE pgsched.run DROP CONSTRAINT run_origin_check;
ALTER TABLE pgsched.run ADD CONSTRAINT run_origin_check
    CHECK (origin IN ('schedule', 'catchup', 'backfill', 'trigger', 'enqueue'));
CREATE INDEX run_by_key ON pgsched.run (schedule_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE pgsched.schedule DROP CONSTRAINT schedule_kind_check;
ALTER TABLE pgsched.schedule ADD CONSTRAINT schedule_kind_check
    CHECK (kind IN ('cron', 'interval', 'once', 'job'));
ALTER TABLE pgsched.schedule DROP CONSTRAINT schedule_one_timing;
ALTER TABLE pgsched.schedule ADD CONSTRAINT schedule_one_timing CHECK (
    (kind = 'cron' AND cron IS NOT NULL AND interval_seconds IS NULL AND run_at IS NULL)
 OR (kind = 'interval' AND interval_seconds IS NOT NULL AND cron IS NULL AND run_at IS NULL)
 OR (kind = 'once' AND run_at IS NOT NULL AND cron IS NULL AND interval_seconds IS NULL)
 OR (kind = 'job' AND cron IS NULL AND interval_seconds IS NULL AND run_at IS NULL
     AND next_due_at IS NULL));

GRANT INSERT ON pgsched.trigger_key TO pgsched_worker;

RESET ROLE;
"""

DOWN = """
SET LOCAL ROLE pgsched_owner;

REVOKE INSERT ON pgsched.trigger_key FROM pgsched_worker;

ALTER TABLE pgsched.schedule DROP CONSTRAINT schedule_one_timing;
ALTER TABLE pgsched.schedule ADD CONSTRAINT schedule_one_timing CHECK (
    (kind = 'cron' AND cron IS NOT NULL AND interval_seconds IS NULL AND run_at IS NULL)
 OR (kind = 'interval' AND interval_seconds IS NOT NULL AND cron IS NULL AND run_at IS NULL)
 OR (kind = 'once' AND run_at IS NOT NULL AND cron IS NULL AND interval_seconds IS NULL));
ALTER TABLE pgsched.schedule DROP CONSTRAINT schedule_kind_check;
ALTER TABLE pgsched.schedule ADD CONSTRAINT schedule_kind_check
    CHECK (kind IN ('cron', 'interval', 'once'));

DROP INDEX pgsched.run_by_key;
ALTER TABLE pgsched.run DROP CONSTRAINT run_origin_check;
ALTER TABLE pgsched.run ADD CONSTRAINT run_origin_check
    CHECK (origin IN ('schedule', 'catchup', 'backfill', 'trigger'));
ALTER TABLE pgsched.run DROP CONSTRAINT run_occurrence;
ALTER TABLE pgsched.run ADD CONSTRAINT run_occurrence UNIQUE (schedule_id, due_at, adhoc);
ALTER TABLE pgsched.run DROP COLUMN occurrence, DROP COLUMN timeout_seconds, DROP COLUMN payload;

RESET ROLE;
"""


def upgrade() -> None:
    execute(UP)


def downgrade() -> None:
    execute(DOWN)
