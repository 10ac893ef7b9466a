"""Drop the superseded maintain_v1, drop_month_partitions_before_v1 and the unused leader table.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04

No code of the release at 0016 calls them (sql/partitions/README.md, "Dropping a function"):
- `pgsched.maintain_v1`: superseded by maintain_v2 (0015); the built-in schedule became the
  python job calling maintain_v2 and the worker lost EXECUTE on v1 in 0016.
- `pgsched.drop_month_partitions_before_v1`: retirement goes through maintain_v2 or, one month
  at a time, the functions of sql/partitions/retire_v1.sql (ADR 0018); nothing calls it.
- `pgsched.leader`: tickers and rescue need no leader (ADR 0011, ADR 0013); never written.

The downgrade restores all three as 0016 left them: the functions from their released files
(pinned by SHA-256), owned by pgsched_owner, with the grants 0001, 0005 and 0016 left them.
"""

from __future__ import annotations

import hashlib

from pgsched.app.db.migration_sql import SQL_DIR, execute, execute_file

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

MAINTAIN_V1 = "pgsched.maintain_v1(integer, interval, interval, timestamptz)"
DROP_BEFORE_V1 = "pgsched.drop_month_partitions_before_v1(regclass, date)"

UP = f"""
SET LOCAL ROLE pgsched_owner;
DROP FUNCTION {MAINTAIN_V1};
DROP FUNCTION {DROP_BEFORE_V1};
DROP TABLE pgsched.leader;
RESET ROLE;
"""

# pgsched.leader and its grants as 0001 created them (no later revision changed them).
LEADER = """
CREATE TABLE pgsched.leader (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    term       bigint NOT NULL DEFAULT 1,
    expires_at timestamptz NOT NULL
);
GRANT SELECT ON pgsched.leader TO pgsched_api, pgsched_worker, pgsched_operator;
GRANT INSERT, UPDATE, DELETE ON pgsched.leader TO pgsched_worker;
"""

# drop_month_partitions_before_v1 is the last statement of a released file whose other functions
# stay: its text from here to the end of the file is the function as 0001 installed it.
MONTH_PARTITIONS_V1 = (
    "partitions/month_partitions_v1.sql",
    "5f1b1425e90842589a1179a6812a0c70268e067d5f47f2759393bc3281365030",
)
DROP_BEFORE_V1_START = "CREATE FUNCTION pgsched.drop_month_partitions_before_v1("


def _drop_before_v1_text() -> str:
    relative, sha256 = MONTH_PARTITIONS_V1
    text = SQL_DIR.joinpath(relative).read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"sql/{relative} changed after release ({digest})")
    return text[text.index(DROP_BEFORE_V1_START) :]


def upgrade() -> None:
    execute(UP)


def downgrade() -> None:
    execute("SET LOCAL ROLE pgsched_owner")
    execute(LEADER)
    execute(_drop_before_v1_text())
    execute(f"REVOKE ALL ON FUNCTION {DROP_BEFORE_V1} FROM PUBLIC")
    execute_file(
        "partitions/maintain_v1.sql",
        "70973b22905f4d09550b0a213682da310106fdcaefa1603b84a81dd009282c57",
    )
    # As at 0016: nobody but its owner may call it (0005 granted the worker, 0016 revoked).
    execute(f"REVOKE ALL ON FUNCTION {MAINTAIN_V1} FROM PUBLIC")
    execute("RESET ROLE")
