"""The privilege matrix: what each application role may do, and the append-only event table."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from app.db import store
from tests.conftest import connect
from tests.factories import make_schedule

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
        "pgsched_worker": {"SELECT", "UPDATE"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.run": {
        "pgsched_api": {"SELECT", "INSERT", "UPDATE"},
        "pgsched_worker": {"SELECT", "INSERT", "UPDATE"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.worker": {
        "pgsched_api": {"SELECT"},
        "pgsched_worker": {"SELECT", "INSERT", "UPDATE"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.leader": {
        "pgsched_api": {"SELECT"},
        "pgsched_worker": {"SELECT", "INSERT", "UPDATE", "DELETE"},
        "pgsched_operator": {"SELECT"},
    },
    "pgsched.api_token": {
        "pgsched_api": {"SELECT"},
        "pgsched_worker": set(),
        "pgsched_operator": set(),
    },
}


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
        (claimed,) = await store.claim_runs(
            worker,
            worker_id=1,
            queues=["default"],
            limit=5,
            lease_seconds=30,
            actor="worker:1",
            now=None,
        )
        done = await store.succeed_run(
            worker, store.Lease.of(claimed), {"status": "ok"}, actor="worker:1", now=None
        )
        assert done is not None and done["state"] == "succeeded"
    finally:
        await api.close()
        await worker.close()
