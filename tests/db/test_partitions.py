"""Runs and events are monthly RANGE partitions; occurrences are unique; a missing month is loud."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from pgsched.app.db import store
from pgsched.app.db.store import Conn
from tests.factories import make_schedule


async def _partitions(conn: Conn, table: str) -> list[dict[str, object]]:
    cur = await conn.execute(
        "SELECT partition::text AS name, month_start, month_end "
        "FROM pgsched.month_partitions_v1(%s::regclass)",
        [table],
    )
    return await cur.fetchall()


@pytest.mark.parametrize("table", ["pgsched.run", "pgsched.event"])
async def test_tables_are_partitioned_by_month_with_three_ahead(conn: Conn, table: str) -> None:
    cur = await conn.execute(
        "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = %s::regclass", [table]
    )
    assert await cur.fetchone() == {"partstrat": "r"}
    parts = await _partitions(conn, table)
    cur = await conn.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AS m")
    row = await cur.fetchone()
    assert row is not None
    this_month = row["m"].replace(tzinfo=UTC)
    assert [p["month_start"] for p in parts] == [
        (this_month + timedelta(days=32 * k)).replace(day=1) for k in range(4)
    ]
    for p in parts:
        start = p["month_start"]
        assert isinstance(start, datetime)
        assert p["name"] == f"{table}_y{start:%Y}m{start:%m}"


async def test_create_month_partition_is_idempotent(conn: Conn) -> None:
    before = await _partitions(conn, "pgsched.run")
    cur = await conn.execute(
        "SELECT pgsched.create_month_partition_v1("
        "'pgsched.run', (now() + interval '1 month')::date) AS name"
    )
    row = await cur.fetchone()
    assert row is not None and row["name"].startswith("run_y")
    assert await _partitions(conn, "pgsched.run") == before


async def test_duplicate_occurrence_is_a_no_op(conn: Conn) -> None:
    s = await make_schedule(conn)
    due = datetime.now(UTC).replace(second=0, microsecond=0)
    first = await store.insert_runs(
        conn, [(s["id"], due, due)], origin="schedule", actor="test", now=None
    )
    again = await store.insert_runs(
        conn, [(s["id"], due, due), (s["id"], due, due)], origin="backfill", actor="test", now=None
    )
    assert len(first) == 1 and again == []
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.run")
    assert await cur.fetchone() == {"n": 1}
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event WHERE type = 'run.created'")
    assert await cur.fetchone() == {"n": 1}


async def test_ad_hoc_run_does_not_collide_with_the_occurrence(conn: Conn) -> None:
    s = await make_schedule(conn)
    due = datetime.now(UTC).replace(second=0, microsecond=0)
    await store.insert_runs(conn, [(s["id"], due, due)], origin="schedule", actor="t", now=None)
    adhoc = await store.insert_runs(
        conn, [(s["id"], due, due)], origin="trigger", adhoc=True, actor="t", now=None
    )
    assert len(adhoc) == 1


async def test_a_month_without_partition_is_a_clear_error(conn: Conn) -> None:
    s = await make_schedule(conn)
    # Years past the 3 months ahead whenever CI runs (a fixed May 2031 had one from February 2031).
    far = datetime(datetime.now(UTC).year + 5, 5, 1, tzinfo=UTC)
    with pytest.raises(store.PartitionMissing, match='no partition of relation "run"'):
        await store.insert_runs(conn, [(s["id"], far, far)], origin="backfill", actor="t", now=None)
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event WHERE type = 'run.created'")
    assert await cur.fetchone() == {"n": 0}, "nothing half-written"


async def test_partition_horizon_alarms_below_two_months_ahead(conn: Conn) -> None:
    cur = await conn.execute(
        "SELECT table_name, months_ahead, alarm FROM pgsched.partition_horizon ORDER BY 1"
    )
    assert await cur.fetchall() == [
        {"table_name": "pgsched.event", "months_ahead": 3, "alarm": False},
        {"table_name": "pgsched.run", "months_ahead": 3, "alarm": False},
    ]
    # Retire the two furthest months of runs: one month ahead left, so the alarm must fire.
    parts = await _partitions(conn, "pgsched.run")
    for p in parts[-2:]:
        await conn.execute(f"DROP TABLE {p['name']}")  # test-only DDL on known names
    cur = await conn.execute(
        "SELECT months_ahead, alarm FROM pgsched.partition_horizon WHERE table_name = 'pgsched.run'"
    )
    assert await cur.fetchone() == {"months_ahead": 1, "alarm": True}


# docs/runbook.md's column list for runs: every column but the generated `occurrence`.
RUN_COLUMNS = [
    "id",
    "schedule_id",
    "due_at",
    "adhoc",
    "origin",
    "state",
    "queue",
    "priority",
    "available_at",
    "attempt",
    "max_attempts",
    "lease_token",
    "lease_expires_at",
    "worker_id",
    "started_at",
    "finished_at",
    "outcome",
    "cancel_requested",
    "idempotency_key",
    "trace_context",
    "created_at",
    "payload",
    "timeout_seconds",
]


async def test_the_runbook_moves_rows_out_of_a_default_partition(conn: Conn) -> None:
    """docs/runbook.md, "Rows in a DEFAULT partition", step by step as the owner. The order
    matters: with the DEFAULT still attached, creating the month of a row it holds is refused
    (PostgreSQL re-checks the DEFAULT's rows against its shrunk constraint); and the identity
    columns need OVERRIDING SYSTEM VALUE to keep the rows' ids."""
    s = await make_schedule(conn)
    far = datetime(2100, 1, 1, 12, tzinfo=UTC)  # a month with no partition of its own
    await conn.execute("SET ROLE pgsched_owner")
    try:
        await conn.execute("CREATE TABLE pgsched.run_stray PARTITION OF pgsched.run DEFAULT")
        await conn.execute("CREATE TABLE pgsched.event_stray PARTITION OF pgsched.event DEFAULT")
    finally:
        await conn.execute("RESET ROLE")
    [run] = await store.insert_runs(
        conn, [(s["id"], far, far)], origin="backfill", actor="t", now=None
    )
    await conn.execute(
        "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
        " VALUES (%s, 'run', %s, 'run.note', 'test', '{}')",
        [far, run["id"]],
    )
    cur = await conn.execute("SELECT id FROM pgsched.event WHERE occurred_at = %s", [far])
    [event] = await cur.fetchall()

    await conn.execute("SET ROLE pgsched_owner")
    try:
        # The order the runbook used to give, month first: refused.
        with pytest.raises(psycopg.errors.CheckViolation):
            async with conn.transaction():
                await conn.execute(
                    "SELECT pgsched.create_month_partition_v1('pgsched.run', '2100-01-01')"
                )
        # The runbook's steps, verbatim in substance, one transaction per table.
        for parent, stray, column in (
            ("pgsched.run", "pgsched.run_stray", "due_at"),
            ("pgsched.event", "pgsched.event_stray", "occurred_at"),
        ):
            async with conn.transaction():
                await conn.execute(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                        sql.Identifier(*parent.split(".")), sql.Identifier(*stray.split("."))
                    )
                )
                await conn.execute(
                    sql.SQL(
                        "SELECT pgsched.create_month_partition_v1({}::regclass, m) FROM ("
                        "SELECT DISTINCT date_trunc('month', {} AT TIME ZONE 'UTC')::date AS m"
                        " FROM {}) months"
                    ).format(
                        sql.Literal(parent),
                        sql.Identifier(column),
                        sql.Identifier(*stray.split(".")),
                    )
                )
                # Runs: every column but the generated `occurrence` (the runbook lists them).
                is_run = parent == "pgsched.run"
                columns = (
                    sql.SQL(", ").join(sql.Identifier(c.strip()) for c in RUN_COLUMNS)
                    if is_run
                    else sql.SQL("*")
                )
                listed = sql.SQL("({})").format(columns) if is_run else sql.SQL("")
                await conn.execute(
                    sql.SQL("INSERT INTO {} {} OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
                        sql.Identifier(*parent.split(".")),
                        listed,
                        columns,
                        sql.Identifier(*stray.split(".")),
                    )
                )
                await conn.execute(
                    sql.SQL("DROP TABLE {}").format(sql.Identifier(*stray.split(".")))
                )
    finally:
        await conn.execute("RESET ROLE")

    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.partition_defaults")
    assert await cur.fetchone() == {"n": 0}
    cur = await conn.execute(
        "SELECT tableoid::regclass::text AS part, id FROM pgsched.run WHERE id = %s", [run["id"]]
    )
    assert await cur.fetchone() == {"part": "pgsched.run_y2100m01", "id": run["id"]}
    cur = await conn.execute(
        "SELECT tableoid::regclass::text AS part FROM pgsched.event WHERE id = %s", [event["id"]]
    )
    assert await cur.fetchone() == {"part": "pgsched.event_y2100m01"}
