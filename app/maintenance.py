"""Maintenance: partitions kept ahead of need, history kept within retention (ADRs 0005, 0018).

By default the work is one SQL function, `pgsched.maintain_v2`, so that it runs the same way from
`pgsched maintain` and as pgsched's own built-in schedule `pgsched.maintenance`: hourly, so every
pass shows up as a run with its events and outcome. The built-in schedule is a `python` job,
`run_builtin`, that the worker runs on a connection of its own as the worker's role: `sql` jobs
run as `pgsched_job`, which has no right on pgsched's schema and must not get one (ADR 0021).
It is installed, and brought up to date, by `pgsched.install_builtin_maintenance_v1` (migration
0016), which runs as the owner: a ticker connecting as a member of pgsched_worker installs it on
a freshly migrated database although that role may not insert schedules.

With an archive directory (`PGSCHED_ARCHIVE_DIR`, off by default; ADR 0018) a partition's rows
are written to `<dir>/<partition>.<UTC stamp>.csv.gz` before it is dropped. That needs a client
(COPY TO STDOUT through gzip here: the app roles are not superusers and cannot COPY to a server
file). Each month is detached (briefly locking its parent, as maintain_v2 does), so nothing can
change it and no claim waits on it while its rows stream out; then the file is fsynced and the
table dropped, with the file's path, rows, bytes and SHA-256 in the `partition.retired` event.
If the file cannot be written the month is attached back, unchanged, the failure is recorded as
`partition.archive_failed` and raised as ArchiveError, and the next pass tries again. A month
left detached by a crash is finished by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.rows import dict_row

from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row
from pgsched.app.domain import schedule
from pgsched.app.services import schedules

BUILTIN_NAME = schedule.BUILTIN_NAME
BUILTIN_TARGET = "pgsched.app.maintenance:run_builtin"
# Rows are gathered into blocks this large before a thread compresses them: gzip must not run
# on the event loop (the worker's heartbeats share it), nor once per row.
_BLOCK = 1 << 20
# An archive may take no longer than the built-in run may last (its job timeout).
_ARCHIVE_TIMEOUT_SECONDS = 3600.0


class ArchiveError(RuntimeError):
    """A partition's rows could not be archived; it was kept, attached and unchanged."""


@dataclass(frozen=True, slots=True)
class Retention:
    months_ahead: int = 3
    run_days: int = 30
    event_days: int = 90
    # Where retired partitions are archived; None (the default) drops them without a copy.
    # Absolute (app.settings makes it so), as the built-in job runs in the worker's directory.
    archive_dir: str | None = None


# How long the built-in run may last when it only creates and drops partitions.
_PLAIN_TIMEOUT_SECONDS = 600.0


async def maintain(conn: Conn, retention: Retention, *, now: datetime | None) -> list[Row]:
    """One maintenance pass now (or at `now`): what was created, kept and retired.

    `conn` must be in autocommit mode: with an archive directory each partition is retired in
    a transaction of its own. Raises ArchiveError when an archive cannot be written.
    """
    if retention.archive_dir is not None:
        return await _maintain_archiving(conn, retention, Path(retention.archive_dir), now=now)
    return await store.maintenance.maintain(conn, _params(retention, now))


def _params(retention: Retention, now: datetime | None) -> dict[str, object]:
    """The retention as the maintenance statements take it."""
    return {
        "months_ahead": retention.months_ahead,
        "run_days": retention.run_days,
        "event_days": retention.event_days,
        "now": now,
    }


@dataclass(frozen=True, slots=True)
class Archive:
    """Where a retired partition's rows went; recorded in its partition.retired event."""

    path: str
    rows: int
    bytes: int
    sha256: str

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "format": "csv (header), gzip",
        }


async def _maintain_archiving(
    conn: Conn, retention: Retention, directory: Path, *, now: datetime | None
) -> list[Row]:
    params = _params(retention, now)
    done = await store.maintenance.maintain_ahead(conn, params)
    # First what a crash left detached (still unchanged: nothing writes a detached table).
    for month in await store.maintenance.detached_partitions(conn):
        done += await _archive_and_drop(conn, month, directory, {}, now=now)
    snapshots: int | None = None
    for month in await store.maintenance.retirable_partitions(conn, params):
        extra: dict[str, object] = {}
        if month["table_name"] == "pgsched.event":
            if snapshots is None:  # once per pass, before the first event month goes
                snapshots = await store.maintenance.snapshot_for_event_retirement(conn, params)
            extra["snapshots"] = snapshots
        step = await store.maintenance.detach_for_archive(conn, month["partition_name"], now=now)
        if step[0]["action"] == "kept":
            done += step
            continue
        done += await _archive_and_drop(conn, month, directory, extra, now=now)
    return done


async def _archive_and_drop(
    conn: Conn,
    month: Row,
    directory: Path,
    extra: Mapping[str, object],
    *,
    now: datetime | None,
) -> list[Row]:
    """Archive a detached month and drop it; if the archive fails, attach it back."""
    name = month["partition_name"]
    try:
        async with asyncio.timeout(_ARCHIVE_TIMEOUT_SECONDS):
            at = await store.db_now(conn, now)
            archive = await write_archive(conn, month, directory, f"{at:%Y%m%dT%H%M%SZ}")
            return await store.maintenance.drop_detached(
                conn, name, {**extra, "archive": archive.as_json()}, now=now
            )
    except (OSError, psycopg.Error, TimeoutError) as exc:
        reason = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
        where = "the partition is kept"
        try:
            await store.maintenance.reattach(conn, name, now=now)
        except psycopg.Error as again:
            # Still detached and unchanged; the next pass finds it and tries again.
            where = f"the partition stays detached ({type(again).__name__}: {again})"
            where = where.splitlines()[0]
        with contextlib.suppress(psycopg.Error):  # the connection itself may be what failed
            await store.record_system_event(
                conn,
                "partition.archive_failed",
                {
                    "table": month["table_name"],
                    "partition": name,
                    "directory": str(directory),
                    "error": reason,
                },
                actor="maintenance",
                now=now,
            )
        raise ArchiveError(f"archiving {name} to {directory} failed ({reason}); {where}") from exc


async def write_archive(conn: Conn, month: Row, directory: Path, stamp: str) -> Archive:
    """Stream a detached month's rows (CSV with header) into `<dir>/<table>.<stamp>.csv.gz`,
    fsynced, and return what was written. The file appears under its name only when complete;
    a half-written `.partial` file is removed."""
    final = directory / f"{month['partition_name']}.{stamp}.csv.gz"
    partial = directory / f".{final.name}.partial"
    raw = await asyncio.to_thread(partial.open, "xb")
    try:
        rows = await _copy_compressed(conn, str(month["partition_name"]), raw)
        await asyncio.to_thread(_publish, raw, partial, final)
    except BaseException:
        raw.close()
        partial.unlink(missing_ok=True)
        raise
    size, digest = await asyncio.to_thread(_measure, final)
    return Archive(str(final), rows, size, digest)


async def _copy_compressed(conn: Conn, partition: str, raw: IO[bytes]) -> int:
    gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
    block = bytearray()

    async def take(data: bytes) -> None:
        block.extend(data)
        if len(block) >= _BLOCK:
            await asyncio.to_thread(gz.write, bytes(block))
            block.clear()

    rows = await store.maintenance.copy_partition(conn, partition, take)
    await asyncio.to_thread(gz.write, bytes(block))
    await asyncio.to_thread(gz.close)
    return rows


def _publish(raw: IO[bytes], partial: Path, final: Path) -> None:
    """Make the file durable, then give it its name, then make the name durable."""
    raw.flush()
    os.fsync(raw.fileno())
    raw.close()
    partial.rename(final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _measure(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of the file as it is on disk."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_BLOCK):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


async def run_builtin(
    months_ahead: int,
    run_days: int,
    event_days: int,
    archive_dir: str | None = None,
    *,
    database_url: str,
) -> str:
    """The built-in schedule's `python` job: one pass on the worker's database, whose URL the
    worker passes to a target that declares `database_url` (workers.jobs.python_call)."""
    url = database_url
    retention = Retention(months_ahead, run_days, event_days, archive_dir)
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row
    ) as conn:
        done = await maintain(conn, retention, now=None)
    counts = {a: sum(1 for r in done if r["action"] == a) for a in ("created", "retired", "kept")}
    return ", ".join(f"{a} {n}" for a, n in counts.items())


def builtin_job(retention: Retention) -> dict[str, Any]:
    """The built-in schedule's job: run_builtin with the retention (and archive directory)."""
    kwargs: dict[str, object] = {
        "months_ahead": retention.months_ahead,
        "run_days": retention.run_days,
        "event_days": retention.event_days,
    }
    if retention.archive_dir is not None:
        kwargs["archive_dir"] = retention.archive_dir
    return {
        "job_type": "python",
        "payload": {"target": BUILTIN_TARGET, "kwargs": kwargs},
        "timeout_seconds": (
            _PLAIN_TIMEOUT_SECONDS if retention.archive_dir is None else _ARCHIVE_TIMEOUT_SECONDS
        ),
    }


async def ensure_builtin_schedule(conn: Conn, retention: Retention, *, now: datetime | None) -> Row:
    """Install (or bring up to date) the hourly maintenance schedule; idempotent (see
    app.services.schedules.install_builtin)."""
    return await schedules.install_builtin(conn, builtin_job(retention), now=now)
