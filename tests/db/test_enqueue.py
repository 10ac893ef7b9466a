"""Enqueue (ADR 0027): runs with arguments of their own, in the caller's transaction, one
statement, no lock another enqueue waits on; job definitions; the sync and async clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import pgsched
from pgsched.app import ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.domain.errors import InvalidRequest, NotFound
from pgsched.app.services import runs, schedules
from tests.conftest import connect
from tests.support import store as test_store
from tests.support.worker import eventually, running_worker, wait_state

JOBS = "tests.workers.jobs_for_tests"


def python_job(dsn: str, fn: str, **kwargs: Any) -> dict[str, Any]:
    return {"target": f"{JOBS}:{fn}", "kwargs": {"dsn": dsn, **kwargs}}


async def define(conn: Conn, name: str = "mail", **fields: Any) -> dict[str, Any]:
    return await schedules.define_job(
        conn,
        name,
        fields.pop("job_type", "noop"),
        fields.pop("payload", {}),
        defaults=fields,
        actor="test",
    )


async def run_events(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event WHERE stream = 'run'")
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def run_count(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.run")
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


# -- job definitions -------------------------------------------------------------------------


async def test_a_job_definition_has_no_timing_and_the_ticker_never_makes_its_runs(
    conn: Conn,
) -> None:
    job = await define(conn, queue="mail", priority=3, max_attempts=5, timeout_seconds=30)
    assert (job["kind"], job["cron"], job["interval_seconds"], job["run_at"]) == (
        "job",
        None,
        None,
        None,
    )
    assert job["next_due_at"] is None
    _, due = await schedules.preview(conn, job["id"], 3, now=None)
    assert due == []
    with pytest.raises(InvalidRequest) as refused:
        t = datetime.now(UTC)
        await schedules.backfill(conn, job["id"], t - timedelta(hours=1), t, actor="t", now=None)
    assert refused.value.field == "from"
    await ticker.tick(conn, now=datetime.now(UTC) + timedelta(days=400))
    assert await run_count(conn) == 0
    # define_job again: the same definition, brought up to the new values, not a second one.
    again = await define(conn, queue="mail", priority=4, max_attempts=5, timeout_seconds=30)
    assert (again["id"], again["priority"], again["version"]) == (job["id"], 4, 2)
    assert await replay.verify(conn) == []


# -- the statement ---------------------------------------------------------------------------


async def test_enqueue_overrides_reach_the_claim_and_the_rest_comes_from_the_definition(
    conn: Conn,
) -> None:
    job = await define(
        conn,
        job_type="http",
        payload={"url": "https://example.com/a", "method": "POST"},
        queue="mail",
        priority=3,
        max_attempts=5,
        timeout_seconds=30,
    )
    async with conn.transaction():  # one instant for both
        plain, created = await runs.enqueue(conn, "mail", actor="test")
        assert created
        own, _ = await runs.enqueue(
            conn,
            job["id"],
            payload={"body": "b"},
            priority=1,
            max_attempts=2,
            timeout_seconds=7.5,
            actor="test",
        )
    assert (plain["origin"], plain["adhoc"], plain["queue"], plain["priority"]) == (
        "enqueue",
        True,
        "mail",
        3,
    )
    assert (plain["payload"], plain["timeout_seconds"], plain["max_attempts"]) == (None, None, 5)
    assert own["payload"] == {"url": "https://example.com/a", "method": "POST", "body": "b"}
    assert (own["priority"], own["max_attempts"], own["timeout_seconds"]) == (1, 2, 7.5)
    # Both share the transaction's instant: ad-hoc runs are not occurrences, so no collision.
    assert plain["due_at"] == own["due_at"]

    claimed = await test_store.claim_runs(
        conn, worker_id=1, queues=["mail"], limit=10, lease_seconds=30, actor="w", now=None
    )
    by_id = {r["id"]: r for r in claimed}
    assert by_id[own["id"]]["payload"] == {
        "url": "https://example.com/a",
        "method": "POST",
        "body": "b",
    }
    assert by_id[own["id"]]["timeout_seconds"] == 7.5
    assert by_id[plain["id"]]["payload"] == {"url": "https://example.com/a", "method": "POST"}
    assert by_id[plain["id"]]["timeout_seconds"] == 30
    assert await replay.verify(conn) == []


async def test_occurrences_stay_unique_while_adhoc_runs_repeat(conn: Conn) -> None:
    job = await define(conn)
    t = datetime.now(UTC).replace(microsecond=0)
    first = await store.insert_runs(conn, [(job["id"], t, t)], origin="schedule", actor="t", now=t)
    again = await store.insert_runs(conn, [(job["id"], t, t)], origin="schedule", actor="t", now=t)
    assert (len(first), again) == (1, [])
    made = await runs.enqueue_many(conn, "mail", [runs.Item(run_at=t)] * 3, actor="t", now=t)
    assert len({r["id"] for r in made}) == 3
    assert {r["due_at"] for r in made} == {t}


async def test_unknown_and_deleted_definitions_are_not_found(conn: Conn) -> None:
    with pytest.raises(NotFound):
        await runs.enqueue(conn, "nope", actor="test")
    with pytest.raises(NotFound):
        await runs.enqueue(conn, 123456789, actor="test")
    job = await define(conn)
    cache = runs.Definitions()
    await runs.enqueue(conn, "mail", actor="test", definitions=cache)
    await schedules.delete(conn, job["id"], actor="test", now=None)
    # The cached definition is stale: the statement writes nothing and the re-read finds none.
    with pytest.raises(NotFound):
        await runs.enqueue(conn, "mail", actor="test", definitions=cache)
    assert await run_count(conn) == 1


async def test_a_payload_the_job_type_refuses_is_named(conn: Conn) -> None:
    await define(conn, job_type="http", payload={"url": "https://example.com/a"})
    with pytest.raises(InvalidRequest) as bad:
        await runs.enqueue(conn, "mail", payload={"body": 7}, actor="test")
    assert bad.value.field == "payload.body"
    with pytest.raises(InvalidRequest) as nul:
        await runs.enqueue(conn, "mail", payload={"body": "a\x00b"}, actor="test")
    assert nul.value.field == "payload.body"
    for field, value in (("priority", 70000), ("max_attempts", 0), ("timeout_seconds", 0)):
        with pytest.raises(InvalidRequest) as wrong:
            await runs.enqueue(conn, "mail", actor="test", **{field: value})
        assert wrong.value.field == field
    with pytest.raises(InvalidRequest) as key:
        await runs.enqueue(conn, "mail", idempotency_key="", actor="test")
    assert key.value.field == "idempotency_key"
    assert await run_count(conn) == 0


async def test_a_definition_changed_since_it_was_cached_is_read_again(conn: Conn) -> None:
    job = await define(conn, job_type="http", payload={"url": "https://example.com/a"})
    cache = runs.Definitions()
    await runs.enqueue(conn, "mail", actor="test", definitions=cache)
    await schedules.update(
        conn,
        job["id"],
        {"payload": {"url": "https://example.com/new"}},
        if_match=None,
        actor="test",
        now=None,
    )
    run, _ = await runs.enqueue(
        conn, "mail", payload={"body": "PUT"}, actor="test", definitions=cache
    )
    assert run["payload"] == {"url": "https://example.com/new", "body": "PUT"}
    cached = cache.get("mail")
    assert cached is not None and cached.version == 2


async def test_same_key_twice_makes_one_run(conn: Conn) -> None:
    await define(conn)
    first, created = await runs.enqueue(conn, "mail", idempotency_key="k1", actor="test")
    second, again = await runs.enqueue(conn, "mail", idempotency_key="k1", actor="test")
    assert (created, again) == (True, False)
    assert second["id"] == first["id"]
    mixed = await runs.enqueue_items(
        conn,
        "mail",
        [runs.Item(idempotency_key="k1"), runs.Item(), runs.Item(idempotency_key="k2")],
        actor="test",
    )
    assert [c for _, c in mixed] == [False, True, True]
    assert mixed[0][0]["id"] == first["id"]
    with pytest.raises(InvalidRequest):
        await runs.enqueue_many(conn, "mail", [runs.Item(idempotency_key="x")] * 2, actor="test")
    assert await run_count(conn) == 3
    assert await replay.verify(conn) == []


async def test_a_refusal_against_a_stale_cached_definition_is_decided_again(conn: Conn) -> None:
    """The payload is checked against the cached definition before the statement can tell that
    it changed: an enqueue the new definition accepts must not be refused by the old one."""
    job = await define(conn, job_type="noop")
    cache = runs.Definitions()
    await runs.enqueue(conn, "mail", actor="test", definitions=cache)
    await schedules.update(
        conn,
        job["id"],
        {"job_type": "http", "payload": {"url": "https://example.com/a"}},
        if_match=None,
        actor="test",
        now=None,
    )
    run, _ = await runs.enqueue(
        conn, "mail", payload={"body": "PUT"}, actor="test", definitions=cache
    )
    assert run["payload"] == {"url": "https://example.com/a", "body": "PUT"}
    with pytest.raises(InvalidRequest):  # still refused when the fresh definition refuses it
        await runs.enqueue(conn, "mail", payload={"body": 7}, actor="test", definitions=cache)


async def test_a_trigger_with_an_enqueues_key_returns_the_enqueued_run(conn: Conn) -> None:
    job = await define(conn)
    run, _ = await runs.enqueue(conn, "mail", idempotency_key="k1", actor="test")
    again, created = await schedules.trigger(
        conn, job["id"], actor="test", now=None, idempotency_key="k1"
    )
    assert (again["id"], created) == (run["id"], False)


async def test_the_rows_an_enqueue_returns_are_the_rows_it_wrote(conn: Conn) -> None:
    """enqueue_runs returns only what the client cannot know (id, instants, key); the service
    builds the rest of each row from what it sent (ADR 0034). Every column, and their order,
    must be what reading the row back gives, whatever the item leaves to the definition."""
    await define(
        conn,
        job_type="http",
        payload={"url": "https://example.com/a", "method": "POST"},
        queue="mail",
        priority=3,
        max_attempts=5,
        timeout_seconds=30,
    )
    later = datetime.now(UTC).astimezone(timezone(timedelta(hours=2))) + timedelta(minutes=5)
    items = [
        runs.Item(),
        runs.Item(payload={"body": {"a": [1, 2.5, None, "x", {"b": False}]}}),
        runs.Item(
            queue="other",
            priority=-2,
            max_attempts=3,
            timeout_seconds=7,
            idempotency_key="k1",
            run_at=later,
        ),
        runs.Item(payload={"body": "s"}, idempotency_key="k2", timeout_seconds=0.5),
    ]
    trace = {"trace_id": "ab" * 16, "span_id": "cd" * 8}
    made = await runs.enqueue_items(conn, "mail", items, actor="t", trace_context=trace)
    # And one by one (a call of one item): the same rows.
    for item in items:
        again = replace(item, idempotency_key=item.idempotency_key and item.idempotency_key * 2)
        made += await runs.enqueue_items(conn, "mail", [again], actor="t", trace_context=trace)
    assert [created for _, created in made] == [True] * 8
    for run, _ in made:
        cur = await conn.execute("SELECT * FROM pgsched.run WHERE id = %s", [run["id"]])
        stored = await cur.fetchone()
        assert stored is not None
        assert run == stored
        assert list(run) == list(stored)
    # run.created carries the row less the columns a new run always has NULL: a missing key
    # folds to NULL, so verify and rebuild stay exact.
    cur = await conn.execute(
        "SELECT data FROM pgsched.event WHERE type = 'run.created' AND stream_id = %s",
        [made[0][0]["id"]],
    )
    event = await cur.fetchone()
    assert event is not None
    absent = {"lease_token", "lease_expires_at", "worker_id", "started_at", "finished_at"}
    assert absent | {"outcome", "occurrence"} <= set(made[0][0]) - set(event["data"])
    assert event["data"]["state"] == "waiting"
    assert await replay.verify(conn) == []
    await replay.rebuild(conn)
    assert await replay.verify(conn) == []


async def test_enqueue_many_makes_1000_runs_in_one_statement(conn: Conn) -> None:
    await define(conn, job_type="http", payload={"url": "https://example.com/", "method": "PUT"})
    items = [runs.Item(payload={"body": f"run {n}"}, priority=n % 7) for n in range(1000)]
    made = await runs.enqueue_many(conn, "mail", items, actor="test")
    assert [r["payload"]["body"] for r in made] == [f"run {n}" for n in range(1000)]
    assert [r["priority"] for r in made] == [n % 7 for n in range(1000)]
    # One statement of an autocommit connection: one transaction wrote every run and event.
    cur = await conn.execute(
        "SELECT (SELECT count(DISTINCT xmin::text) FROM pgsched.run)"
        " + (SELECT count(DISTINCT tx_id) FROM pgsched.event WHERE stream = 'run') AS txs,"
        " (SELECT count(*) FROM pgsched.event WHERE type = 'run.created') AS events"
    )
    assert await cur.fetchone() == {"txs": 2, "events": 1000}
    assert await replay.verify(conn) == []
    rebuilt = await replay.rebuild(conn)
    assert rebuilt["runs"] == 1000
    assert await replay.verify(conn) == []
    rebuilt_run = await test_store.get_run(conn, made[5]["id"])
    assert rebuilt_run is not None
    assert rebuilt_run["payload"] == {
        "url": "https://example.com/",
        "method": "PUT",
        "body": "run 5",
    }


# -- the caller's transaction ----------------------------------------------------------------


async def test_async_enqueue_in_the_callers_transaction(dsn: str, db: Conn) -> None:
    await define(db, job_type="python", payload=python_job(dsn, "ok"))
    client = await pgsched.AsyncClient.connect(dsn)
    async with client:
        # The caller's own connection: not autocommit, tuple rows.
        async with await psycopg.AsyncConnection.connect(dsn) as mine:
            run = await client.enqueue("mail", {"kwargs": {"dsn": dsn}}, conn=mine)
            assert run.created
            await mine.rollback()
        assert (await run_count(db), await run_events(db)) == (0, 0)

        async with await psycopg.AsyncConnection.connect(dsn) as mine:
            await mine.execute("INSERT INTO public.job_log (note) VALUES ('order')")
            run = await client.enqueue("mail", {"kwargs": {"dsn": dsn}}, conn=mine)
            await mine.commit()
        async with running_worker(dsn):
            done = await wait_state(db, run.id, {"succeeded"})
        assert done["origin"] == "enqueue"
        cur = await db.execute("SELECT note FROM public.job_log ORDER BY id")
        assert [r["note"] for r in await cur.fetchall()] == ["order", "ok"]
    assert await replay.verify(db) == []


async def test_sync_enqueue_in_the_callers_transaction(dsn: str, db: Conn) -> None:
    with pgsched.Client.connect(dsn) as client:
        client.define_job(
            "mail", "python", python_job(dsn, "noted", note="the definition's"), max_attempts=1
        )
        with psycopg.connect(dsn) as mine:
            run = client.enqueue(
                "mail", {"kwargs": {"dsn": dsn, "note": "gone"}}, priority=2, conn=mine
            )
            assert (run.created, run.priority) == (True, 2)
            mine.rollback()
        assert (await run_count(db), await run_events(db)) == (0, 0)
        with psycopg.connect(dsn) as mine:
            # The run's own arguments are what its job is called with.
            run = client.enqueue("mail", {"kwargs": {"dsn": dsn, "note": "the run's"}}, conn=mine)
            mine.commit()
        keyed = {"kwargs": {"dsn": dsn, "note": "keyed"}}
        again = client.enqueue("mail", keyed, idempotency_key="once")
        same = client.enqueue("mail", keyed, idempotency_key="once")
        assert (again.created, same.created, same.id) == (True, False, again.id)
    async with running_worker(dsn):
        await wait_state(db, run.id, {"succeeded"})
        await wait_state(db, again.id, {"succeeded"})
    cur = await db.execute("SELECT note FROM public.job_log ORDER BY note")
    assert [r["note"] for r in await cur.fetchall()] == ["keyed", "the run's"]
    assert await replay.verify(db) == []


# -- concurrency -----------------------------------------------------------------------------


async def _lock_waits(watch: Conn, pids: list[int]) -> list[dict[str, Any]]:
    """Backends among `pids` waiting for a lock on a row, a relation or another transaction
    (what one enqueue waiting for another would show)."""
    cur = await watch.execute(
        "SELECT pid, locktype, mode FROM pg_locks WHERE NOT granted AND pid = ANY(%s)"
        " AND locktype IN ('relation', 'tuple', 'transactionid', 'advisory', 'page')",
        [pids],
    )
    return await cur.fetchall()


async def test_concurrent_enqueues_to_one_definition_never_wait_for_each_other(
    dsn: str, db: Conn
) -> None:
    await define(db)
    conns = [await connect(dsn) for _ in range(32)]
    try:
        pids = [c.info.backend_pid for c in conns]
        held, others = conns[0], conns[1:]
        # One enqueue's transaction stays open (its run and key written, its locks held).
        await held.execute("BEGIN")
        await runs.enqueue(held, "mail", idempotency_key="held", actor="test")

        waits: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                waits.extend(await _lock_waits(db, pids))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(20):
                made = await asyncio.gather(
                    *(
                        runs.enqueue(c, "mail", idempotency_key=f"k{i}", actor="test")
                        for i, c in enumerate(others)
                    )
                )
        finally:
            done.set()
            await watcher
        assert all(created for _, created in made)
        assert waits == []
        # The 31 committed while the first is still open.
        assert await run_count(db) == 31
        await held.execute("COMMIT")
        assert await run_count(db) == 32
    finally:
        for c in conns:
            await c.close()
    assert await replay.verify(db) == []


async def test_concurrent_same_key_makes_one_run(dsn: str, db: Conn) -> None:
    await define(db)
    first, second = await connect(dsn), await connect(dsn)
    try:
        await first.execute("BEGIN")
        run, created = await runs.enqueue(first, "mail", idempotency_key="k", actor="test")
        racing = asyncio.create_task(
            runs.enqueue(second, "mail", idempotency_key="k", actor="test")
        )

        async def second_waits() -> bool:
            cur = await db.execute(
                "SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE pid = %s",
                [second.info.backend_pid],
            )
            row = await cur.fetchone()
            return bool(row and row["waiting"])

        # The same key waits for the transaction that holds it, and only then answers.
        await eventually("the second enqueue waits on the first's key", second_waits)
        assert not racing.done()
        await first.execute("COMMIT")
        earlier, again = await racing
        assert (created, again, earlier["id"]) == (True, False, run["id"])
    finally:
        await first.close()
        await second.close()
    assert await run_count(db) == 1


@pytest.mark.parametrize("role", ["pgsched_api", "pgsched_worker"])
async def test_the_application_roles_may_enqueue(dsn: str, db: Conn, role: str) -> None:
    """The API's role and the worker's (python jobs run as it) enqueue, keys included, past
    the event guard (ADR 0021: run.created carries the whole row for both)."""
    await define(db, job_type="http", payload={"url": "https://example.com/"})
    conn = await connect(dsn, role=role)
    try:
        run, created = await runs.enqueue(
            conn,
            "mail",
            payload={"body": "PUT"},
            timeout_seconds=5,
            idempotency_key="k",
            actor=role,
        )
        again, repeated = await runs.enqueue(conn, "mail", idempotency_key="k", actor=role)
    finally:
        await conn.close()
    assert (created, repeated, again["id"]) == (True, False, run["id"])
    assert await replay.verify(db) == []


async def test_clients_from_pools_commit_when_the_connection_returns(dsn: str, db: Conn) -> None:
    await define(db)
    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        run = pgsched.Client.from_pool(pool).enqueue("mail", idempotency_key="sync")
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as apool:
        client = pgsched.AsyncClient.from_pool(apool)
        runs_made = await client.enqueue_many("mail", [{"priority": 1}, {"queue": "other"}])
    assert [r.queue for r in runs_made] == ["default", "other"]
    assert run.created and await run_count(db) == 3


def test_import_pgsched_stays_light() -> None:
    """The client's names come on first use (PEP 562): `import pgsched` loads no driver."""
    code = (
        "import sys, pgsched; assert 'psycopg' not in sys.modules, 'eager';"
        " assert pgsched.Client.__module__ == 'pgsched.app.client'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- what a library caller gets for bad input: InvalidRequest naming the field, never a database
# error in the middle of its transaction -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_seconds", float("inf")),
        ("timeout_seconds", float("nan")),
        ("max_attempts", 2**40),
        ("max_attempts", 101),
        ("priority", True),
        ("queue", "q\x00"),
        ("queue", "q" * 101),
        ("idempotency_key", "k\x00"),
    ],
)
async def test_bad_run_fields_are_refused_by_name_and_the_transaction_goes_on(
    conn: Conn, field: str, value: object
) -> None:
    await define(conn)
    async with conn.transaction():
        with pytest.raises(InvalidRequest) as refused:
            await runs.enqueue(conn, "mail", actor="test", **{field: value})
        assert refused.value.field == field
        # Refused before any statement: the transaction is still usable.
        run, created = await runs.enqueue(conn, "mail", actor="test")
        assert created and run["state"] == "waiting"


async def test_a_start_outside_the_kept_months_is_named_run_at(conn: Conn) -> None:
    await define(conn)
    with pytest.raises(InvalidRequest) as refused:
        await runs.enqueue(conn, "mail", run_at=datetime(2001, 1, 1, tzinfo=UTC), actor="test")
    assert refused.value.field == "run_at"


@pytest.mark.parametrize(
    ("job_type", "payload", "override", "field"),
    [
        (
            "python",
            {"target": "tests.workers.jobs_for_tests:ok"},
            {"target": "os:system"},
            "payload.target",
        ),
        ("http", {"url": "https://example.com/"}, {"method": "DELETE"}, "payload.method"),
        ("sql", {"statement": "SELECT 1"}, {"dsn": "other"}, "payload.dsn"),
        (
            "http",
            {"url": "https://example.com/"},
            {"body": [{"$secret": "TOKEN"}]},
            "payload.body[0]",
        ),
    ],
)
async def test_an_enqueue_gives_arguments_not_what_runs(
    conn: Conn, job_type: str, payload: dict[str, Any], override: dict[str, Any], field: str
) -> None:
    await define(conn, job_type=job_type, payload=payload)
    with pytest.raises(InvalidRequest) as refused:
        await runs.enqueue(conn, "mail", payload=override, actor="test")
    assert refused.value.field == field


async def test_two_processes_defining_one_job_at_once_end_with_one_definition(
    dsn: str, db: Conn
) -> None:
    """A worker starting while the application enqueues its first run: both define the job.
    The second waits on the first's uncommitted row, finds the name taken when it commits, and
    brings that definition up to its own fields instead of failing."""
    first, second = await connect(dsn), await connect(dsn)
    try:
        async with first.transaction():
            made = await schedules.define_job(first, "racy", "noop", {}, actor="a")
            pid = (await (await second.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]
            racing = asyncio.create_task(
                schedules.define_job(
                    second, "racy", "noop", {}, defaults={"priority": 4}, actor="b"
                )
            )

            async def waiting() -> bool:
                cur = await db.execute(
                    "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", [pid]
                )
                return await cur.fetchone() is not None

            await eventually("the second definer waits on the first", waiting, within=10)
        after = await racing
    finally:
        await first.close()
        await second.close()
    assert after["id"] == made["id"]
    assert after["priority"] == 4
    cur = await db.execute("SELECT count(*) AS n FROM pgsched.schedule WHERE name = 'racy'")
    assert (await cur.fetchone())["n"] == 1
    assert await replay.verify(db) == []
