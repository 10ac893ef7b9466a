"""The API's run listing in the order it reads: (due_at, id), so a page is one index range.

Revision ID: 0009
Revises: 0006
Create Date: 2026-11-23

bench/history.py showed `GET /v1/runs` (page_runs: ORDER BY due_at DESC, id DESC LIMIT n) sorting
every run of every partition for each page: with 200,000 runs of history it was 18x its cost on
an empty history, and it grows with the history. With this index each partition is read
backwards from its newest run, newest partition first, and the scan stops after one page
(docs/adr/0018-archive-before-drop-and-history-cost.md).

On a large existing history, CREATE INDEX blocks writes to each partition while it builds there;
an operator who cannot afford that builds the index ahead of the upgrade with `CREATE INDEX ON
ONLY`, `CREATE INDEX CONCURRENTLY` per partition and `ALTER INDEX … ATTACH PARTITION` under the
same name, and this revision then finds it (IF NOT EXISTS).
"""

from __future__ import annotations

from app.db.migration_sql import execute

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
CREATE INDEX IF NOT EXISTS run_recent ON pgsched.run (due_at, id);
RESET ROLE;
""")


def downgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP INDEX pgsched.run_recent;
RESET ROLE;
""")
