"""Idempotency keys for trigger-now: a retried request returns the run it already created.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
-- One row per (schedule, Idempotency-Key). The primary key is the guard: a concurrent retry
-- waits on the first insert and then finds its run. No advisory lock: a key
-- in a table is visible, survives reconnects and needs no cleanup.
CREATE TABLE pgsched.trigger_key (
    -- No foreign key: schedules are never deleted (soft delete), and `pgsched rebuild` must be
    -- able to truncate and refill the schedule projection underneath this table.
    schedule_id bigint NOT NULL,
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    run_id      bigint,
    run_due_at  timestamptz,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (schedule_id, key)
);
GRANT SELECT ON pgsched.trigger_key TO pgsched_api, pgsched_worker, pgsched_operator;
GRANT INSERT, UPDATE ON pgsched.trigger_key TO pgsched_api;
RESET ROLE;
""")


def downgrade() -> None:
    execute("DROP TABLE pgsched.trigger_key")
