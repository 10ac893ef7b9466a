"""`pgsched schedules|runs|status`, `--version`, `rebuild`'s question: the CLI an operator uses.

Behaviour is checked in process (`cli.main`, fast) where only the output matters, and in a real
subprocess where the process is the point: exit codes, one line on stderr, no terminal to ask
on, a terminal (a pty) that answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import pwd
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import pgsched
from pgsched.app import cli, ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.domain import schedule
from pgsched.app.services import schedules
from tests.conftest import ROOT, connect
from tests.factories import clear_of_month_ends, cover_last_month, make_schedule
from tests.support import store as test_store

DEADLINE = 60.0
ME = f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"


def run_cli(
    dsn: str | None,
    *args: str,
    stdin: int | None = subprocess.DEVNULL,
    cwd: str | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """The real `pgsched` in a subprocess, with no terminal on stdin unless `stdin` is one."""
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGSCHED_", "OTEL_"))},
        "OTEL_SDK_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    environ.pop("DATABASE_URL", None)
    if dsn is not None:
        environ["DATABASE_URL"] = dsn
    try:
        return subprocess.run(
            [sys.executable, "-m", "pgsched", *args],
            cwd=cwd or str(ROOT),
            env=environ,
            stdin=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgsched {' '.join(args)} was still running after {DEADLINE} s")


def answered(dsn: str, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`pgsched ARGS` on a terminal (a pty) where the operator types `answer`."""
    main, child = pty.openpty()
    try:
        os.write(main, answer.encode() + b"\n")
        return run_cli(dsn, *args, stdin=child)
    finally:
        os.close(child)
        os.close(main)


def one_line_refusal(out: subprocess.CompletedProcess[str], says: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pgsched") and says in lines[0], lines[0]
    assert "Traceback" not in out.stderr


async def main(dsn: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`pgsched ARGS` in process (in a thread: it runs an event loop of its own): (exit code,
    stdout)."""
    code = await asyncio.to_thread(cli.main, list(args), {"DATABASE_URL": dsn})
    return code, capsys.readouterr().out


async def main_json(dsn: str, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out = await main(dsn, capsys, *args, "--json")
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Conn]:
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _worker(db: Conn, *, now: datetime | None = None, name: str = "w1") -> int:
    row = await store.register_worker(
        db, name=name, host="h", pid=1, version="t", queues=["default", "q"], slots=4, now=now
    )
    return int(row["id"])


async def _dead_run(db: Conn, worker: int, **over: Any) -> int:
    """A run that failed its only attempt, through the store as a worker would."""
    s = await make_schedule(db, max_attempts=1, **over)
    run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)
    at = datetime.now(UTC) + timedelta(minutes=1)  # past its available_at, by the store's clock
    (claimed,) = await test_store.claim_runs(
        db, worker_id=worker, queues=[s["queue"]], limit=1, lease_seconds=30, actor="w", now=at
    )
    outcome = {"status": "failed", "error": "boom\nsecond line", "duration_ms": 5.0}
    lease = store.Lease.of(claimed)
    assert await test_store.fail_run(db, lease, outcome, jitter=0.5, actor="w", now=at)
    return int(run["id"])


async def _events(db: Conn, stream: str, stream_id: int) -> list[dict[str, Any]]:
    cur = await db.execute(
        "SELECT type, actor, meta FROM pgsched.event WHERE stream = %s AND stream_id = %s "
        "ORDER BY id",
        [stream, stream_id],
    )
    return list(await cur.fetchall())


# -- the parser ---------------------------------------------------------------------------------


def _parsers(p: argparse.ArgumentParser, path: str = "pgsched") -> list[tuple[str, str | None]]:
    found = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{path} {name}", sub.description))
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_subcommand_has_a_help_description() -> None:
    described = _parsers(cli.parser())
    names = {name for name, _ in described}
    assert {"pgsched schedules backfill", "pgsched runs retry", "pgsched status"} <= names
    assert [name for name, text in described if not text] == []


def test_version_and_help_in_a_real_process() -> None:
    out = run_cli(None, "--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"pgsched {pgsched.__version__}")
    helped = run_cli(None, "runs", "retry", "--help")
    assert helped.returncode == 0
    assert "send dead or cancelled runs back to waiting" in helped.stdout.lower()


# -- schedules ------------------------------------------------------------------------------------


async def test_a_schedule_through_its_whole_life(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    made = await main_json(
        dsn,
        capsys,
        *("schedules", "create", "nightly", "--job-type", "command"),
        *("--payload", '{"argv": ["/bin/echo", "hi"]}', "--cron", "30 2 * * *"),
        *("--timezone", "Europe/Berlin", "--queue", "reports"),
    )
    sid = made["id"]
    assert (made["kind"], made["timezone"], made["queue"]) == ("cron", "Europe/Berlin", "reports")

    listed = await main_json(dsn, capsys, "schedules", "list", "--queue", "reports")
    assert [s["name"] for s in listed] == ["nightly"]
    code, table = await main(dsn, capsys, "schedules", "list")
    assert code == 0 and "NEXT DUE (ZONE)" in table
    assert "+01:00" in table or "+02:00" in table, "next due in the schedule's own zone"

    assert (await main_json(dsn, capsys, "schedules", "show", "nightly"))["id"] == sid
    preview = await main_json(dsn, capsys, "schedules", "preview", "nightly", "--count", "3")
    due = [datetime.fromisoformat(t) for t in preview["due"]]
    assert len(due) == 3 and all(d.astimezone(UTC).minute == 30 for d in due)

    assert (await main_json(dsn, capsys, "schedules", "pause", str(sid)))["enabled"] is False
    assert (await main_json(dsn, capsys, "schedules", "resume", "nightly"))["enabled"] is True
    trigger = ("schedules", "trigger", "nightly", "--idempotency-key", "k1")
    run = await main_json(dsn, capsys, *trigger)
    again = await main_json(dsn, capsys, *trigger)
    assert run["id"] == again["id"] and run["origin"] == "trigger"

    # The last two full days hold two 02:30s in Berlin: a backfill makes their runs once.
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = (end - timedelta(days=2)).isoformat()
    if (end - timedelta(days=2)).month == end.month:  # within this month's partition
        first = await main_json(
            dsn, capsys, "schedules", "backfill", "nightly", "--from", start, "--to", str(end)
        )
        second = await main_json(
            dsn, capsys, "schedules", "backfill", "nightly", "--from", start, "--to", str(end)
        )
        assert (first["requested"], len(first["created"])) == (2, 2)
        assert (second["requested"], second["created"]) == (2, []), "idempotent"

    code, _ = await main(dsn, capsys, "schedules", "delete", "nightly", "--yes")
    assert code == 0
    assert await main_json(dsn, capsys, "schedules", "list") == []

    events = await _events(db, "schedule", sid)
    types = [e["type"] for e in events]
    assert types[:3] == ["schedule.created", "schedule.paused", "schedule.resumed"]
    assert types[-1] == "schedule.deleted"
    assert {e["actor"] for e in events} == {ME}, "every change is the CLI user's"
    assert all(e["meta"]["via"] == "cli" for e in events)
    assert await replay.verify(db) == [], "the folded events agree with the tables"


async def test_create_takes_the_apis_json_body(
    dsn: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "s.json"
    body.write_text(
        json.dumps(
            {
                "name": "sync",
                "job_type": "noop",
                "interval_seconds": 300,
                "retry_backoff": {"delay_seconds": 5},
            }
        )
    )
    made = await main_json(dsn, capsys, "schedules", "create", "--file", str(body), "--paused")
    assert (made["name"], made["interval_seconds"], made["enabled"]) == ("sync", 300, False)
    assert made["retry_backoff"]["delay_seconds"] == 5


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("schedules", "create", "x", "--job-type", "noop", "--cron", "61 * * * *"), "cron: min"),
        (("schedules", "create", "--job-type", "noop"), "name: Object missing required field"),
        (("schedules", "create", "x", "--job-type", "nope"), "--job-type: invalid choice: 'nope'"),
        (("schedules", "create", "x", "--job-type", "noop", "--payload", "{"), "--payload is not"),
        (("schedules", "create", "x", "--job-type", "noop", "--run-at", "2030-01-01"), "run_at:"),
        (("schedules", "show", "no-such"), "no live schedule is named 'no-such'"),
        (("schedules", "pause", "999"), "schedule 999 does not exist"),
        (("schedules", "preview", "1", "--count", "0"), "--count must be 1..100, got 0"),
        (("schedules", "backfill", "x", "--from", "yesterday", "--to", "0s"), "--from must be"),
        (("schedules", "list", "--limit", "0"), "--limit: must be a whole number 1.."),
        (("runs", "list", "--state", "failed"), "--state must be one of waiting, running"),
        (("runs", "show", "abc"), "a run id is a whole number"),
        (("runs", "show", "424242"), "run 424242 does not exist"),
        (("runs", "retry", "--state", "waiting"), "only dead or cancelled runs can be retried"),
        (("runs", "cancel"), "name the runs to be cancelled (ids), or filter them"),
        (("runs", "cancel", "1", "--queue", "q"), "give run ids or filters"),
        (("runs", "list", "--since", "2026-01-01T00:00"), "--since must be an instant with a"),
        (("status", "--verbose"), "unrecognized arguments: --verbose"),
        (("schedules", "frobnicate"), "invalid choice: 'frobnicate'"),
        (("schedules", "trigger", "no-such"), "no live schedule is named 'no-such'"),
        (("schedules", "resume", "0"), "schedule 0 does not exist"),
        (
            (
                "schedules",
                "create",
                "x",
                "--job-type",
                "noop",
                "--cron",
                "1 * * * *",
                "--interval",
                "60",
            ),
            "not allowed with argument --cron",
        ),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(dsn: str, args: tuple[str, ...], says: str) -> None:
    out = run_cli(dsn, *args)
    one_line_refusal(out, says)
    assert out.stdout == ""


async def test_show_tells_which_occurrences_did_not_run_and_why(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    await cover_last_month(db)  # ten minutes ago is last month's just after midnight on the 1st
    late = await make_schedule(
        db, name="late", now=datetime.now(UTC) - timedelta(minutes=10), missed_policy="latest"
    )
    made = await ticker.tick(db, now=None)  # ten occurrences fell due: only the latest runs
    assert made.missed >= 8, made
    code, text = await main(dsn, capsys, "schedules", "show", "late")
    assert code == 0
    missed = [line for line in text.splitlines() if "schedule.occurrence_missed" in line]
    assert len(missed) == min(made.missed, 10), text
    assert all(line.rstrip().endswith(": superseded") for line in missed), missed
    assert "schedule.advanced" not in text, "the ticker's routine is not shown"
    runs = await main_json(dsn, capsys, "runs", "list", "--schedule", str(late["id"]))
    assert len(runs) == made.created and {r["origin"] for r in runs} <= {"schedule", "catchup"}


async def test_list_shows_health_owner_labels_and_filters_by_them(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = await _worker(db)
    policy = {**schedule.HEALTH_POLICY, "consecutive_failures": 1}
    await _dead_run(db, worker, name="broken", health_policy=policy, owner="ops")
    broken = await store.schedules.live_schedule_id(db, "broken")
    assert broken is not None
    await store.health.evaluate(db, [broken], now=None)  # one dead run: unhealthy by its policy
    await make_schedule(db, name="fine", owner="data", labels={"team": "data", "tier": "1"})

    unhealthy = await main_json(dsn, capsys, "schedules", "list", "--health", "unhealthy")
    assert [(s["name"], s["health"]) for s in unhealthy] == [("broken", "unhealthy")]
    labelled = await main_json(dsn, capsys, "schedules", "list", "--label", "team:data")
    assert [s["name"] for s in labelled] == ["fine"]
    assert await main_json(dsn, capsys, "schedules", "list", "--label", "tier") == labelled
    assert await main_json(dsn, capsys, "schedules", "list", "--label", "team:x") == []
    owned = await main_json(dsn, capsys, "schedules", "list", "--owner", "ops")
    assert [s["name"] for s in owned] == ["broken"]
    code, table = await main(dsn, capsys, "schedules", "list")
    assert code == 0
    row = next(line for line in table.splitlines() if " broken " in line)
    assert "unhealthy (consecutive_failures)" in row and "ops" in row
    assert "team=data,tier=1" in next(line for line in table.splitlines() if " fine " in line)
    one_line_refusal(
        run_cli(dsn, "schedules", "list", "--label", "a:b:c", "--label", "-x"), "--label"
    )
    one_line_refusal(
        run_cli(dsn, "schedules", "list", "--health", "sick"),
        "(choose from 'healthy', 'degraded', 'unhealthy')",
    )


async def test_show_names_upstreams_health_and_the_declaring_file(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    await make_schedule(db, name="upstream-job")
    fields = {"name": "downstream", "job_type": "noop", "cron": "0 * * * *"}
    await schedules.create(
        db,
        fields
        | schedule.timing(fields)
        | {
            "depends_on": ["upstream-job"],
            "labels": {"team": "data"},
            "description": "the nightly roll-up",
            "pause_after_failures": 4,
            "managed_by": "etl",
        },
        actor="test",
        now=None,
    )
    made = await main_json(
        dsn,
        capsys,
        "schedules",
        "create",
        "by-options",
        "--job-type=noop",
        "--cron=0 * * * *",
        "--depends-on=downstream",
        "--depends-on=upstream-job",
        "--label=team:data",
        "--owner=ops",
        "--pause-after-failures=2",
    )
    assert (made["labels"], made["owner"], made["pause_after_failures"]) == (
        {"team": "data"},
        "ops",
        2,
    )
    assert len(made["depends_on"]) == 2
    one_line_refusal(
        run_cli(dsn, "schedules", "create", "x", "--job-type=noop", "--interval=60", "--label=t"),
        "--label needs KEY:VALUE",
    )
    one_line_refusal(
        run_cli(
            dsn,
            "schedules",
            "create",
            "x",
            "--job-type=noop",
            "--interval=60",
            "--depends-on=nowhere",
        ),
        "'nowhere' is no live schedule",
    )
    code, text = await main(dsn, capsys, "schedules", "show", "downstream")
    assert code == 0
    shown = dict(
        (name, value.strip())
        for name, _, value in (line.partition(":") for line in text.split("\n\n")[0].splitlines())
    )
    assert shown["depends on"] == "upstream-job", text
    assert shown["health"] == "healthy" and shown["pause after failures"] == "4"
    assert shown["labels"] == "team=data" and shown["description"] == "the nightly roll-up"
    assert shown["managed by"].startswith("etl (`pgsched apply` declares it")
    assert '"consecutive_failures": 3' in shown["health policy"]


async def test_runs_list_and_show_know_blocked_and_skipped_runs(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hour = clear_of_month_ends(now, timedelta(hours=1))  # its events in this month's partition
    before = hour - timedelta(seconds=1)
    for name, upstreams in (("up", []), ("down", ["up"])):
        fields = {"name": name, "job_type": "noop", "cron": "0 * * * *"}
        extra = {"depends_on": upstreams, "dependency_timeout_seconds": 60}
        await schedules.create(db, fields | schedule.timing(fields) | extra, actor="t", now=before)
    await ticker.tick(db, now=hour)  # both fall due; down waits for up's run of the hour
    blocked = await main_json(dsn, capsys, "runs", "list", "--state", "blocked")
    assert [r["schedule_name"] for r in blocked] == ["down"]
    code, text = await main(dsn, capsys, "runs", "show", str(blocked[0]["id"]))
    assert code == 0 and "waits for" in text and "waits until" in text
    await ticker.tick(db, now=hour + timedelta(minutes=2))  # up never ran: down is skipped
    assert await main_json(dsn, capsys, "runs", "list", "--state", "blocked") == []
    skipped = await main_json(dsn, capsys, "runs", "list", "--state", "skipped")
    assert [r["id"] for r in skipped] == [blocked[0]["id"]]
    code, text = await main(dsn, capsys, "runs", "show", str(blocked[0]["id"]))
    outcome = next(line for line in text.splitlines() if line.startswith("outcome"))
    assert code == 0 and "up" in outcome, text
    assert await replay.verify(db) == []


async def test_an_empty_backfill_says_why(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    await main_json(dsn, capsys, "schedules", "create", "iv", "--job-type", "noop", "--interval=60")
    code, text = await main(dsn, capsys, "schedules", "backfill", "iv", "--from=2h", "--to=1h")
    assert code == 0
    assert "nothing to backfill: an interval schedule's occurrences count from when it was" in text
    done = await main_json(dsn, capsys, "schedules", "backfill", "iv", "--from=2h", "--to=1h")
    assert done["requested"] == 0 and done["reason"].startswith("an interval schedule's")


async def test_delete_asks_first_and_without_a_terminal_refuses(dsn: str, db: Conn) -> None:
    kept = await make_schedule(db, name="keep")
    out = run_cli(dsn, "schedules", "delete", "keep")
    one_line_refusal(out, f"delete schedule {kept['id']} 'keep': refused, no terminal to confirm")
    declined = answered(dsn, "n", "schedules", "delete", "keep")
    assert declined.returncode == 1 and "nothing deleted" in declined.stderr
    assert await store.get_schedule(db, kept["id"]) is not None
    assert [e["type"] for e in await _events(db, "schedule", kept["id"])] == ["schedule.created"]


# -- runs -----------------------------------------------------------------------------------------


async def test_runs_list_filters_and_show_one(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = await _worker(db)
    dead = await _dead_run(db, worker, queue="q", name="failing")
    waiting_schedule = await make_schedule(db, name="quiet")
    waiting, _ = await schedules.trigger(db, waiting_schedule["id"], actor="t", now=None)

    dead_ones = await main_json(dsn, capsys, "runs", "list", "--state", "dead")
    assert [r["id"] for r in dead_ones] == [dead]
    by_name = await main_json(dsn, capsys, "runs", "list", "--schedule", "quiet")
    assert [r["id"] for r in by_name] == [waiting["id"]]
    both = await main_json(dsn, capsys, "runs", "list", "--state", "dead,waiting", "--since", "1h")
    assert {r["id"] for r in both} == {dead, waiting["id"]}
    assert await main_json(dsn, capsys, "runs", "list", "--until", "1h") == []

    code, table = await main(dsn, capsys, "runs", "list", "--queue", "q")
    assert code == 0 and "boom" in table and "second line" not in table

    shown = await main_json(dsn, capsys, "runs", "show", str(dead))
    assert shown["run"]["state"] == "dead"
    assert [(a["worker_id"], a["result"]) for a in shown["run"]["attempts"]] == [(worker, "dead")]
    types = [e["type"] for e in shown["events"]]
    assert types[0] == "run.created" and "run.claimed" in types and types[-1] == "run.dead"
    assert all("lease_token" not in e["data"] for e in shown["events"])
    code, text = await main(dsn, capsys, "runs", "show", str(dead))
    assert code == 0 and "attempts (1):" in text and "run.dead" in text


async def test_bulk_retry_asks_counts_and_acts(dsn: str, db: Conn) -> None:
    worker = await _worker(db)
    in_q = [await _dead_run(db, worker, queue="q") for _ in range(3)]
    elsewhere = await _dead_run(db, worker, queue="default")

    refused = run_cli(dsn, "runs", "retry", "--state", "dead", "--queue", "q")
    one_line_refusal(refused, "retry 3 run(s): refused, no terminal to confirm on (pass --yes)")
    declined = answered(dsn, "n", "runs", "retry", "--state", "dead", "--queue", "q")
    assert declined.returncode == 1 and "nothing retried" in declined.stderr
    for run_id in in_q:
        got = await test_store.get_run(db, run_id)
        assert got is not None and got["state"] == "dead", "nothing changed before a yes"

    done = answered(dsn, "y", "runs", "retry", "--state", "dead", "--queue", "q")
    assert done.returncode == 0, done.stderr
    assert "retry 3 run(s)? [y/N]" in done.stderr
    assert done.stdout.strip() == "retried 3 run(s)"
    for run_id in in_q:
        got = await test_store.get_run(db, run_id)
        assert got is not None and got["state"] == "waiting"
        assert [e["type"] for e in await _events(db, "run", run_id)][-1] == "run.retried"
    other = await test_store.get_run(db, elsewhere)
    assert other is not None and other["state"] == "dead", "the filter held"

    cancelled = run_cli(dsn, "runs", "cancel", "--queue", "q", "--yes", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    body = json.loads(cancelled.stdout)
    assert sorted(body["cancelled"]) == sorted(in_q) and body["skipped"] == []
    again = run_cli(dsn, "runs", "cancel", "--queue", "q", "--yes")
    assert (again.returncode, again.stdout.strip()) == (0, "no run matches: nothing cancelled")

    single = run_cli(dsn, "runs", "retry", str(elsewhere), str(in_q[0]))
    assert single.returncode == 0
    assert single.stdout.strip() == "retried 2 run(s)"
    refused_one = run_cli(dsn, "runs", "retry", str(elsewhere))
    assert refused_one.returncode == 1
    assert f"run {elsewhere} is waiting: not retried" in refused_one.stderr
    assert await replay.verify(db) == []


# -- status ---------------------------------------------------------------------------------------


def _status(dsn: str) -> tuple[int, str, list[str]]:
    out = run_cli(dsn, "status")
    assert out.stderr == "", out.stderr
    lines = out.stdout.strip().splitlines()
    return out.returncode, lines[0], lines[1:]


async def test_status_exit_codes_follow_the_health_states(dsn: str, db: Conn) -> None:
    code, first, details = _status(dsn)
    assert code == 1 and first.startswith("WARNING: pgsched is degraded - workers degraded")
    assert any(line.split()[:2] == ["partitions", "healthy"] for line in details)

    # A worker whose last heartbeat is five minutes old by the database clock: still no live one.
    await _worker(db, now=datetime.now(UTC) - timedelta(minutes=5), name="stale")
    assert _status(dsn)[:2] == (
        1,
        "WARNING: pgsched is degraded - workers degraded: no worker has sent a heartbeat in 30 s",
    )

    await _worker(db, name="live")
    code, first, _ = _status(dsn)
    assert code == 0 and first.startswith("OK: pgsched is healthy - 1 live worker(s)")
    body = json.loads(run_cli(dsn, "status", "--json").stdout)
    assert body["status"] == "healthy" and body["metrics"]["live_workers"] == 1

    # An unhealthy schedule is shown as /health shows it, and is not the service's state.
    dead = await _dead_run(db, await _worker(db, name="w2"), name="failing-job")
    broken = await test_store.get_run(db, dead)
    assert broken is not None
    await schedules.update(
        db,
        broken["schedule_id"],
        {"health_policy": {"consecutive_failures": 1}},
        if_match=None,
        actor="t",
        now=None,
    )
    code, first, details = _status(dsn)
    assert code == 0 and first.startswith("OK: pgsched is healthy"), first
    (line,) = [d for d in details if d.split()[:1] == ["schedules"]]
    assert line.split()[1] == "unhealthy" and "1 unhealthy" in line, line
    assert json.loads(run_cli(dsn, "status", "--json").stdout)["components"]["schedules"] == (
        "unhealthy"
    )

    # No partition ahead for runs: nothing can be stored next month.
    await db.execute("SET ROLE pgsched_owner")
    cur = await db.execute(
        "SELECT p.partition::text AS name FROM pgsched.month_partitions_v1('pgsched.run') p "
        "WHERE p.month_start > now()"
    )
    for row in await cur.fetchall():
        await db.execute(f"ALTER TABLE pgsched.run DETACH PARTITION {row['name']}")
    await db.execute("RESET ROLE")
    code, first, _ = _status(dsn)
    assert code == 2 and first.startswith("CRITICAL: pgsched is unhealthy - partitions unhealthy")


def test_status_of_a_database_that_does_not_answer_is_critical() -> None:
    code, first, _ = _status("postgresql://postgres@127.0.0.1:1/nothing")
    assert code == 2
    assert first.startswith("CRITICAL: pgsched is unhealthy - database: cannot connect")
    body = run_cli("postgresql://postgres@127.0.0.1:1/nothing", "status", "--json")
    assert body.returncode == 2
    assert json.loads(body.stdout)["components"]["database"] == "unhealthy"


# -- input that must be refused in one line ----------------------------------------------------


async def refused(dsn: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`pgsched ARGS` in process, refused: exit 2, nothing on stdout, one line on stderr
    (no traceback); that line."""

    def call() -> int | str | None:
        try:
            return cli.main(list(args), {"DATABASE_URL": dsn})
        except SystemExit as exc:  # argparse's refusals
            return exc.code

    code = await asyncio.to_thread(call)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgsched"), err
    return lines[0]


BIG = "99999999999999999999999"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("schedules", "backfill", "a1", "--from", "99999999999999999d", "--to", "0s"),
            "--from: a",
        ),
        (("schedules", "backfill", "a1", "--from", "999999999d", "--to", "0s"), "at most 36600d"),
        (("schedules", "backfill", "a1", "--from", "1d", "--to", "999999999d"), "--to: a span"),
        (("runs", "list", "--since", "999999999d"), "--since: a span back from now is at most"),
        (("runs", "list", "--until", "99999999999999999999h"), "--until: a span back"),
        (("schedules", "backfill", "a1", "--from", "²d", "--to", "0s"), "--from must be an inst"),
        (("runs", "list", "--since", "0001-01-01T00:00:00+14:00"), "--since must be from 1970"),
        (("runs", "list", "--until", "9999-12-31T23:59:59-14:00"), "--until must be from 1970"),
        (("schedules", "show", "²"), "no live schedule is named '²'"),
        (("schedules", "pause", "١٢"), "no live schedule is named '١٢'"),
        (("schedules", "pause", f"id:{BIG}"), "schedule id must be a whole number 1..9223372"),
        (("schedules", "show", BIG), "schedule id must be a whole number 0..9223372036854775807"),
        (("schedules", "show", "id:x"), "schedule id must be a whole number"),
        (("runs", "show", BIG), "a run id is a whole number 1..9223372036854775807"),
        (("runs", "show", "²"), "a run id is a whole number"),
        (("runs", "retry", BIG), "a run id is a whole number 1..9223372036854775807"),
        (("runs", "list", "--limit", BIG), "--limit: must be a whole number 1..2147483647"),
        (("queue", "default", "--max-running", BIG), "--max-running must be a whole number 1.."),
        (("token", "create", "--name", "t", "--role", "viewer", "--expires-in-days", "nan"), "--e"),
        (
            ("token", "create", "--name", "t", "--role", "viewer", "--expires-in-days", "1e300"),
            "3650",
        ),
        (
            ("token", "create", "--name", "t", "--role", "viewer", "--expires-in-days", "0"),
            "(0, 3650]",
        ),
        (
            ("schedules", "create", "j", "--job-type", "noop", "--payload", '{"body":{"a":NaN}}'),
            "--payload is not JSON: NaN is not a JSON number",
        ),
        (
            ("schedules", "create", "j", "--job-type", "noop", "--payload", '{"a":1e999}'),
            "--payload is not JSON: 1e999 is out of range",
        ),
        (
            ("schedules", "create", "j", "--job-type", "noop", "--payload", '{"a":-Infinity}'),
            "--payload is not JSON: -Infinity is not a JSON number",
        ),
        (("schedules", "create", "a\nb", "--job-type", "noop", "--interval", "60"), "name: must"),
        (("schedules", "create", "t", "--job-type", "noop", "--timeout", "1e-300"), "timeout_s"),
        (("runs", "cancel", "--state", "", "--yes"), "--state must be one of waiting"),
        (("runs", "retry", "--state", "dead,", "--yes"), "got an empty value"),
    ],
)
async def test_out_of_range_and_odd_input_is_one_line(
    dsn: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], says: str
) -> None:
    assert says in await refused(dsn, capsys, *args)


async def test_a_backfill_before_1970_is_refused_by_the_service(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgsched.app.domain.errors import InvalidRequest

    made = await make_schedule(db, name="a1")
    line = await refused(
        dsn, capsys, "schedules", "backfill", "a1", "--from", "0001-01-01T00:00:00Z", "--to", "0s"
    )
    assert "--from must be from 1970-01-01T00:00:00Z up to" in line
    old = datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidRequest, match="from: must be from 1970"):
        await schedules.backfill(db, made["id"], old, datetime.now(UTC), actor="t", now=None)
    with pytest.raises(InvalidRequest, match="to: must be from 1970"):
        await schedules.backfill(
            db,
            made["id"],
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(9999, 1, 1, tzinfo=UTC),
            actor="t",
            now=None,
        )


async def test_a_name_of_digits_that_is_another_schedules_id_is_refused(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await make_schedule(db, name="first")
    named = await make_schedule(db, name=str(first["id"]))  # its name is `first`'s id
    line = await refused(dsn, capsys, "schedules", "pause", str(first["id"]))
    assert f"say `id:{first['id']}` or `name:{first['id']}`" in line
    assert (await store.get_schedule(db, first["id"]))["enabled"]
    assert (await store.get_schedule(db, named["id"]))["enabled"]

    paused = await main_json(dsn, capsys, "schedules", "pause", f"name:{first['id']}")
    assert paused["id"] == named["id"] and not paused["enabled"]
    paused = await main_json(dsn, capsys, "schedules", "pause", f"id:{first['id']}")
    assert paused["id"] == first["id"] and not paused["enabled"]
    assert (await main_json(dsn, capsys, "schedules", "show", "name:first"))["id"] == first["id"]
    # A name of digits that is its own id is no ambiguity.
    own = await make_schedule(db, name="tmp")
    await db.execute(
        "UPDATE pgsched.schedule SET name = id::text WHERE id = %(id)s", {"id": own["id"]}
    )
    shown = await main_json(dsn, capsys, "schedules", "show", str(own["id"]))
    assert shown["id"] == own["id"]
    # Nor one that is no live schedule's id: `007` is the schedule named so.
    agent = await make_schedule(db, name="007")
    assert (await main_json(dsn, capsys, "schedules", "show", "007"))["id"] == agent["id"]


async def test_an_empty_state_filter_cancels_nothing(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await make_schedule(db)
    run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)
    await refused(dsn, capsys, "runs", "cancel", "--state", "", "--yes")
    assert (await test_store.get_run(db, run["id"]))["state"] == "waiting"
    line = await refused(dsn, capsys, "runs", "cancel", "--queue", "", "--yes")
    assert "name the runs to be cancelled (ids), or filter them" in line
    assert (await test_store.get_run(db, run["id"]))["state"] == "waiting"


async def test_show_lists_the_newest_changes_however_long_the_history(
    dsn: str, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await make_schedule(db, name="busy")
    # More routine events than a read of the stream from its start would ever get past.
    await db.execute(
        "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data) "
        "SELECT now(), 'schedule', %(id)s, 'schedule.advanced', 'ticker', '{}' "
        "FROM generate_series(1, 100001)",
        {"id": s["id"]},
    )
    await schedules.pause(db, s["id"], actor="alice", now=None)
    code, text = await main(dsn, capsys, "schedules", "show", "busy")
    assert code == 0
    changes = text[text.index("latest changes") :].splitlines()
    assert "schedule.paused" in changes[-1] and "alice" in changes[-1], text
    assert "schedule.created" in text and "schedule.advanced" not in text


async def test_status_of_an_unmigrated_or_locked_database_is_critical(
    dsn: str, admin_dsn: str, db: Conn
) -> None:
    empty = run_cli(admin_dsn, "status")  # the server's own database: no pgsched schema
    assert empty.returncode == 2, (empty.stdout, empty.stderr)
    assert empty.stdout.startswith("CRITICAL: pgsched is unhealthy - database: "), empty.stdout
    assert empty.stderr == ""
    body = run_cli(admin_dsn, "status", "--json")
    assert body.returncode == 2 and json.loads(body.stdout)["status"] == "unhealthy"

    await db.execute("BEGIN")
    await db.execute("LOCK TABLE pgsched.worker IN ACCESS EXCLUSIVE MODE")
    try:
        locked = run_cli(dsn, "status")  # within DEADLINE: the statement timeout ends it
    finally:
        await db.execute("ROLLBACK")
    assert locked.returncode == 2, (locked.stdout, locked.stderr)
    assert "statement timeout" in locked.stdout, locked.stdout


# -- rebuild ---------------------------------------------------------------------------------------


def test_rebuild_asks_before_replacing_the_tables(dsn: str) -> None:
    refused = run_cli(dsn, "rebuild")
    one_line_refusal(refused, "refused, no terminal to confirm on (pass --yes)")
    declined = answered(dsn, "no", "rebuild")
    assert declined.returncode == 1 and "rebuilt" not in declined.stdout
    agreed = answered(dsn, "y", "rebuild")
    assert agreed.returncode == 0 and agreed.stdout.startswith("rebuilt 0 schedule(s)")
    assert run_cli(dsn, "rebuild", "--yes").returncode == 0
