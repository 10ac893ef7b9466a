"""Queues with a global concurrency limit ("max parallel jobs" per queue).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
-- Only queues with settings have a row; a queue without one is unlimited. The claim locks a
-- limited queue's row while it counts the queue's running runs (ADR 0004).
CREATE TABLE pgsched.queue (
    name        text PRIMARY KEY CHECK (name <> ''),
    max_running integer CHECK (max_running >= 1),
    updated_at  timestamptz NOT NULL
);
GRANT SELECT ON pgsched.queue TO pgsched_api, pgsched_worker, pgsched_operator;
GRANT INSERT, UPDATE, DELETE ON pgsched.queue TO pgsched_api;
-- Claimers lock limited queues FOR NO KEY UPDATE, which needs UPDATE privilege.
GRANT UPDATE ON pgsched.queue TO pgsched_worker;
CREATE INDEX run_running_by_queue ON pgsched.run (queue) WHERE state = 'running';
RESET ROLE;
""")


def downgrade() -> None:
    execute("DROP INDEX pgsched.run_running_by_queue; DROP TABLE pgsched.queue")
