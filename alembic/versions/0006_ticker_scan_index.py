"""The ticker's scan in the order it reads: (next_due_at, id), so each batch is an index range.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

bench/ticker.py showed the old index (next_due_at alone) could not serve
`ORDER BY next_due_at, id LIMIT n`: every batch sorted all due schedules, O(n^2) per tick.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP INDEX pgsched.schedule_due;
CREATE INDEX schedule_due ON pgsched.schedule (next_due_at, id)
    WHERE enabled AND deleted_at IS NULL AND next_due_at IS NOT NULL;
RESET ROLE;
""")


def downgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP INDEX pgsched.schedule_due;
CREATE INDEX schedule_due ON pgsched.schedule (next_due_at)
    WHERE enabled AND deleted_at IS NULL AND next_due_at IS NOT NULL;
RESET ROLE;
""")
