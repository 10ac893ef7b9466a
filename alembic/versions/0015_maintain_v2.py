"""pgsched.maintain_v2: lock before counting a run month's unfinished runs.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

maintain_v1 counted a retirable run month's waiting and running runs, then DETACHed and DROPped
it. A run written into that month by a transaction still open at the count was not counted, and
the DETACH, waiting for that transaction, dropped it (sql/partitions/maintain_v2.sql). v2 locks
pgsched.run first. maintain_v1 stays until no running code calls it (sql/partitions/README.md).
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute, execute_file

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SIGNATURE = "pgsched.maintain_v2(integer, interval, interval, timestamptz)"


def upgrade() -> None:
    execute("SET LOCAL ROLE pgsched_owner")
    execute_file(
        "partitions/maintain_v2.sql",
        "295ac63aa513529d85a775fc6b0b90b97ea1d53469bfc4c5c2d3ff049eaad0d2",
    )
    execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO pgsched_worker")
    # The built-in schedule names the function in its statement; `pgsched run` (or `ticker`)
    # brings it up to date when it starts, with its schedule.updated event. Until then it calls
    # maintain_v1, which stays.
    execute("RESET ROLE")


def downgrade() -> None:
    execute("SET LOCAL ROLE pgsched_owner")
    execute(f"DROP FUNCTION {SIGNATURE}")
    execute("RESET ROLE")
