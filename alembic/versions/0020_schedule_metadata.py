"""What a schedule is for and who keeps it: description, owner, labels, and its manager.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-04

ADR 0031 (schedules as code):
- `description`, `owner`: free text a person reads (who to call when it fails, what it feeds).
- `labels`: a JSON object of string values (`{"team": "data", "tier": "1"}`), filtered with
  containment (`labels @> '{"team": "data"}'`, GIN index `schedule_labels`).
- `managed_by`: the `pgsched apply` file (its manager name) that declares the schedule; NULL for
  a schedule made over the API. `apply --prune` deletes only schedules of its own manager.

Every writer stores every column (app.domain.schedule.complete), and schedule events carry them
like any column, so replay folds them. Rows that exist before this migration keep NULL in all
four: their events do not mention the columns, so the fold of those events (NULL) and the row
agree and `pgsched verify` stays clean. The default `'{}'` for labels is set after the column is
added, so it applies only to rows inserted by hand from now on, not to the existing ones.

A schedule whose events already name one of the four (this migration was undone and is done
again: the downgrade dropped the columns but no event can be dropped) gets one
schedule.migrated event (actor pgsched) restating all four as NULL, which is what its row now
holds; without it `verify` would report the schedule. A first upgrade appends none.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

UP = r"""
SET LOCAL ROLE pgsched_owner;

ALTER TABLE pgsched.schedule
    ADD COLUMN description text CHECK (length(description) <= 2000),
    ADD COLUMN owner text CHECK (length(owner) BETWEEN 1 AND 200),
    ADD COLUMN labels jsonb CHECK (
        jsonb_typeof(labels) = 'object'
        AND NOT jsonb_path_exists(labels, '$.* ? (@.type() != "string")')),
    ADD COLUMN managed_by text CHECK (length(managed_by) BETWEEN 1 AND 200);
ALTER TABLE pgsched.schedule ALTER COLUMN labels SET DEFAULT '{}';
COMMENT ON COLUMN pgsched.schedule.labels IS
    'string labels, filtered by containment (ADR 0031); NULL on rows older than migration 0020';
COMMENT ON COLUMN pgsched.schedule.managed_by IS
    'the pgsched apply manager that declares this schedule (NULL: made over the API, ADR 0031)';

CREATE INDEX schedule_labels ON pgsched.schedule USING gin (labels jsonb_path_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX schedule_managed_by ON pgsched.schedule (managed_by)
    WHERE deleted_at IS NULL AND managed_by IS NOT NULL;

-- Schedules whose events name the new columns from before a downgrade: the fold would give
-- their values back, the rows hold NULL (ADR 0005: the event log is the truth).
INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data, meta)
SELECT now(), 'schedule', s.id, 'schedule.migrated', 'pgsched',
       jsonb_build_object('description', NULL, 'owner', NULL, 'labels', NULL,
                          'managed_by', NULL),
       jsonb_build_object('migration', '0020')
FROM pgsched.schedule s
WHERE EXISTS (SELECT 1 FROM pgsched.event e
              WHERE e.stream = 'schedule' AND e.stream_id = s.id
                AND e.data ?| ARRAY['description', 'owner', 'labels', 'managed_by'])
ORDER BY s.id;

RESET ROLE;
"""

DOWN = """
SET LOCAL ROLE pgsched_owner;
DROP INDEX pgsched.schedule_managed_by;
DROP INDEX pgsched.schedule_labels;
ALTER TABLE pgsched.schedule
    DROP COLUMN managed_by, DROP COLUMN labels, DROP COLUMN owner, DROP COLUMN description;
RESET ROLE;
"""


def upgrade() -> None:
    execute(UP)


def downgrade() -> None:
    execute(DOWN)
