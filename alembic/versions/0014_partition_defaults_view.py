"""The view pgsched.partition_defaults: rows in a DEFAULT partition of run or event.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

pgsched creates no DEFAULT partition (ADR 0005): a row whose month has no partition is refused,
so maintenance falling behind is loud. If someone attaches one anyway, rows that land there
will block creating their month's partition later. The alarm for that fires both on /health and in
the metric `pgsched_partitions_default_rows`; both read this view, so they cannot disagree. The
count is the statistics collector's live-tuple estimate, which costs nothing to read and is
exact enough for an alarm (it follows each committed transaction within a second or so).
"""

from __future__ import annotations

from pgsched.app.db.migration_sql import execute

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
CREATE VIEW pgsched.partition_defaults WITH (security_invoker = true) AS
SELECT t.parent::text AS table_name,
       d.partition::text AS partition_name,
       coalesce(st.n_live_tup, 0) AS live_rows
FROM unnest(ARRAY['pgsched.run'::regclass, 'pgsched.event'::regclass]) AS t(parent)
JOIN LATERAL (
    SELECT i.inhrelid::regclass AS partition
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = t.parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
) d ON true
LEFT JOIN pg_stat_user_tables st ON st.relid = d.partition;
COMMENT ON VIEW pgsched.partition_defaults IS
    'DEFAULT partitions of run and event (normally none) and their live rows; any row is an alarm';
GRANT SELECT ON pgsched.partition_defaults TO pgsched_operator, pgsched_api, pgsched_worker;
RESET ROLE;
""")


def downgrade() -> None:
    execute("""
SET LOCAL ROLE pgsched_owner;
DROP VIEW pgsched.partition_defaults;
RESET ROLE;
""")
