"""Archive before drop (ADR 0018): a retired partition's rows go to a gzip'd CSV first."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgsched.app import maintenance, settings
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from tests.db.test_maintenance import NOW, create_months, month_start, partitions
from tests.factories import make_schedule


def archiving(directory: Path) -> maintenance.Retention:
    return maintenance.Retention(3, 30, 90, archive_dir=str(directory))


async def finished_runs(conn: Conn, month: datetime, n: int) -> None:
    """n runs due in `month`, claimed and succeeded then: their rows and events are there."""
    start = month_start(month)
    s = await make_schedule(conn, now=start + timedelta(hours=1), name=f"old-{start:%Y%m}")
    for k in range(n):
        due = start + timedelta(days=2, hours=k)
        await store.insert_runs(conn, [(s["id"], due, due)], origin="schedule", actor="t", now=due)
        for run in await store.claim_runs(
            conn, worker_id=1, queues=["default"], limit=1, lease_seconds=60, actor="w", now=due
        ):
            done = await store.succeed_run(
                conn, store.Lease.of(run), {"status": "succeeded"}, actor="w", now=due
            )
            assert done is not None


async def copy_of(conn: Conn, partition: str) -> tuple[str, list[str]]:
    """The partition's header and rows as COPY writes them, read from the partition itself."""
    table = sql.Identifier("pgsched", partition)
    out = bytearray()
    async with conn.cursor() as cur:
        stmt = sql.SQL("COPY {} TO STDOUT (FORMAT csv, HEADER)").format(table)
        async with cur.copy(stmt) as copy:
            async for data in copy:
                out += data
    header, *rows = out.decode().splitlines()
    return header, sorted(rows)


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def size_and_sha256(path: Path) -> tuple[int, str]:
    return path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def unzipped(path: Path) -> tuple[str, list[str]]:
    header, *rows = gzip.decompress(path.read_bytes()).decode().splitlines()
    return header, sorted(rows)


async def retired_events(conn: Conn) -> dict[str, dict[str, object]]:
    cur = await conn.execute(
        "SELECT meta FROM pgsched.event WHERE type = 'partition.retired' ORDER BY id"
    )
    return {r["meta"]["partition"]: r["meta"] for r in await cur.fetchall()}


async def test_archive_holds_exactly_the_rows_and_the_event_names_it(
    conn: Conn, tmp_path: Path
) -> None:
    old = month_start(NOW, -5)
    await create_months(conn, "pgsched.run", old, 5)
    await create_months(conn, "pgsched.event", old, 5)
    await finished_runs(conn, old, 3)
    run_part, event_part = f"run_y{old:%Y}m{old:%m}", f"event_y{old:%Y}m{old:%m}"
    expected = {
        run_part: await copy_of(conn, run_part),
        event_part: await copy_of(conn, event_part),
    }
    assert len(expected[run_part][1]) == 3
    assert len(expected[event_part][1]) >= 10, "schedule.created and 3 events per run"

    done = await maintenance.maintain(conn, archiving(tmp_path), now=NOW)

    retired = {r["partition_name"] for r in done if r["action"] == "retired"}
    assert {f"pgsched.{run_part}", f"pgsched.{event_part}"} <= retired
    assert old not in await partitions(conn, "pgsched.run")
    assert old not in await partitions(conn, "pgsched.event")
    events = await retired_events(conn)
    for part, (header, rows) in expected.items():
        archive = events[f"pgsched.{part}"]["archive"]
        assert isinstance(archive, dict)
        path = Path(archive["path"])
        assert path.parent == tmp_path and path.name.startswith(f"pgsched.{part}.")
        assert unzipped(path) == (header, rows), "exactly the partition's rows"
        assert archive["rows"] == len(rows)
        assert (archive["bytes"], archive["sha256"]) == size_and_sha256(path)
    assert not files(tmp_path, ".*.partial"), "no half-written file is left"
    # Every retired partition, empty ones too, has its archive.
    assert len(files(tmp_path, "*.csv.gz")) == len(retired)
    assert await replay.verify(conn) == [], "snapshots were written before event months went"


async def test_an_unwritable_archive_keeps_the_partition(conn: Conn, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    directory = blocker / "archive"  # fails for every user, root included
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 1)
    await create_months(conn, "pgsched.event", old, 1)
    await finished_runs(conn, old, 2)
    part = f"run_y{old:%Y}m{old:%m}"
    before = await copy_of(conn, part)

    with pytest.raises(maintenance.ArchiveError) as failed:
        await maintenance.maintain(conn, archiving(directory), now=NOW)

    message = str(failed.value)
    assert f"pgsched.{part}" in message and str(directory) in message
    assert "NotADirectoryError" in message and message.endswith("the partition is kept")
    assert old in await partitions(conn, "pgsched.run"), "still attached"
    assert await copy_of(conn, part) == before, "and unchanged"
    assert await retired_events(conn) == {}
    cur = await conn.execute(
        "SELECT meta FROM pgsched.event WHERE type = 'partition.archive_failed'"
    )
    (failure,) = [r["meta"] for r in await cur.fetchall()]
    assert failure["partition"] == f"pgsched.{part}"
    assert "NotADirectoryError" in failure["error"]

    # Once the directory can be written, the next pass archives and retires it.
    blocker.unlink()
    blocker.mkdir()
    directory.mkdir()
    done = await maintenance.maintain(conn, archiving(directory), now=NOW)
    assert ("retired", f"pgsched.{part}") in {(r["action"], r["partition_name"]) for r in done}
    (path,) = files(directory, f"pgsched.{part}.*.csv.gz")
    assert unzipped(path) == before


async def test_a_month_with_an_unfinished_run_is_kept_and_not_archived(
    conn: Conn, tmp_path: Path
) -> None:
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 1)
    s = await make_schedule(conn, now=NOW)
    due = old + timedelta(days=5)
    await store.insert_runs(conn, [(s["id"], due, due)], origin="backfill", actor="t", now=NOW)
    done = await maintenance.maintain(conn, archiving(tmp_path), now=NOW)
    assert ("kept", f"pgsched.run_y{old:%Y}m{old:%m}") in {
        (r["action"], r["partition_name"]) for r in done
    }
    assert not files(tmp_path, f"pgsched.run_y{old:%Y}m{old:%m}.*")
    assert old in await partitions(conn, "pgsched.run")


async def test_the_builtin_archives_when_given_a_directory(conn: Conn, tmp_path: Path) -> None:
    plain = await maintenance.ensure_builtin_schedule(conn, maintenance.Retention(), now=None)
    assert plain["job_type"] == "python"  # always (ADR 0021); the directory is one more kwarg
    archived = await maintenance.ensure_builtin_schedule(conn, archiving(tmp_path), now=None)
    assert archived["id"] == plain["id"] and archived["version"] == plain["version"] + 1
    assert archived["job_type"] == "python"
    assert archived["payload"] == {
        "target": "pgsched.app.maintenance:run_builtin",
        "kwargs": {
            "months_ahead": 3,
            "run_days": 30,
            "event_days": 90,
            "archive_dir": str(tmp_path),
        },
    }
    assert archived["timeout_seconds"] == 3600
    back = await maintenance.ensure_builtin_schedule(conn, maintenance.Retention(), now=None)
    assert (back["job_type"], back["timeout_seconds"]) == ("python", 600)
    assert back["payload"] == plain["payload"]


def test_the_archive_directory_setting_is_off_by_default() -> None:
    assert settings.retention({}).archive_dir is None
    assert settings.retention({"PGSCHED_ARCHIVE_DIR": ""}).archive_dir is None
    relative = settings.retention({"PGSCHED_ARCHIVE_DIR": "arch"}).archive_dir
    assert relative is not None and Path(relative).is_absolute()


async def test_the_builtin_job_archives_as_the_worker_role(
    conn: Conn, dsn: str, tmp_path: Path
) -> None:
    """What the worker runs: run_builtin, connecting to the URL it is given as pgsched_worker."""
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 1)
    await create_months(conn, "pgsched.event", old, 1)
    await finished_runs(conn, old, 2)
    part = f"run_y{old:%Y}m{old:%m}"
    before = await copy_of(conn, part)
    as_worker = make_conninfo(dsn, options="-c role=pgsched_worker")

    summary = await maintenance.run_builtin(3, 30, 90, str(tmp_path), database_url=as_worker)

    assert "retired" in summary and "kept 0" in summary
    assert old not in await partitions(conn, "pgsched.run")
    (path,) = files(tmp_path, f"pgsched.{part}.*.csv.gz")
    assert unzipped(path) == before
    events = await retired_events(conn)
    assert events[f"pgsched.{part}"]["archive"]["path"] == str(path)  # type: ignore[index]


async def test_pgsched_maintain_reports_a_failed_archive_in_one_line(
    conn: Conn, dsn: str, tmp_path: Path
) -> None:
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 1)
    await create_months(conn, "pgsched.event", old, 1)
    await finished_runs(conn, old, 1)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": dsn,
        "PGSCHED_ARCHIVE_DIR": str(blocker / "archive"),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "pgsched"), "maintain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"run_y{old:%Y}m{old:%m}" in done.stderr and "the partition is kept" in done.stderr
    assert old in await partitions(conn, "pgsched.run")


async def test_the_builtin_python_job_archives_when_a_worker_runs_it(
    conn: Conn, dsn: str, tmp_path: Path
) -> None:
    """The whole path: the built-in schedule, triggered, run by a real worker as a python job;
    the worker's environment is empty, it passes its own database URL to run_builtin."""
    from tests.workers.test_worker import running_worker, trigger, wait_state

    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 1)
    await create_months(conn, "pgsched.event", old, 1)
    await finished_runs(conn, old, 2)
    part = f"run_y{old:%Y}m{old:%m}"
    before = await copy_of(conn, part)
    builtin = await maintenance.ensure_builtin_schedule(conn, archiving(tmp_path), now=None)
    run = await trigger(conn, builtin["id"])
    async with running_worker(dsn):
        done = await wait_state(conn, run["id"], {"succeeded", "dead"}, within=30)
    assert done["state"] == "succeeded", done["outcome"]
    assert "retired" in done["outcome"]["output"]
    (path,) = files(tmp_path, f"pgsched.{part}.*.csv.gz")
    assert unzipped(path) == before
    assert old not in await partitions(conn, "pgsched.run")


async def test_a_month_left_detached_by_a_crash_is_finished_next_pass(
    conn: Conn, tmp_path: Path
) -> None:
    old = month_start(NOW, -4)
    await create_months(conn, "pgsched.run", old, 1)
    await create_months(conn, "pgsched.event", old, 1)
    await finished_runs(conn, old, 2)
    part = f"run_y{old:%Y}m{old:%m}"
    before = await copy_of(conn, part)
    # The first half of a pass, then the process died: detached, no file, nothing dropped.
    cur = await conn.execute(
        "SELECT action FROM pgsched.detach_for_archive_v1(%s::regclass)", [f"pgsched.{part}"]
    )
    assert await cur.fetchall() == [{"action": "detached"}]
    assert old not in await partitions(conn, "pgsched.run")

    done = await maintenance.maintain(conn, archiving(tmp_path), now=NOW)

    assert ("retired", f"pgsched.{part}") in {(r["action"], r["partition_name"]) for r in done}
    (path,) = files(tmp_path, f"pgsched.{part}.*.csv.gz")
    assert unzipped(path) == before
    cur = await conn.execute("SELECT to_regclass(%s) AS t", [f"pgsched.{part}"])
    assert await cur.fetchone() == {"t": None}
