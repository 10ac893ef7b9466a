"""Migrations: one head, from empty to head, and a down/up round trip that changes nothing."""

from __future__ import annotations

import shutil
import subprocess

import psycopg
import pytest
from alembic.script import ScriptDirectory

from pgsched.app.db import migrations
from pgsched.app.db.sql import query
from tests.conftest import ROOT, migrate


def _schema_dump(dsn: str) -> str:
    """The database's schema as pg_dump sees it: tables, functions, triggers, grants, partitions."""
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed to compare schemas"
    out = subprocess.run(
        [pg_dump, "--schema-only", "--no-owner", "--dbname", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # pg_dump 15 prints a random \restrict key in newer minors; drop lines that vary per run.
    return "\n".join(
        line
        for line in out.splitlines()
        if not line.startswith("\\restrict") and not line.startswith("\\unrestrict")
    )


def test_single_head() -> None:
    heads = ScriptDirectory.from_config(migrations.config()).get_heads()
    assert len(heads) == 1, heads


def test_upgrade_downgrade_upgrade_leaves_an_identical_schema(empty_dsn: str) -> None:
    migrate(empty_dsn)
    first = _schema_dump(empty_dsn)
    assert "CREATE TABLE pgsched.event" in first
    migrate(empty_dsn, "base", down=True)
    with psycopg.connect(empty_dsn) as c:
        assert c.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgsched'"
        ).fetchone() == (0,)
    migrate(empty_dsn)
    assert _schema_dump(empty_dsn) == first


def test_alembic_cli_reads_database_url(empty_dsn: str) -> None:
    env = {"PATH": str(ROOT / ".venv" / "bin") + ":/usr/bin:/bin", "DATABASE_URL": empty_dsn}
    alembic = shutil.which("alembic", path=env["PATH"])
    if alembic is None:
        pytest.fail("alembic is not installed next to the tests' python")
    subprocess.run([alembic, "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    with psycopg.connect(empty_dsn) as c:
        (version,) = c.execute("SELECT version_num FROM alembic_version").fetchone() or ("",)
    assert version == migrations.head()


# Superseded objects dropped by 0017 (sql/partitions/README.md, "Dropping a function").
DROPPED_FUNCTIONS = (
    "pgsched.maintain_v1(integer,interval,interval,timestamptz)",
    "pgsched.drop_month_partitions_before_v1(regclass,date)",
)
DROPPED_TABLES = ("pgsched.leader",)


def _existing(dsn: str) -> list[str]:
    """Which of the objects 0017 drops exist in the database."""
    with psycopg.connect(dsn) as c:
        functions = c.execute(
            "SELECT f FROM unnest(%s::text[]) f WHERE to_regprocedure(f) IS NOT NULL ORDER BY f",
            [list(DROPPED_FUNCTIONS)],
        ).fetchall()
        tables = c.execute(
            "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL ORDER BY t",
            [list(DROPPED_TABLES)],
        ).fetchall()
    return [r[0] for r in functions + tables]


def test_superseded_objects_are_gone_at_head_and_come_back_on_downgrade(empty_dsn: str) -> None:
    migrate(empty_dsn, "0016")
    assert _existing(empty_dsn) == sorted(DROPPED_FUNCTIONS) + list(DROPPED_TABLES)
    at_0016 = _schema_dump(empty_dsn)
    migrate(empty_dsn)
    assert _existing(empty_dsn) == []
    # The downgrade restores them exactly: definitions, owners' grants and all.
    migrate(empty_dsn, "0016", down=True)
    assert _schema_dump(empty_dsn) == at_0016
    # pg_dump --no-owner leaves owners out: the SECURITY DEFINER maintain_v1 must be the owner's.
    with psycopg.connect(empty_dsn) as c:
        owners = c.execute(
            "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc"
            " WHERE oid = ANY(%s::regprocedure[])"
            " UNION SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = ANY(%s::regclass[])",
            [list(DROPPED_FUNCTIONS), list(DROPPED_TABLES)],
        ).fetchall()
    assert owners == [("pgsched_owner",)]


OLD_TARGET = "app.maintenance:run_builtin"


def _builtin(dsn: str) -> tuple[str, list[tuple[str, object]]]:
    """The built-in schedule's target, and the payloads its schedule.updated events recorded."""
    with psycopg.connect(dsn) as c:
        target, sid = c.execute(
            "SELECT payload ->> 'target', id FROM pgsched.schedule"
            " WHERE name = 'pgsched.maintenance' AND deleted_at IS NULL"
        ).fetchone()
        events = c.execute(
            "SELECT data #>> '{payload,target}', meta #>> '{old,payload,target}' FROM pgsched.event"
            " WHERE stream = 'schedule' AND stream_id = %s AND type = 'schedule.updated'"
            " ORDER BY id",
            [sid],
        ).fetchall()
    return target, events


def test_0018_moves_the_builtin_target_into_the_package_and_back(empty_dsn: str) -> None:
    from pgsched.app.db.store import jsonb
    from pgsched.app.domain.schedule import builtin_definition
    from pgsched.app.maintenance import BUILTIN_TARGET, Retention, builtin_job

    migrate(empty_dsn, "0017")
    # The built-in as a release at 0017 installed it: the same schedule, the old import path.
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        now = c.execute("SELECT now()").fetchone()[0]
        fields = builtin_definition(builtin_job(Retention()), now)
        fields["payload"]["target"] = OLD_TARGET
        c.execute(
            "SELECT pgsched.install_builtin_maintenance_v1(%s::jsonb)",
            [jsonb(fields)],
        )
    assert _builtin(empty_dsn) == (OLD_TARGET, [])

    migrate(empty_dsn)
    assert BUILTIN_TARGET == "pgsched.app.maintenance:run_builtin"
    assert _builtin(empty_dsn) == (BUILTIN_TARGET, [(BUILTIN_TARGET, OLD_TARGET)])
    # The function now accepts the new path, and only it.
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        fields["payload"]["target"] = BUILTIN_TARGET
        c.execute(
            "SELECT pgsched.install_builtin_maintenance_v1(%s::jsonb)",
            [jsonb(fields)],
        )
        fields["payload"]["target"] = OLD_TARGET
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute(
                "SELECT pgsched.install_builtin_maintenance_v1(%s::jsonb)",
                [jsonb(fields)],
            )

    migrate(empty_dsn, "0017", down=True)
    target, events = _builtin(empty_dsn)
    assert target == OLD_TARGET
    assert events[-1] == (OLD_TARGET, BUILTIN_TARGET)


def test_0019_round_trips_and_keeps_earlier_runs_verifiable(empty_dsn: str) -> None:
    """0019 (ADR 0027) up, down and up again leaves the schema as it found it each way; runs
    made before it still fold into their rows (their events carry no payload, timeout or
    occurrence), and its downgrade puts back the one unique key ad-hoc runs shared."""
    migrate(empty_dsn, "0018")
    before = _schema_dump(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute(
            "INSERT INTO pgsched.schedule (name, job_type, kind, interval_seconds, created_at,"
            " updated_at) VALUES ('s', 'noop', 'interval', 60, now(), now())"
        )
        c.execute(
            "WITH r AS (INSERT INTO pgsched.run (schedule_id, due_at, origin, state, queue,"
            " priority, available_at, max_attempts, created_at)"
            " SELECT id, now(), 'schedule', 'waiting', 'default', 0, now(), 3, now()"
            " FROM pgsched.schedule RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'run', r.id, 'run.created', 'test', to_jsonb(r) FROM r"
        )
    migrate(empty_dsn)
    after = _schema_dump(empty_dsn)
    assert "occurrence boolean GENERATED ALWAYS" in after
    assert "run_by_key" in after
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        diff = c.execute(query("diff_runs")).fetchall()
        assert diff == []
    migrate(empty_dsn, "0018", down=True)
    assert _schema_dump(empty_dsn) == before
    migrate(empty_dsn)
    assert _schema_dump(empty_dsn) == after


def test_0022_keeps_earlier_schedules_verifiable_and_refuses_to_drop_blocked_runs(
    empty_dsn: str,
) -> None:
    """0022 (ADR 0033) adds the dependency columns as NULL, which is what the events of a
    schedule stored before it fold to, so verify stays clean; its downgrade fails while a run
    is blocked (nothing is deleted) and otherwise leaves the schema as it found it."""
    migrate(empty_dsn, "0019")
    before = _schema_dump(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute(
            "WITH s AS (INSERT INTO pgsched.schedule (name, job_type, kind, interval_seconds,"
            " created_at, updated_at) VALUES ('s', 'noop', 'interval', 60, now(), now())"
            " RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'schedule', s.id, 'schedule.created', 'test', to_jsonb(s) FROM s"
        )
        c.execute(
            "WITH r AS (INSERT INTO pgsched.run (schedule_id, due_at, origin, state, queue,"
            " priority, available_at, max_attempts, created_at)"
            " SELECT id, now(), 'schedule', 'waiting', 'default', 0, now(), 3, now()"
            " FROM pgsched.schedule RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'run', r.id, 'run.created', 'test', to_jsonb(r) FROM r"
        )
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute(query("diff_schedules")).fetchall() == []
        assert c.execute(query("diff_runs")).fetchall() == []
        # Added NOT VALID (no scan under ACCESS EXCLUSIVE), then validated after the commit.
        assert c.execute(
            "SELECT DISTINCT convalidated FROM pg_constraint WHERE conname = 'run_state_check'"
        ).fetchall() == [(True,)]
        c.execute("UPDATE pgsched.run SET state = 'blocked'")
    with pytest.raises(psycopg.errors.CheckViolation):
        migrate(empty_dsn, "0019", down=True)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute("UPDATE pgsched.run SET state = 'waiting'")
    migrate(empty_dsn, "0019", down=True)
    assert _schema_dump(empty_dsn) == before


def test_0022_redone_restates_the_dependency_columns_its_downgrade_dropped(
    empty_dsn: str,
) -> None:
    """A schedule stored at 0022 has events naming depends_on and dependency_timeout_seconds;
    0022 down then up leaves both NULL in the row, so the upgrade says so in one
    schedule.migrated event and verify stays clean. A first upgrade appends none."""
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute(
            "SELECT count(*) FROM pgsched.event WHERE type = 'schedule.migrated'"
            " AND meta ->> 'migration' = '0022'"
        ).fetchone() == (0,)
        c.execute(
            "WITH s AS (INSERT INTO pgsched.schedule (name, job_type, kind, interval_seconds,"
            " created_at, updated_at, depends_on, dependency_timeout_seconds)"
            " VALUES ('s', 'noop', 'interval', 60, now(), now(), '{}', 3600) RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'schedule', s.id, 'schedule.created', 'test', to_jsonb(s) FROM s"
        )
    migrate(empty_dsn, "0021", down=True)
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute(
            "SELECT depends_on, dependency_timeout_seconds FROM pgsched.schedule WHERE name = 's'"
        ).fetchone() == (None, None)
        assert c.execute(query("diff_schedules")).fetchall() == []
        assert c.execute(
            "SELECT count(*) FROM pgsched.event WHERE type = 'schedule.migrated'"
            " AND meta ->> 'migration' = '0022'"
        ).fetchone() == (1,)


def test_0020_round_trips_and_keeps_earlier_schedules_verifiable(empty_dsn: str) -> None:
    """0020 (ADR 0031) up, down and up again leaves the schema as it found it each way; a
    schedule made before it keeps NULL description, owner, labels and manager, which its events
    (silent on those columns) fold to as well, while a new one gets `{}` for labels."""
    migrate(empty_dsn, "0019")
    before = _schema_dump(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute(
            "WITH s AS (INSERT INTO pgsched.schedule (name, job_type, kind, interval_seconds,"
            " created_at, updated_at) VALUES ('old', 'noop', 'interval', 60, now(), now())"
            " RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'schedule', s.id, 'schedule.created', 'test', to_jsonb(s) FROM s"
        )
    migrate(empty_dsn, "0020")
    after = _schema_dump(empty_dsn)
    assert "schedule_labels" in after and "managed_by text" in after
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute(query("diff_schedules")).fetchall() == []
        old = c.execute(
            "SELECT description, owner, labels, managed_by FROM pgsched.schedule"
        ).fetchone()
        assert old == (None, None, None, None)
        c.execute(
            "INSERT INTO pgsched.schedule (name, job_type, kind, interval_seconds, created_at,"
            " updated_at) VALUES ('by-hand', 'noop', 'interval', 60, now(), now())"
        )
        new = c.execute("SELECT labels FROM pgsched.schedule WHERE name = 'by-hand'").fetchone()
        assert new == ({},)
        c.execute("DELETE FROM pgsched.schedule WHERE name = 'by-hand'")
    migrate(empty_dsn, "0019", down=True)
    assert _schema_dump(empty_dsn) == before
    migrate(empty_dsn, "0020")
    assert _schema_dump(empty_dsn) == after


def test_0020_redone_restates_the_metadata_columns_its_downgrade_dropped(
    empty_dsn: str,
) -> None:
    """A schedule stored at 0020 has events naming description, owner, labels and managed_by;
    0020 down then up leaves all four NULL in the row, so the upgrade says so in one
    schedule.migrated event and verify stays clean. A first upgrade appends none."""
    count = (
        "SELECT count(*) FROM pgsched.event WHERE type = 'schedule.migrated'"
        " AND meta ->> 'migration' = '0020'"
    )
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute(count).fetchone() == (0,)
        c.execute(
            "WITH s AS (INSERT INTO pgsched.schedule (name, job_type, kind, interval_seconds,"
            " created_at, updated_at, description, owner, labels, managed_by, depends_on,"
            " dependency_timeout_seconds) VALUES ('s', 'noop', 'interval', 60, now(), now(),"
            " 'feeds the report', 'ann', '{\"team\": \"data\"}', 'etl', '{}', 3600) RETURNING *)"
            " INSERT INTO pgsched.event (occurred_at, stream, stream_id, type, actor, data)"
            " SELECT now(), 'schedule', s.id, 'schedule.created', 'test', to_jsonb(s) FROM s"
        )
    migrate(empty_dsn, "0019", down=True)
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute(
            "SELECT description, owner, labels, managed_by FROM pgsched.schedule WHERE name = 's'"
        ).fetchone() == (None, None, None, None)
        assert c.execute(query("diff_schedules")).fetchall() == []
        assert c.execute(count).fetchone() == (1,)
