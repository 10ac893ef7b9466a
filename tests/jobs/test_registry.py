"""`@pgsched.job` (app.jobs, ADR 0027): the registry, the client's kwargs check before any
statement, `run_context` and its `cancelled()`, and `pgsched worker --import`."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

import pgsched
from pgsched.app import jobs
from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.domain import schedule
from pgsched.app.domain.errors import InvalidRequest, NotFound
from pgsched.app.jobs import Job, Registry
from pgsched.app.services import schedules
from pgsched.workers.jobs import execute
from tests.cli.test_cli_input import _cli
from tests.conftest import ROOT
from tests.jobs import registered_jobs
from tests.jobs.conftest import MakeCtx
from tests.support.worker import eventually, running_worker, started_worker, wait_state

MOD = "tests.jobs.registered_jobs"


# -- the registry ----------------------------------------------------------------------------


def test_the_decorator_registers_the_definition_and_returns_the_function() -> None:
    entry = jobs.registry.get("registry-greet")
    assert entry is not None
    assert entry.function is registered_jobs.greet  # unchanged: still callable as it was
    assert (entry.job_type, entry.payload) == ("python", {"target": f"{MOD}:greet"})
    definition = entry.definition()
    assert (definition["queue"], definition["priority"], definition["max_attempts"]) == (
        "registry",
        2,
        4,
    )
    assert definition["timeout_seconds"] == 20
    # What the decorator did not say is the schedule's default, so removing an option resets it.
    assert definition["retry_delay_seconds"] == schedule.DEFAULTS["retry_delay_seconds"]
    assert pgsched.job is jobs.job and pgsched.RunContext is jobs.RunContext


def test_a_name_registered_to_another_function_is_refused() -> None:
    registry = Registry()

    def first() -> None: ...

    registry.add(Job("dup", first, "m:first"))
    registry.add(Job("dup", first, "m:first"))  # the same target again (a reload): replaced
    with pytest.raises(ValueError, match="'dup' is already registered to m:first, not m:other"):
        registry.add(Job("dup", first, "m:other"))
    assert [j.target for j in registry] == ["m:first"]
    with pytest.raises(ValueError, match="already registered"):
        pgsched.job("registry-greet")(registered_jobs.anything)


def test_only_functions_an_import_path_reaches_are_registered() -> None:
    registry = Registry()

    def local() -> None: ...

    with pytest.raises(TypeError, match="not reachable by an import path"):
        jobs.job("local", registry=registry)(local)
    with pytest.raises(TypeError, match="not reachable by an import path"):
        jobs.job("lambda", registry=registry)(lambda: None)
    local.__module__ = "__main__"
    local.__qualname__ = "main_job"
    with pytest.raises(TypeError, match="defined in __main__"):
        jobs.job("main", registry=registry)(local)
    assert len(registry) == 0


@pytest.mark.parametrize(
    ("job", "kwargs", "field", "says"),
    [
        ("registry-greet", {"dsn": "x"}, "payload.kwargs.name", "is required by"),
        ("registry-greet", {"dsn": "x", "name": "a", "nme": "b"}, "payload.kwargs.nme", "not a"),
        ("registry-greet-async", {"name": "a"}, "payload.kwargs.dsn", "is required by"),
        ("registry-greet", [], "payload.kwargs", "must be an object"),
    ],
)
def test_kwargs_that_do_not_bind_are_refused_by_name(
    job: str, kwargs: object, field: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        jobs.registry.check_payload(job, {"kwargs": kwargs})
    assert refused.value.field == field
    assert says in str(refused.value)


def test_kwargs_that_bind_pass_and_what_the_worker_injects_counts_as_given() -> None:
    check = jobs.registry.check_payload
    check("registry-greet", {"kwargs": {"dsn": "x", "name": "a"}})  # idempotency_key: injected
    check("registry-greet-async", {"kwargs": {"dsn": "x", "name": "a"}})  # run_context too
    check("registry-anything", {"kwargs": {"any": 1, "thing": 2}})  # **kwargs takes anything
    check("registry-anything", None)
    check("not-registered-here", {"kwargs": {"whatever": 1}})  # the worker checks it
    check(12, {"kwargs": {"whatever": 1}})  # a definition's id: not a registered name
    with pytest.raises(InvalidRequest, match=r"payload\.kwargs\.dsn"):
        check("registry-greet", None)  # no kwargs at all: the required ones are missing


async def test_run_context_is_reserved_in_payload_kwargs(make_ctx: MakeCtx) -> None:
    outcome = await execute(
        "python", {"target": f"{MOD}:anything", "kwargs": {"run_context": 1}}, make_ctx()
    )
    assert outcome.status == "failed"
    assert outcome.error is not None and "payload.kwargs.run_context" in outcome.error


async def test_the_context_is_cancelled_when_the_timeout_stops_a_sync_job(
    db: Conn, dsn: str, make_ctx: MakeCtx
) -> None:
    payload = {"target": f"{MOD}:wait_sync", "kwargs": {"dsn": dsn}}
    outcome = await execute("python", payload, make_ctx(timeout_seconds=0.5))
    assert outcome.status == "timeout"

    async def notes() -> list[str] | None:
        cur = await db.execute("SELECT note FROM public.job_log ORDER BY id")
        got = [r["note"] for r in await cur.fetchall()]
        return got if len(got) == 2 else None

    assert await eventually("the thread saw cancelled()", notes) == ["started", "cancelled=True"]


# -- the client checks before the statement --------------------------------------------------


async def test_the_client_refuses_bad_kwargs_before_any_statement(dsn: str) -> None:
    """The definition does not exist in this database: a check made after reading it would be
    NotFound. Refused first, by the argument's name, in the sync and the async client."""
    with pgsched.Client.connect(dsn) as client:
        with pytest.raises(InvalidRequest) as refused:
            client.enqueue("registry-greet", {"kwargs": {"dsn": dsn}})
        assert refused.value.field == "payload.kwargs.name"
        with pytest.raises(InvalidRequest):
            client.enqueue_many("registry-greet", [{"payload": {"kwargs": {"nope": 1}}}])
        # Binds: no definition yet, so the client defines the registered job, then enqueues.
        run = client.enqueue("registry-greet", {"kwargs": {"dsn": dsn, "name": "a"}})
        assert run.created
        with pytest.raises(NotFound):  # a job nobody registered or defined
            client.enqueue("registry-nobody", {"kwargs": {}})
    async with await pgsched.AsyncClient.connect(dsn) as aclient:
        with pytest.raises(InvalidRequest) as refused:
            await aclient.enqueue("registry-greet-async", {"kwargs": {"name": "a"}})
        assert refused.value.field == "payload.kwargs.dsn"


# -- the worker runs them --------------------------------------------------------------------


async def _define_registered(conn: Conn) -> None:
    """What `pgsched worker --import` does once the modules are imported (app.cli)."""
    for entry in jobs.registry:
        if entry.target.startswith(MOD):
            await schedules.define_job(
                conn,
                entry.name,
                entry.job_type,
                entry.payload,
                defaults=entry.definition(),
                actor="test",
            )


async def _notes(db: Conn, key: str) -> list[str]:
    cur = await db.execute(
        "SELECT note FROM public.job_log WHERE idempotency_key = %s ORDER BY id", [key]
    )
    return [r["note"] for r in await cur.fetchall()]


async def test_a_worker_runs_registered_sync_and_async_jobs_with_their_kwargs(
    db: Conn, dsn: str
) -> None:
    await _define_registered(db)
    async with await pgsched.AsyncClient.connect(dsn) as client:
        sync = await client.enqueue("registry-greet", {"kwargs": {"dsn": dsn, "name": "ada"}})
        assert (sync.queue, sync.priority, sync.max_attempts) == ("registry", 2, 4)
        coro = await client.enqueue("registry-greet-async", {"kwargs": {"dsn": dsn, "name": "bo"}})
    async with running_worker(dsn, queues=("registry",)):
        done = await wait_state(db, sync.id, {"succeeded", "failed", "dead"})
        done_async = await wait_state(db, coro.id, {"succeeded", "failed", "dead"})
    assert done["state"] == "succeeded", done["outcome"]
    assert done_async["state"] == "succeeded", done_async["outcome"]
    assert await _notes(db, f"{sync.id}:1") == ["hello ada"]
    assert await _notes(db, f"{coro.id}:1") == ["async bo"]


@pytest.mark.parametrize("job", ["registry-wait-sync", "registry-wait-async"])
async def test_cancelled_turns_true_when_the_worker_stops_the_job(
    db: Conn, dsn: str, job: str
) -> None:
    await _define_registered(db)
    async with await pgsched.AsyncClient.connect(dsn) as client:
        run = await client.enqueue(job, {"kwargs": {"dsn": dsn}})
    key = f"{run.id}:1"
    async with running_worker(dsn, queues=("registry",)):

        async def started() -> bool:
            return await _notes(db, key) == ["started"]

        await eventually("the job started", started)
        await store.cancel_run(db, run.id, actor="op", now=None)
        done = await wait_state(db, run.id, {"cancelled", "succeeded", "failed", "dead"})

        async def seen() -> list[str] | None:
            notes = await _notes(db, key)
            return notes if len(notes) == 2 else None

        assert await eventually("the job saw it", seen) == ["started", "cancelled=True"]
    assert done["state"] == "cancelled"


# -- pgsched worker --import -----------------------------------------------------------------


def _worker_until_registered(dsn: str, *args: str) -> None:
    """`pgsched worker --import ...` until it has registered, then SIGTERM: exit 0."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PGSCHED_", "OTEL_"))},
        "DATABASE_URL": dsn,
        "OTEL_SDK_DISABLED": "true",
        "PGSCHED_QUEUES": "registry",
    }
    before = _workers(dsn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgsched", "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = 60.0
        waited = 0.0
        while _workers(dsn) == before:
            assert proc.poll() is None, proc.communicate()
            assert waited < deadline, "the worker did not register"
            waited += 0.1
            time.sleep(0.1)  # a poll interval, not a wait for something
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def _workers(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pgsched.worker").fetchone()
    assert row is not None
    return int(row[0])


def _schedule_events(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute(
            "SELECT s.name, e.type FROM pgsched.event e JOIN pgsched.schedule s"
            " ON s.id = e.stream_id WHERE e.stream = 'schedule' AND s.kind = 'job' ORDER BY e.id"
        ).fetchall()
    return [(str(n), str(t)) for n, t in rows]


def test_worker_import_defines_the_jobs_once_and_again_changes_nothing(dsn: str) -> None:
    _worker_until_registered(dsn, "--import", MOD)
    first = _schedule_events(dsn)
    names = sorted(e.name for e in jobs.registry if e.target.startswith(MOD))
    assert sorted(n for n, _ in first) == names
    assert {t for _, t in first} == {"schedule.created"}
    _worker_until_registered(dsn, "--import", MOD)  # the same definitions: no change
    assert _schedule_events(dsn) == first
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT job_type, payload, queue, priority, max_attempts FROM pgsched.schedule"
            " WHERE name = 'registry-greet'"
        ).fetchone()
    assert row == ("python", {"target": f"{MOD}:greet"}, "registry", 2, 4)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--import", "no_such_module_pgsched"], {}, "--import: cannot import no_such_module"),
        ([], {"PGSCHED_IMPORT": "no_such_module_pgsched"}, "PGSCHED_IMPORT: cannot import"),
        (["--import", "not a module"], {}, "--import must be comma-separated module names"),
    ],
)
def test_worker_import_of_a_missing_module_is_one_line_exit_2(
    dsn: str, args: list[str], env: dict[str, str], says: str
) -> None:
    out = _cli(dsn, "worker", *args, **env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("pgsched: ") and says in lines[0], lines[0]


async def test_a_worker_role_that_may_not_define_jobs_says_so_in_one_line(dsn: str) -> None:
    """Defining a job writes a schedule and its event, which pgsched_worker may not (ADR 0021):
    the worker says which job, why, and what to do, instead of the driver's message."""
    from tests.db.roles import login_role

    async with login_role(dsn, "pgsched_worker") as worker_dsn:
        out = await asyncio.to_thread(_cli, worker_dsn, "worker", "--import", MOD)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("pgsched: job registry-"), lines[0]
    assert "may not define jobs" in lines[0], lines[0]


def test_run_imports_pgsched_import_too(dsn: str) -> None:
    """`pgsched run` takes the application's jobs from PGSCHED_IMPORT, and refuses a module that
    does not import before anything starts."""
    out = _cli(dsn, "run", PGSCHED_IMPORT="no_such_module_pgsched", PGSCHED_HTTP_PORT="1")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("pgsched: PGSCHED_IMPORT: cannot import no_such_module"), lines


def test_a_reloaded_module_registers_its_jobs_again() -> None:
    """The same targets again (importlib.reload): replaced, not refused as duplicates."""
    importlib.reload(registered_jobs)
    assert jobs.registry.get("registry-greet") is not None
    assert asyncio.iscoroutinefunction(registered_jobs.greet_async)


def test_decorating_loads_no_database_driver() -> None:
    """`pgsched.job` comes on first use and is pure (app.jobs): a module of jobs imports no
    psycopg for it, nor the services."""
    code = (
        "import sys, pgsched; pgsched.job, pgsched.RunContext;"
        " assert 'psycopg' not in sys.modules and 'pgsched.app.services' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("job", ["registry-wait-sync", "registry-wait-async"])
async def test_cancelled_turns_true_when_the_worker_shuts_down_past_its_grace(
    db: Conn, dsn: str, job: str
) -> None:
    await _define_registered(db)
    async with await pgsched.AsyncClient.connect(dsn) as client:
        run = await client.enqueue(job, {"kwargs": {"dsn": dsn}})
    key = f"{run.id}:1"
    async with started_worker(dsn, queues=("registry",), grace_seconds=0) as running:

        async def started() -> bool:
            return await _notes(db, key) == ["started"]

        await eventually("the job started", started)
        running.stop.set()
        assert await running.ended() is None

    async def seen() -> list[str] | None:
        notes = await _notes(db, key)
        return notes if len(notes) == 2 else None

    assert await eventually("the job saw it", seen) == ["started", "cancelled=True"]
    released = await wait_state(db, run.id, {"waiting", "succeeded", "failed", "dead"})
    assert released["state"] == "waiting"  # released without using up the attempt
