"""Drop run_by_schedule: run_occurrence (schedule_id, due_at, adhoc) already serves its reads.

Revision ID: 0010
Revises: 0006
Create Date: 2026-11-23

Both indexes lead with (schedule_id, due_at); a btree scans either way, so "this schedule's runs,
newest first" reads run_occurrence backwards. The copy cost every run insert an index entry:
about 7 ms of each 5,000-run ticker batch (bench/README.md, "Ticker, grouped").
"""

from __future__ import annotations

from app.db.migration_sql import execute

revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP INDEX pgsched.run_by_schedule;
RESET ROLE;
""")


def downgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
CREATE INDEX run_by_schedule ON pgsched.run (schedule_id, due_at DESC);
RESET ROLE;
""")
