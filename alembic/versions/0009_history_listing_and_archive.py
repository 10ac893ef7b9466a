"""The run listing's index (due_at, id), and partition retirement one at a time (archive).

1. The API's run listing in the order it reads: (due_at, id), so a page is one index range; and
the same for waiting and running runs alone (`?status=waiting`), a small partial index.

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

2. sql/partitions/retire_v1.sql: the functions maintenance uses when it archives a partition's
rows before dropping it (PGSCHED_ARCHIVE_DIR; ADR 0018). The worker role may run them (the
built-in schedule does), as it may run maintain_v1.
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute, execute_file

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None


FUNCTIONS = (
    "pgsched.partition_name_v1(regclass)",
    "pgsched.retirable_partitions_v1(interval, interval, timestamptz)",
    "pgsched.detached_partitions_v1()",
    "pgsched.snapshot_for_event_retirement_v1(interval, timestamptz)",
    "pgsched.detach_for_archive_v1(regclass, timestamptz)",
    "pgsched.detached_month_v1(regclass)",
    "pgsched.drop_detached_v1(regclass, timestamptz, jsonb)",
    "pgsched.reattach_v1(regclass, timestamptz)",
)


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
CREATE INDEX IF NOT EXISTS run_recent ON pgsched.run (due_at, id);
-- Listing waiting or running runs: the planner would otherwise fetch every waiting run of a big
-- partition through the claim's indexes and sort them (2.1x at 10 million runs of history).
CREATE INDEX IF NOT EXISTS run_recent_active ON pgsched.run (due_at, id)
    WHERE state IN ('waiting', 'running');
""")
    execute_file(
        "partitions/retire_v1.sql",
        "fb4818f797198a2860bc79986da8226c9b0a91a9c27098d9408577781bb3bd79",
    )
    for function in FUNCTIONS:
        execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        execute(f"GRANT EXECUTE ON FUNCTION {function} TO pgsched_worker")
    execute("RESET ROLE")


def downgrade() -> None:
    execute("SET LOCAL ROLE pgsched_owner")
    for function in reversed(FUNCTIONS):
        execute(f"DROP FUNCTION {function}")
    execute("DROP INDEX pgsched.run_recent, pgsched.run_recent_active")
    execute("RESET ROLE")
