"""The console meets the other features (ADR 0030 with 0031, 0032, 0033): schedules' health,
labels, owner and dependencies on the list and the schedule page, the declaring manager, blocked
and skipped runs on the run pages, and the schedules-health component on the overview. Over
HTTP, against a real PostgreSQL."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta

from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app import ticker
from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.domain import schedule
from pgsched.app.services import schedules
from tests.api.conftest import Tokens
from tests.api.test_runs import _dead_run
from tests.factories import clear_of_month_ends, make_schedule
from tests.ui.conftest import csrf_of, sign_in

Client = AsyncTestClient[Litestar]


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr[ >].*?</tr>", html, flags=re.S)


async def _define(db: Conn, name: str, now: datetime | None = None, **over: object) -> int:
    fields = {"name": name, "job_type": "noop", "cron": "0 * * * *", **over}
    row = await schedules.create(db, fields | schedule.timing(fields), actor="t", now=now)
    return int(row["id"])


async def test_schedules_show_health_labels_owner_and_filter_by_them(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    dead = await _dead_run(db, max_attempts=1)
    # A stricter policy judges the same runs at once (ADR 0032): one dead run is unhealthy.
    await schedules.update(
        db,
        dead["schedule_id"],
        {"name": "broken", "health_policy": {"consecutive_failures": 1}},
        if_match=None,
        actor="t",
        now=None,
    )
    await make_schedule(db, name="tidy", owner="ops", labels={"team": "data"})
    await sign_in(api, role_tokens, "viewer")

    listed = (await api.get("/ui/schedules")).text
    (row,) = [r for r in _rows(listed) if ">broken<" in r]
    assert 'class="state unhealthy"' in row and 'title="consecutive_failures"' in row
    (row,) = [r for r in _rows(listed) if ">tidy<" in r]
    assert 'class="state healthy"' in row and "ops" in row and "team=data" in row
    unhealthy = (await api.get("/ui/schedules?health=unhealthy")).text
    assert ">broken<" in unhealthy and ">tidy<" not in unhealthy
    assert "option selected>unhealthy" in unhealthy  # the form keeps its filter
    by_label = (await api.get("/ui/schedules?label=team:data")).text
    assert ">tidy<" in by_label and ">broken<" not in by_label
    assert ">tidy<" in (await api.get("/ui/schedules?label=team")).text
    assert "No schedule matches" in (await api.get("/ui/schedules?label=team:x")).text
    by_owner = (await api.get("/ui/schedules?owner=ops")).text
    assert ">tidy<" in by_owner and ">broken<" not in by_owner
    bad = await api.get("/ui/schedules?health=sick")
    assert bad.status_code == 422 and "health: must be one of healthy, degraded, unhealthy" in (
        bad.text
    )
    bad = await api.get("/ui/schedules?label=no%20spaces")
    assert bad.status_code == 422 and "label: must be a label key" in bad.text

    overview = (await api.get("/ui/")).text
    (row,) = [r for r in _rows(overview) if "schedules" in r and "state" in r]
    assert 'class="state unhealthy"' in row and "1 unhealthy" in row
    assert 'href="/ui/schedules?health=unhealthy"' in row


async def test_the_schedule_page_shows_health_dependencies_and_its_manager(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    up = await _define(db, "extract")
    down = await _define(
        db,
        "load",
        depends_on=["extract"],
        dependency_timeout_seconds=600,
        pause_after_failures=4,
        description="loads what extract fetched",
        owner="data-team",
        labels={"tier": "1"},
        managed_by="etl",
        health_policy={**schedule.HEALTH_POLICY, "consecutive_failures": 5},
    )
    await sign_in(api, role_tokens, "viewer")
    text = (await api.get(f"/ui/schedules/{down}")).text
    depends = re.search(r'data-testid="depends-on">(.*?)</td>', text, flags=re.S)
    assert depends is not None
    assert f'<a href="/ui/schedules/{up}">extract</a>' in depends.group(1)
    assert "waits up to 10.0 min, then skips" in depends.group(1)
    assert 'data-testid="health"><span class="state healthy">healthy</span>' in text
    assert "unhealthy after 5 dead in a row" in text and "pauses after 4 dead in a row" in text
    assert "loads what extract fetched" in text and "data-team" in text and "tier=1" in text
    managed = re.search(r'data-testid="managed-by">(.*?)</td>', text, flags=re.S)
    assert managed is not None and "etl" in managed.group(1) and "pgsched apply" in managed.group(1)
    plain = (await api.get(f"/ui/schedules/{up}")).text
    assert "managed-by" not in plain and '<span class="muted">nothing</span>' in plain


async def test_blocked_and_skipped_runs_on_the_run_pages(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hour = clear_of_month_ends(now, timedelta(hours=1))  # its events in this month's partition
    before = hour - timedelta(seconds=1)
    up = await _define(db, "upstream", now=before)
    await _define(
        db, "downstream", now=before, depends_on=["upstream"], dependency_timeout_seconds=60
    )
    await ticker.tick(db, now=hour)
    csrf = await sign_in(api, role_tokens, "operator")
    listed = await api.get("/ui/runs?state=blocked")
    assert listed.status_code == 200 and "<option selected>blocked</option>" in listed.text
    (row,) = [r for r in _rows(listed.text) if ">downstream<" in r]
    run_id = int(re.findall(r'href="/ui/runs/(\d+)"', row)[0])
    assert 'class="state blocked"' in row and "Cancel" in row
    assert 'data-testid="bulk-cancel"' in listed.text  # a blocked set can be cancelled
    page = (await api.get(f"/ui/runs/{run_id}")).text
    waits = re.search(r'data-testid="waits-for">(.*?)</td>', page, flags=re.S)
    assert waits is not None and f'<a href="/ui/schedules/{up}">upstream</a> due' in waits.group(1)
    assert "Waits until" in page and "/cancel" in page

    await ticker.tick(db, now=hour + timedelta(minutes=2))  # upstream never ran: skipped
    skipped = (await api.get("/ui/runs?state=skipped")).text
    assert f'href="/ui/runs/{run_id}"' in skipped and 'class="state skipped"' in skipped
    page = (await api.get(f"/ui/runs/{run_id}")).text
    assert "Skipped because" in page and "for upstream &#39;upstream&#39;" in page
    assert "/cancel" not in page
    assert csrf_of(page) == csrf
    assert await replay.verify(db) == []


def _created_id(response: object) -> int:
    location = response.headers["location"]  # type: ignore[attr-defined]
    return int(location.split("/")[3].split("?")[0])


def _edit_form(page: str, schedule_id: int) -> dict[str, str]:
    """Every field of the edit form as the page renders it (what a browser sends back)."""
    form = page.split(f'action="/ui/schedules/{schedule_id}/edit">')[1].split(
        "</form>", maxsplit=1
    )[0]
    data = dict(re.findall(r'<input (?:type="[^"]+" )?name="([^"]+)" value="([^"]*)"', form))
    data.update(re.findall(r'<select name="([^"]+)">.*?<option selected>([^<]+)</option>', form))
    data.update(re.findall(r'<textarea name="([^"]+)"[^>]*>([^<]*)</textarea>', form))
    return {k: html.unescape(v) for k, v in data.items()}


async def test_the_create_form_sets_dependencies_health_labels_and_text(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    up = await _define(db, "extract")
    await _define(db, "clean")
    csrf = await sign_in(api, role_tokens, "admin")
    created = await api.post(
        "/ui/schedules",
        data={
            "csrf": csrf,
            "name": "load",
            "job_type": "noop",
            "cron": "5 * * * *",
            "depends_on": " extract, clean ,extract",
            "dependency_timeout_seconds": "600",
            "consecutive_failures": "5",
            "failure_rate": "0.25",
            "window_runs": "40",
            "overdue_seconds": "never",
            "pause_after_failures": "7",
            "owner": "data-team",
            "labels": "team:data, tier:1",
            "description": "loads what extract fetched",
        },
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    row = await schedules.live(db, _created_id(created))
    clean = await schedules.live(db, up + 1)
    assert [int(u) for u in row["depends_on"]] == [up, clean["id"]]
    assert row["dependency_timeout_seconds"] == 600 and row["pause_after_failures"] == 7
    assert row["health_policy"] == {
        "consecutive_failures": 5,
        "failure_rate": 0.25,
        "window_runs": 40,
        "overdue_seconds": None,
    }
    assert row["labels"] == {"team": "data", "tier": "1"} and row["owner"] == "data-team"
    assert row["description"] == "loads what extract fetched"
    # Empty "More" fields are the defaults, as if the API had not been given them.
    plain = await api.post(
        "/ui/schedules",
        data={
            "csrf": csrf,
            "name": "plain",
            "job_type": "noop",
            **dict.fromkeys(
                ("depends_on", "dependency_timeout_seconds", "consecutive_failures"), ""
            ),
            **dict.fromkeys(("overdue_seconds", "pause_after_failures", "labels", "owner"), ""),
        },
        follow_redirects=False,
    )
    assert plain.status_code == 303, plain.text
    row = await schedules.live(db, _created_id(plain))
    assert row["depends_on"] == [] and row["labels"] == {} and row["owner"] is None
    assert row["health_policy"] == dict(schedule.HEALTH_POLICY)
    assert row["pause_after_failures"] is None
    assert row["dependency_timeout_seconds"] == schedule.DEFAULTS["dependency_timeout_seconds"]
    assert await replay.verify(db) == []


async def test_the_create_form_names_a_bad_label_or_number_and_keeps_what_was_typed(
    api: Client, role_tokens: Tokens
) -> None:
    csrf = await sign_in(api, role_tokens, "admin")
    typed = {"csrf": csrf, "name": "typed", "job_type": "noop", "owner": "ops"}
    for field, value, said in (
        ("labels", "team=data\nno-separator", "labels: &#39;no-separator&#39; is not key=value"),
        ("labels", "team:a, team:b", "labels: label &#39;team&#39; is given twice"),
        ("labels", "bad key=x", "labels.bad key: a label key must be"),
        ("consecutive_failures", "³", "consecutive_failures: must be a whole number"),
        ("failure_rate", "½", "failure_rate: must be a number"),
        ("failure_rate", "2", "failure_rate"),
        ("overdue_seconds", "soon", "overdue_seconds: must be a number"),
        ("pause_after_failures", "never ever", "pause_after_failures: must be a whole number"),
        ("dependency_timeout_seconds", "never", "dependency_timeout_seconds: must be a whole"),
        ("depends_on", "nowhere", "depends_on"),
    ):
        bad = await api.post("/ui/schedules", data={**typed, field: value})
        assert bad.status_code == 422, (field, value)
        error = re.search(r'role="alert">(.*?)</div>', bad.text, flags=re.S)
        assert error is not None and said in error.group(1), (field, value, error)
        assert 'value="typed"' in bad.text and 'value="ops"' in bad.text
        assert html.escape(value.split("\n")[-1]) in bad.text  # the form keeps it


async def test_the_edit_form_changes_labels_dependencies_and_health(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    up = await _define(db, "extract")
    other = await _define(db, "clean")
    down = await _define(
        db,
        "load",
        depends_on=["extract"],
        labels={"team": "data", "note": "a, b"},
        health_policy={**schedule.HEALTH_POLICY, "overdue_seconds": None},
        managed_by="etl",
    )
    csrf = await sign_in(api, role_tokens, "admin")
    base = f"/ui/schedules/{down}"
    page = (await api.get(base)).text
    managed = re.search(r'data-testid="managed-edit">(.*?)</p>', page, flags=re.S)
    assert managed is not None and "pgsched apply" in managed.group(1)
    form = _edit_form(page, down)
    assert form["depends_on"] == "extract" and form["overdue_seconds"] == "never"
    assert form["labels"] == "note=a, b\nteam=data\n" and form["pause_after_failures"] == "never"
    assert form["csrf"] == csrf
    # Sent back unchanged, nothing changes (a label value's comma included).
    same = await api.post(f"{base}/edit", data=form, follow_redirects=False)
    assert same.status_code == 303 and "done=" not in same.headers["location"]
    version = (await schedules.live(db, down))["version"]

    changed = await api.post(
        f"{base}/edit",
        data={
            **form,
            "depends_on": "extract, clean",
            "labels": "team:ml",
            "consecutive_failures": "2",
            "overdue_seconds": "",  # emptied: back to the default
            "pause_after_failures": "3",
            "description": "now with clean",
        },
        follow_redirects=False,
    )
    assert changed.status_code == 303, changed.text
    row = await schedules.live(db, down)
    assert row["version"] == version + 1
    assert [int(u) for u in row["depends_on"]] == [up, other]
    assert row["labels"] == {"team": "ml"} and row["pause_after_failures"] == 3
    assert row["health_policy"] == {**schedule.HEALTH_POLICY, "consecutive_failures": 2}
    assert row["description"] == "now with clean" and row["owner"] is None
    event = (await store.reads.stream_events(db, "schedule", down))[-1]
    assert event["type"] == "schedule.updated", event
    assert set(event["data"]) - {"updated_at", "version"} == {
        "depends_on",
        "description",
        "health_policy",
        "labels",
        "pause_after_failures",
    }  # only what the form changed

    form = _edit_form((await api.get(base)).text, down)
    # Emptied upstreams and labels clear them.
    cleared = await api.post(
        f"{base}/edit", data={**form, "depends_on": "", "labels": ""}, follow_redirects=False
    )
    assert cleared.status_code == 303, cleared.text
    row = await schedules.live(db, down)
    assert row["depends_on"] == [] and row["labels"] == {}
    assert await replay.verify(db) == []


def _edit_error(text: str) -> str:
    error = re.search(r'data-testid="edit-error">(.*?)</div>', text, flags=re.S)
    assert error is not None, text
    return error.group(1)


async def test_a_refused_edit_names_the_field_and_keeps_what_was_typed(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    up = await _define(db, "extract")
    down = await _define(db, "load", depends_on=["extract"])
    csrf = await sign_in(api, role_tokens, "admin")
    base = f"/ui/schedules/{down}"
    form = _edit_form((await api.get(base)).text, down)
    version = int(form["version"])
    await schedules.update(db, down, {"owner": "ops"}, if_match=None, actor="t", now=None)
    stale = await api.post(f"{base}/edit", data={**form, "labels": "team=x"})
    assert stale.status_code == 412 and "stale" in _edit_error(stale.text)
    # The refused form keeps its old version: sent again, it is still refused.
    assert _edit_form(stale.text, down)["version"] == str(version)
    form = _edit_form((await api.get(base)).text, down)
    typed = {**form, "window_runs": "1e3", "labels": "team=typed\n", "queue": "other"}
    bad = await api.post(f"{base}/edit", data=typed)
    assert bad.status_code == 422
    assert "window_runs: must be a whole number" in _edit_error(bad.text)
    assert _edit_form(bad.text, down) == {**typed, "csrf": csrf}
    bad = await api.post(f"{base}/edit", data={**form, "labels": "=x", "owner": "dev"})
    assert bad.status_code == 422
    assert "labels: &#39;=x&#39; is not key=value" in _edit_error(bad.text)
    assert _edit_form(bad.text, down)["owner"] == "dev"
    # extract -> load already: extract depending on load closes a cycle.
    up_form = _edit_form((await api.get(f"/ui/schedules/{up}")).text, up)
    cycle = await api.post(f"/ui/schedules/{up}/edit", data={**up_form, "depends_on": "load"})
    assert cycle.status_code == 422
    error = _edit_error(cycle.text)
    assert error.startswith("depends_on: would make a cycle: extract -&gt; load -&gt; extract")
    assert _edit_form(cycle.text, up)["depends_on"] == "load"
    assert (await schedules.live(db, up))["depends_on"] == []
    assert (await schedules.live(db, down))["version"] == version + 1  # none applied
    assert await replay.verify(db) == []
