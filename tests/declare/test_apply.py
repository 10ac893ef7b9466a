"""`pgsched apply` (app.declare): a file of schedules made so in one transaction, each change one
event by actor `apply` with the file's digest; dry runs, pruning, export and the seed 004 example.

Against a real PostgreSQL, in the rolled-back tier: apply's transaction is a savepoint here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.declare import document, plan
from pgsched.app.declare.document import DeclarationError
from pgsched.app.domain import schedule as schedule_domain
from pgsched.app.services import schedules
from tests.conftest import ROOT

pytestmark = pytest.mark.tx

ENV = {"API_HOST": "api.example.com"}
FILE = b"""
manager: team-a
defaults:
  timezone: Europe/Berlin
  retry_backoff: {delay_seconds: 30}
  labels: {team: data}
schedules:
  - name: posts
    job_type: http
    payload: {url: "https://${API_HOST}/posts"}
    cron: "*/30 * * * *"
    labels: {tier: "1"}
  - name: users
    job_type: noop
    interval_seconds: 600
    max_attempts: 5
    retry_backoff: {factor: 3}
"""


def _doc(raw: bytes = FILE, env: dict[str, str] | None = None, **kw: Any) -> document.Document:
    return document.parse(raw, kw.pop("fmt", "yaml"), manager="fallback", env=env or ENV, **kw)


async def _events(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM pgsched.event")
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def _schedule(conn: Conn, name: str) -> dict[str, Any]:
    found = await store.schedules.live_schedule_id(conn, name)
    assert found is not None, name
    row = await store.get_schedule(conn, found)
    assert row is not None
    return dict(row)


def _actions(changes: list[plan.Change]) -> dict[str, str]:
    return {c.name: c.action for c in changes}


async def _clean(conn: Conn) -> None:
    assert [str(d) for d in await replay.verify(conn)] == []


async def test_apply_creates_with_defaults_overrides_and_one_event_each(conn: Conn) -> None:
    before = await _events(conn)
    changes = await plan.apply(conn, _doc())
    assert _actions(changes) == {"posts": "create", "users": "create"}
    posts, users = await _schedule(conn, "posts"), await _schedule(conn, "users")
    assert posts["payload"] == {"url": "https://api.example.com/posts"}
    assert posts["timezone"] == users["timezone"] == "Europe/Berlin"
    assert posts["labels"] == {"team": "data", "tier": "1"}  # merged key by key
    assert (users["max_attempts"], users["retry_delay_seconds"], users["retry_factor"]) == (
        5,
        30.0,
        3.0,
    )
    assert posts["managed_by"] == users["managed_by"] == "team-a"
    cur = await conn.execute(
        "SELECT type, actor, meta FROM pgsched.event WHERE id > "
        "(SELECT max(id) FROM pgsched.event) - %s ORDER BY id",
        (await _events(conn) - before,),
    )
    events = await cur.fetchall()
    assert [e["type"] for e in events] == ["schedule.created", "schedule.created"]
    digest = hashlib.sha256(FILE).hexdigest()
    assert all(e["actor"] == "apply" and e["meta"]["file_sha256"] == digest for e in events)
    await _clean(conn)


async def test_applying_again_is_unchanged_and_records_nothing(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    before = await _events(conn)
    changes = await plan.apply(conn, _doc())
    assert _actions(changes) == {"posts": "unchanged", "users": "unchanged"}
    assert await _events(conn) == before


async def test_a_changed_file_updates_with_a_field_diff(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    before = await _events(conn)
    changed = FILE.replace(b'"*/30 * * * *"', b'"*/10 * * * *"').replace(
        b'{tier: "1"}', b'{tier: "2"}'
    )
    changes = await plan.apply(conn, _doc(changed))
    by_name = {c.name: c for c in changes}
    assert by_name["users"].action == "unchanged"
    assert by_name["posts"].action == "update"
    assert by_name["posts"].diff == {
        "cron": ("*/30 * * * *", "*/10 * * * *"),
        "labels": ({"team": "data", "tier": "1"}, {"team": "data", "tier": "2"}),
    }
    assert await _events(conn) == before + 1  # one event for the one changed schedule
    cur = await conn.execute(
        "SELECT type, actor, data, meta FROM pgsched.event ORDER BY id DESC LIMIT 1"
    )
    event = await cur.fetchone()
    assert event is not None
    assert (event["type"], event["actor"]) == ("schedule.updated", "apply")
    assert event["data"]["cron"] == "*/10 * * * *"
    assert event["meta"]["file_sha256"] == hashlib.sha256(changed).hexdigest()
    assert (await _schedule(conn, "posts"))["cron"] == "*/10 * * * *"
    lines = plan.describe(changes, _doc(changed), dry_run=False)
    assert '    cron: "*/30 * * * *" -> "*/10 * * * *"' in lines
    await _clean(conn)


async def test_dry_run_prints_the_plan_and_changes_nothing(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    before = await _events(conn)
    changed = FILE.replace(b"max_attempts: 5", b"max_attempts: 6") + (
        b"  - name: extra\n    job_type: noop\n    cron: '0 1 * * *'\n"
    )
    changes = await plan.apply(conn, _doc(changed), dry_run=True, prune=True)
    assert _actions(changes) == {"posts": "unchanged", "users": "update", "extra": "create"}
    assert await _events(conn) == before
    assert (await _schedule(conn, "users"))["max_attempts"] == 5
    assert await store.schedules.live_schedule_id(conn, "extra") is None
    summary = plan.describe(changes, _doc(changed), dry_run=True)[-1]
    assert "nothing changed: 1 to create, 1 to update, 0 to delete, 1 unchanged" in summary


async def test_prune_deletes_only_what_this_manager_declared(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    # Made over the API (no manager), and declared by another file: never pruned here.
    await schedules.create(
        conn,
        {"name": "by-hand", "job_type": "noop", "kind": "cron", "cron": "0 3 * * *"},
        actor="admin",
        now=None,
    )
    other = FILE.replace(b"manager: team-a", b"manager: team-b").replace(b"posts", b"b-posts")
    await plan.apply(conn, _doc(other.replace(b"name: users", b"name: b-users")))
    only_posts = FILE.split(b"  - name: users")[0]
    kept = await plan.apply(conn, _doc(only_posts))  # without --prune: nothing deleted
    assert _actions(kept) == {"posts": "unchanged"}
    assert await store.schedules.live_schedule_id(conn, "users") is not None
    changes = await plan.apply(conn, _doc(only_posts), prune=True)
    assert _actions(changes) == {"posts": "unchanged", "users": "delete"}
    assert await store.schedules.live_schedule_id(conn, "users") is None
    for name in ("by-hand", "b-posts", "b-users"):
        assert await store.schedules.live_schedule_id(conn, name) is not None, name
    await _clean(conn)


async def test_a_schedule_of_another_manager_is_refused(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    with pytest.raises(DeclarationError, match="declared by manager 'team-a', not 'team-b'"):
        await plan.apply(conn, _doc(FILE.replace(b"manager: team-a", b"manager: team-b")))


async def test_a_file_with_one_bad_schedule_applies_nothing(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    before = await _events(conn)
    bad = FILE.replace(b"max_attempts: 5", b"max_attempts: 7") + (
        b"  - name: third\n    job_type: noop\n    cron: '61 * * * *'\n"
    )
    with pytest.raises(DeclarationError, match=r"^schedule 'third': cron: ") as refused:
        await plan.apply(conn, _doc(bad))
    assert "\n" not in str(refused.value)
    assert await _events(conn) == before
    assert (await _schedule(conn, "users"))["max_attempts"] == 5  # the 2nd was not updated
    assert await store.schedules.live_schedule_id(conn, "third") is None


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
async def test_export_then_apply_changes_nothing(conn: Conn, fmt: document.Format) -> None:
    await plan.apply(conn, _doc())
    once = FILE.replace(b"manager: team-a", b"manager: team-c").replace(b"posts", b"c-once")
    once = once.replace(b'cron: "*/30 * * * *"', b"run_at: '2099-01-01T00:00:00Z'")
    await plan.apply(conn, _doc(once.replace(b"name: users", b"name: c-job\n    enabled: false")))
    defaults = {"timeout_seconds": 90.0}  # the operator's, as export and apply both read them
    rows = await plan.declared(conn, "team-a")
    text = document.render(rows, fmt, manager="team-a", defaults=defaults)
    before = await _events(conn)
    changes = await plan.apply(conn, _doc(text.encode(), fmt=fmt), defaults=defaults, prune=True)
    assert _actions(changes) == {"posts": "unchanged", "users": "unchanged"}
    everything = document.render(await plan.declared(conn, None), fmt, manager=None)
    assert (
        "c-once" in everything and "posts" in everything and "pgsched.maintenance" not in everything
    )
    c_rows = await plan.declared(conn, "team-c")
    again = document.render(c_rows, fmt, manager="team-c")
    changes = await plan.apply(conn, _doc(again.encode(), fmt=fmt))
    assert set(_actions(changes).values()) == {"unchanged"}
    assert await _events(conn) == before


async def test_the_seed_004_example_applies(conn: Conn) -> None:
    path = ROOT / "docs" / "examples" / "seed004.yaml"
    declared = document.load(path, {"SCHEDULER_RETRY_ATTEMPTS": "4"})
    changes = await plan.apply(conn, declared)
    assert _actions(changes) == {
        "json_placeholder_posts": "create",
        "json_placeholder_users": "create",
        "json_placeholder_todos": "create",
    }
    posts = await _schedule(conn, "json_placeholder_posts")
    assert (posts["cron"], posts["timeout_seconds"], posts["max_attempts"]) == (
        "*/30 * * * *",
        300.0,
        2,
    )
    assert (posts["retry_delay_seconds"], posts["retry_factor"]) == (30.0, 2.0)
    users = await _schedule(conn, "json_placeholder_users")
    assert (users["max_attempts"], users["retry_delay_seconds"]) == (4, 60.0)  # ${...} and default
    todos = await _schedule(conn, "json_placeholder_todos")
    assert todos["payload"]["headers"] == {"Authorization": {"$secret": "logingest_api_token"}}
    assert todos["labels"] == {"app": "logingest", "source": "todos"}
    assert {posts["managed_by"], posts["owner"], posts["queue"]} == {
        "logingest",
        "data-platform",
        "ingest",
    }
    assert _actions(await plan.apply(conn, declared)) == dict.fromkeys(
        ("json_placeholder_posts", "json_placeholder_users", "json_placeholder_todos"),
        "unchanged",
    )
    await _clean(conn)


async def test_operator_defaults_fill_what_the_file_leaves_out(conn: Conn) -> None:
    raw = b"schedules:\n  - {name: plain, job_type: noop, cron: '0 4 * * *'}\n"
    defaults = {"timezone": "America/New_York", "max_attempts": 7, "timeout_seconds": 45.0}
    await plan.apply(conn, _doc(raw), defaults=defaults)
    row = await _schedule(conn, "plain")
    assert (row["timezone"], row["max_attempts"], row["timeout_seconds"]) == (
        "America/New_York",
        7,
        45.0,
    )
    assert row["managed_by"] == "fallback"  # no `manager`: the file's stem (here, given)


def test_environment_interpolation() -> None:
    raw = (
        b"schedules:\n  - name: n\n    job_type: http\n"
        b"    payload: {url: 'https://${HOST}/${PATH_PART:-x}', body: '$${HOST} stays'}\n"
        b"    max_attempts: ${ATTEMPTS}\n"
    )
    (fields,) = _doc(raw, {"HOST": "h.example", "ATTEMPTS": "4"}).schedules
    assert fields["payload"] == {"url": "https://h.example/x", "body": "${HOST} stays"}
    assert fields["max_attempts"] == 4
    with pytest.raises(DeclarationError) as missing:
        _doc(raw, {"HOST": "h.example"})
    assert str(missing.value) == (
        "schedules[0].max_attempts: environment variable ATTEMPTS is not set"
    )


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (
            b"schedules: [{name: a, job_type: noop}, {name: a, job_type: noop}]",
            "'a': declared twice",
        ),
        (b"schedules:\n  - name: a\n    name: b\n    job_type: noop\n", "key 'name' given twice"),
        (b"schedules: [{name: a, job_type: noop, max_attempts: 0}]", "max_attempts: Expected"),
        (b"schedules: [{name: a, job_type: noop, colour: red}]", "unknown field `colour`"),
        (b"defaults: {cron: '* * * * *'}\nschedules: []", "defaults.cron: is given per schedule"),
        (b"schedule: []", "schedule: unknown key"),
        (b"schedules: [{name: a, job_type: noop, run_at: 5}]", "run_at: must be an RFC 3339"),
        (b"schedules: [\n", "not valid YAML: line"),
    ],
)
def test_bad_files_are_one_line_naming_the_place(raw: bytes, says: str) -> None:
    with pytest.raises(DeclarationError) as refused:
        _doc(raw)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


# -- dependencies, health policy and the circuit breaker in a file (ADR 0031, 0032, 0033) -----

GRAPH = b"""
manager: graph
defaults:
  job_type: noop
  health_policy: {window_runs: 10}
schedules:
  - {name: d, cron: "0 * * * *", depends_on: [b, c]}
  - {name: z, cron: "0 * * * *", depends_on: [y]}
  - {name: c, cron: "0 * * * *", depends_on: [a]}
  - {name: y, cron: "0 * * * *", depends_on: [x]}
  - {name: b, cron: "0 * * * *", depends_on: [a], health_policy: {consecutive_failures: 5}}
  - {name: a, cron: "0 * * * *", pause_after_failures: 4}
  - {name: x, cron: "0 * * * *"}
"""


async def test_a_chain_and_a_diamond_apply_upstreams_first(conn: Conn) -> None:
    changes = await plan.apply(conn, _doc(GRAPH))
    # Upstreams first, then the file's order: each schedule is created after what it needs.
    assert [c.name for c in changes] == ["a", "x", "c", "y", "b", "d", "z"]
    rows = {n: await _schedule(conn, n) for n in "abcdxyz"}
    ids = {n: r["id"] for n, r in rows.items()}
    assert rows["d"]["depends_on"] == [ids["b"], ids["c"]]
    assert rows["b"]["depends_on"] == rows["c"]["depends_on"] == [ids["a"]]
    assert rows["z"]["depends_on"] == [ids["y"]] and rows["y"]["depends_on"] == [ids["x"]]
    for down, ups in {"d": "bc", "b": "a", "c": "a", "z": "y", "y": "x"}.items():
        assert all(ids[u] < ids[down] for u in ups), down
    # Partial policies merge over the file's default, then the built-in thresholds.
    assert rows["b"]["health_policy"]["consecutive_failures"] == 5
    assert rows["b"]["health_policy"]["window_runs"] == rows["a"]["health_policy"]["window_runs"]
    assert rows["a"]["health_policy"]["window_runs"] == 10
    assert rows["a"]["pause_after_failures"] == 4
    before = await _events(conn)
    again = await plan.apply(conn, _doc(GRAPH))
    assert set(_actions(again).values()) == {"unchanged"}  # depends_on compared by name
    assert await _events(conn) == before
    await _clean(conn)


async def test_an_update_names_upstreams_in_its_diff_and_reorders_edges(conn: Conn) -> None:
    first = b"""
manager: flip
defaults: {job_type: noop}
schedules:
  - {name: p, cron: "0 * * * *", depends_on: [q]}
  - {name: q, cron: "0 * * * *"}
"""
    await plan.apply(conn, _doc(first))
    # Reversed: q now depends on p, and p on nothing; applied in this order, no step makes
    # a cycle (p first drops its edge, then q gains one).
    flipped = first.replace(b"depends_on: [q]}", b"}").replace(
        b'- {name: q, cron: "0 * * * *"}', b'- {name: q, cron: "0 * * * *", depends_on: [p]}'
    )
    changes = await plan.apply(conn, _doc(flipped))
    assert [(c.name, c.diff) for c in changes] == [
        ("p", {"depends_on": (["q"], [])}),
        ("q", {"depends_on": ([], ["p"])}),
    ]
    q = await _schedule(conn, "q")
    assert q["depends_on"] == [(await _schedule(conn, "p"))["id"]]
    await _clean(conn)


async def test_a_cycle_of_three_in_a_file_is_refused_and_named(conn: Conn) -> None:
    before = await _events(conn)
    cycle = b"""
manager: loop
defaults: {job_type: noop}
schedules:
  - {name: a, interval_seconds: 600, depends_on: [b]}
  - {name: b, interval_seconds: 600, depends_on: [c]}
  - {name: c, interval_seconds: 600, depends_on: [a]}
"""
    with pytest.raises(DeclarationError) as refused:
        await plan.apply(conn, _doc(cycle))
    assert str(refused.value) == "schedule 'a': depends_on: would make a cycle: a -> b -> c -> a"
    with pytest.raises(DeclarationError):
        await plan.apply(conn, _doc(cycle), dry_run=True)
    assert await _events(conn) == before
    assert await store.schedules.live_schedule_id(conn, "a") is None


async def test_a_cycle_with_a_live_schedule_and_an_unknown_upstream_are_refused(
    conn: Conn,
) -> None:
    alone = b"""
manager: m
schedules:
  - {name: f, job_type: noop, interval_seconds: 600}
"""
    await plan.apply(conn, _doc(alone))
    await schedules.create(
        conn,
        {
            "name": "api-made",
            "job_type": "noop",
            "kind": "interval",
            "interval_seconds": 600,
            "depends_on": ["f"],
        },
        actor="test",
        now=None,
    )
    before = await _events(conn)
    with pytest.raises(DeclarationError) as refused:
        await plan.apply(conn, _doc(alone.replace(b"600}", b"600, depends_on: [api-made]}")))
    assert str(refused.value) == (
        "schedule 'f': depends_on: would make a cycle: f -> api-made -> f"
    )
    with pytest.raises(DeclarationError) as unknown:
        await plan.apply(conn, _doc(alone.replace(b"600}", b"600, depends_on: [nowhere]}")))
    assert str(unknown.value) == "schedule 'f': depends_on: 'nowhere' is no live schedule"
    assert await _events(conn) == before


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
async def test_export_then_apply_is_a_no_op_with_dependencies_and_health(
    conn: Conn, fmt: document.Format
) -> None:
    graph = GRAPH.replace(b"manager: graph", b"manager: exported")
    graph = graph.replace(b"{name: x,", b"{name: x, labels: {team: data}, owner: ops,")
    await plan.apply(conn, _doc(graph))
    await schedules.create(  # an upstream outside the manager is named too
        conn,
        {"name": "outside", "job_type": "noop", "kind": "cron", "cron": "0 * * * *"},
        actor="t",
        now=None,
    )
    await schedules.update(
        conn,
        (await _schedule(conn, "x"))["id"],
        {"depends_on": ["outside"]},
        if_match=None,
        actor="t",
        now=None,
    )
    text = document.render(await plan.declared(conn, "exported"), fmt, manager="exported")
    assert "outside" in text and "consecutive_failures" in text and "pause_after_failures" in text
    reread = _doc(text.encode(), fmt=fmt)
    by_name = {f["name"]: f for f in reread.schedules}
    assert by_name["d"]["depends_on"] == ["b", "c"]
    assert by_name["x"]["depends_on"] == ["outside"]
    assert by_name["x"]["labels"] == {"team": "data"}
    before = await _events(conn)
    changes = await plan.apply(conn, reread, prune=True)
    assert set(_actions(changes).values()) == {"unchanged"}
    assert await _events(conn) == before


async def test_prune_deletes_downstreams_first_and_keeps_an_upstream_others_need(
    conn: Conn,
) -> None:
    three = b"""
manager: pruned
defaults: {job_type: noop}
schedules:
  - {name: keep, interval_seconds: 600}
  - {name: mid, interval_seconds: 600}
  - {name: leaf, interval_seconds: 600, depends_on: [mid]}
"""
    await plan.apply(conn, _doc(three))
    only_keep = three.split(b"  - {name: mid")[0]
    changes = await plan.apply(conn, _doc(only_keep), prune=True)
    assert [(c.name, c.action) for c in changes] == [
        ("keep", "unchanged"),
        ("leaf", "delete"),
        ("mid", "delete"),
    ]
    await plan.apply(conn, _doc(three))
    await schedules.create(  # an API-made schedule needs mid: mid is not pruned under it
        conn,
        {"name": "api", "job_type": "noop", "kind": "interval", "interval_seconds": 60}
        | {"depends_on": ["mid"]},
        actor="t",
        now=None,
    )
    before = await _events(conn)
    with pytest.raises(DeclarationError) as refused:
        await plan.apply(conn, _doc(only_keep), prune=True, dry_run=True)
    assert str(refused.value) == (
        "schedule 'mid': cannot be pruned while 'api' depend(s) on it: drop those edges first"
    )
    assert await _events(conn) == before
    await _clean(conn)


# -- review fixes: pauses, `${` in stored text, pre-0022 rows, prune and adoption ------------


async def test_apply_leaves_a_pause_alone_unless_the_file_gives_enabled(conn: Conn) -> None:
    await plan.apply(conn, _doc())
    posts = await _schedule(conn, "posts")
    await schedules.pause(conn, posts["id"], actor="breaker", now=None)  # as the breaker does
    before = await _events(conn)
    changes = await plan.apply(conn, _doc())
    assert _actions(changes) == {"posts": "unchanged", "users": "unchanged"}
    assert (await _schedule(conn, "posts"))["enabled"] is False
    assert await _events(conn) == before
    users = await _schedule(conn, "users")
    paused = FILE.replace(b"    max_attempts: 5", b"    max_attempts: 5\n    enabled: false")
    changes = await plan.apply(conn, _doc(paused))  # given: the file pauses
    assert {c.name: c.diff for c in changes}["users"] == {"enabled": (True, False)}
    assert (await _schedule(conn, "users"))["enabled"] is False
    resumed = FILE.replace(b'labels: {tier: "1"}', b'labels: {tier: "1"}\n    enabled: true')
    changes = await plan.apply(conn, _doc(resumed))  # given: the file resumes; users untouched
    assert {c.name: c.diff for c in changes}["posts"] == {"enabled": (False, True)}
    assert (await _schedule(conn, "posts"))["enabled"] is True
    assert (await _schedule(conn, "users"))["enabled"] is False
    assert (await _schedule(conn, "users"))["version"] == users["version"] + 1
    await _clean(conn)


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
async def test_export_escapes_stored_dollar_braces_so_apply_never_fills_them(
    conn: Conn, fmt: document.Format
) -> None:
    raw = b"""
manager: literal
schedules:
  - name: hook
    job_type: http
    payload: {url: "https://h/$${TOKEN}", headers: {X-Tag: "$$${KEEP}", X-Odd: "$${1}"}}
    description: "reads $${TOKEN} from the vault"
    cron: "0 * * * *"
"""
    await plan.apply(conn, _doc(raw))
    hook = await _schedule(conn, "hook")
    assert hook["payload"] == {
        "url": "https://h/${TOKEN}",
        "headers": {"X-Tag": "$${KEEP}", "X-Odd": "${1}"},
    }
    text = document.render(await plan.declared(conn, "literal"), fmt, manager="literal")
    assert "https://h/$${TOKEN}" in text
    before = await _events(conn)
    env = {"TOKEN": "s3cret", "KEEP": "no", "1": "no"}
    changes = await plan.apply(conn, _doc(text.encode(), env, fmt=fmt), prune=True)
    assert _actions(changes) == {"hook": "unchanged"}
    assert await _events(conn) == before
    assert "s3cret" not in str(await _schedule(conn, "hook"))


async def test_a_row_from_before_0022_exports_and_compares_as_its_defaults(conn: Conn) -> None:
    raw = b"manager: old\nschedules:\n  - {name: old, job_type: noop, cron: '0 2 * * *'}\n"
    await plan.apply(conn, _doc(raw))
    # As migration 0022 leaves a row stored before it (its events do not name the columns).
    await conn.execute(
        "UPDATE pgsched.schedule SET depends_on = NULL, dependency_timeout_seconds = NULL"
        " WHERE name = 'old'"
    )
    row = await _schedule(conn, "old")
    assert (row["depends_on"], row["dependency_timeout_seconds"]) == (None, None)
    assert (
        schedule_domain.changes(row, {"depends_on": [], "dependency_timeout_seconds": 3600}) == {}
    )
    assert schedule_domain.changes(row, {"dependency_timeout_seconds": 60}) == {
        "dependency_timeout_seconds": 60
    }
    for fmt in document.FORMATS:
        text = document.render(await plan.declared(conn, "old"), fmt, manager="old")
        assert "depends_on" not in text and "dependency_timeout" not in text, text
        changes = await plan.apply(conn, _doc(text.encode(), fmt=fmt))
        assert _actions(changes) == {"old": "unchanged"}


async def test_prune_needs_a_named_manager(conn: Conn) -> None:
    unnamed = FILE.replace(b"manager: team-a\n", b"")
    await plan.apply(conn, _doc(unnamed))  # without --prune the stem stands in
    before = await _events(conn)
    for dry_run in (True, False):
        with pytest.raises(DeclarationError) as refused:
            await plan.apply(conn, _doc(unnamed), prune=True, dry_run=dry_run)
        assert str(refused.value).startswith("--prune needs the file to name its `manager:`")
    assert await _events(conn) == before


async def test_an_api_made_schedule_is_adopted_only_when_asked(conn: Conn) -> None:
    made = await schedules.create(
        conn,
        {"name": "users", "job_type": "noop", "kind": "interval", "interval_seconds": 600},
        actor="admin",
        now=None,
    )
    before = await _events(conn)
    for dry_run in (True, False):
        with pytest.raises(DeclarationError) as refused:
            await plan.apply(conn, _doc(), dry_run=dry_run)
        assert str(refused.value).startswith(
            "schedule 'users' was made outside apply (API, CLI or console): manager 'team-a' would "
            "adopt it; pass --adopt"
        )
    assert await _events(conn) == before
    assert await store.schedules.live_schedule_id(conn, "posts") is None  # nothing applied
    changes = await plan.apply(conn, _doc(), adopt=True)
    users = {c.name: c for c in changes}["users"]
    assert users.action == "update" and users.diff["managed_by"] == (None, "team-a")
    assert (await _schedule(conn, "users"))["id"] == made["id"]
    await _clean(conn)
