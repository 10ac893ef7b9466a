"""An index for "when does the next waiting run become claimable": (queue, available_at).

Revision ID: 0013
Revises: 0010
Create Date: 2026-12-02

A worker whose claim came back short asks how long until the next waiting run of its queues
becomes claimable, and sleeps exactly that long (ADR 0013). The question was
`min(available_at) … WHERE state = 'waiting' AND queue = ANY(…)`, which no index answered: a
sequential scan of every run of every month (2.7 ms with 5,000 runs; it grows with the history,
and an idle worker asks every poll interval). With this partial index each queue's answer is the
first entry of one index range. It holds waiting runs only: a run leaves it when claimed, so it
stays as small as the backlog; inserting a run writes one more index entry.

On a large existing history an operator may build it ahead with `CREATE INDEX ON ONLY`,
`CREATE INDEX CONCURRENTLY` per partition and `ALTER INDEX … ATTACH PARTITION` under the same
name; this revision then finds it (IF NOT EXISTS), as 0009 does.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0013"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
CREATE INDEX IF NOT EXISTS run_next_available ON pgsched.run (queue, available_at)
    WHERE state = 'waiting';
RESET ROLE;
""")


def downgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP INDEX pgsched.run_next_available;
RESET ROLE;
""")
