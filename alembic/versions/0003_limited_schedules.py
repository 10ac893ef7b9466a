"""Index the schedules whose runs the claim must gate (max_concurrency, overlap 'queue').

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
-- The claim visits these on every call; with none defined the scan is empty and free.
CREATE INDEX schedule_limited ON pgsched.schedule (id)
    WHERE deleted_at IS NULL AND (max_concurrency IS NOT NULL OR overlap_policy = 'queue');
RESET ROLE;
""")


def downgrade() -> None:
    execute("DROP INDEX pgsched.schedule_limited")
