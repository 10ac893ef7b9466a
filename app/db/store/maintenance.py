"""Maintenance: partitions kept ahead, history retired, the built-in schedule installed.

The statements are in app/db/queries/maintenance.sql and call the SQL functions of the
migrations (maintain_v2, install_builtin_maintenance_v1; ADRs 0005, 0018, 0021). The pass that
orders them, and the archive files, are app.maintenance's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from psycopg import sql

from pgsched.app.db.sql import query
from pgsched.app.db.store.executor import Conn, Row, execute, jsonb, one, rows

# The retention settings as the statements take them: months_ahead, run_days, event_days, now.
Retention = Mapping[str, object]


async def maintain(conn: Conn, retention: Retention) -> list[Row]:
    """One whole pass in the database (no archive): what was created, kept and retired."""
    return await rows(conn, "maintain", retention)


async def maintain_ahead(conn: Conn, retention: Retention) -> list[Row]:
    """Create the partitions the coming months need."""
    return await rows(conn, "maintain_ahead", retention)


async def detached_partitions(conn: Conn) -> list[Row]:
    """Months a crashed archiving pass left detached (unchanged: nothing writes to them)."""
    return await rows(conn, "detached_partitions")


async def retirable_partitions(conn: Conn, retention: Retention) -> list[Row]:
    """Months past their retention, oldest first."""
    return await rows(conn, "retirable_partitions", retention)


async def snapshot_for_event_retirement(conn: Conn, retention: Retention) -> int:
    """Snapshot the streams whose events are about to go; how many snapshots were written."""
    return int((await one(conn, "snapshot_for_event_retirement", retention))["snapshots"])


async def detach_for_archive(conn: Conn, partition: str, *, now: datetime | None) -> list[Row]:
    """Detach a month to archive it (action 'detached'), or keep it ('kept') and say why."""
    return await rows(conn, "detach_for_archive", {"partition": partition, "now": now})


async def drop_detached(
    conn: Conn, partition: str, detail: Mapping[str, object], *, now: datetime | None
) -> list[Row]:
    """Drop an archived month and append partition.retired with `detail` (the archive)."""
    return await rows(
        conn, "drop_detached", {"partition": partition, "now": now, "detail": jsonb(detail)}
    )


async def reattach(conn: Conn, partition: str, *, now: datetime | None) -> None:
    """Attach a month back, unchanged, when its archive could not be written."""
    await execute(conn, "reattach", {"partition": partition, "now": now})


async def copy_partition(
    conn: Conn, partition: str, write: Callable[[bytes], Awaitable[None]]
) -> int:
    """Stream a detached month's rows (CSV with header) to `write`; how many rows there were.

    COPY TO STDOUT, because the app roles are not superusers and cannot COPY to a server file.
    The table name is composed as an identifier (psycopg.sql), never as text.
    """
    schema, _, table = partition.partition(".")
    columns = (await one(conn, "archive_columns", {"partition": partition}))["columns"]
    statement = sql.SQL(query("archive_rows")).format(
        table=sql.Identifier(schema, table),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
    )
    async with conn.cursor() as cur:
        async with cur.copy(statement) as copy:
            async for data in copy:
                await write(bytes(data))
        return cur.rowcount


async def install_builtin_maintenance(
    conn: Conn, fields: Mapping[str, object], *, now: datetime | None
) -> Row:
    """Install (or bring up to date) the built-in schedule through
    pgsched.install_builtin_maintenance_v1, which runs as the owner (ADR 0021)."""
    return await one(conn, "install_builtin_maintenance", {"fields": jsonb(fields), "now": now})


async def run_history(conn: Conn) -> Row:
    """`first_month`: the oldest month of runs kept (None without any run partition);
    `retired`: whether older months of runs were retired."""
    return await one(conn, "run_history")
