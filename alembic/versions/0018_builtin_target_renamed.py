"""The built-in maintenance job's python target follows the package: pgsched.app.maintenance.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04

pgsched installs as one package, `pgsched` (ADR 0023), so the module that was importable as
`app.maintenance` is now `pgsched.app.maintenance`. The built-in schedule names its job by that
import path, and `pgsched.install_builtin_maintenance_v1` (0016) accepts only that path:
- the function's one accepted target is rewritten in place (same signature, owner and grants);
- the stored built-in schedule is brought up to date through the function itself, which records
  `schedule.updated` with the old payload, like any other change of the schedule.
Runs already queued with the old target are run under the new one by the worker (its python job
type knows the rename). The downgrade puts back the old target the same two ways.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

OLD = "app.maintenance:run_builtin"
NEW = "pgsched.app.maintenance:run_builtin"

# {old} and {new} are the two constants above, never input.
RETARGET = """
SET LOCAL ROLE pgsched_owner;

-- The function's definition with its one accepted target swapped: CREATE OR REPLACE keeps its
-- owner, its SECURITY DEFINER and its grants.
DO $do$
DECLARE
    definition text := pg_get_functiondef(
        'pgsched.install_builtin_maintenance_v1(jsonb, timestamptz)'::regprocedure);
BEGIN
    IF strpos(definition, quote_literal('{old}')) = 0 THEN
        RAISE EXCEPTION 'install_builtin_maintenance_v1 does not accept {old}';
    END IF;
    EXECUTE replace(definition, quote_literal('{old}'), quote_literal('{new}'));
END
$do$;

-- The stored schedule, if it still names the old target: same kwargs, timeout and timing, new
-- target (cron and next_due_at are passed as they are, so an operator's minute stays).
SELECT pgsched.install_builtin_maintenance_v1(jsonb_build_object(
    'name', s.name,
    'job_type', s.job_type,
    'payload', jsonb_set(s.payload, '{{target}}', to_jsonb('{new}'::text)),
    'timeout_seconds', s.timeout_seconds,
    'cron', s.cron,
    'next_due_at', s.next_due_at))
FROM pgsched.schedule s
WHERE s.name = 'pgsched.maintenance' AND s.deleted_at IS NULL AND s.job_type = 'python'
  AND s.payload ->> 'target' = '{old}';

RESET ROLE;
"""


def upgrade() -> None:
    execute(RETARGET.format(old=OLD, new=NEW))


def downgrade() -> None:
    execute(RETARGET.format(old=NEW, new=OLD))
