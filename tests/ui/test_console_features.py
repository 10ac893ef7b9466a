"""The console meets the other features (ADR 0030 with 0031, 0032, 0033): schedules' health,
labels, owner and dependencies on the list and the schedule page, the declaring manager, blocked
and skipped runs on the run pages, and the schedules-health component on the overview. Over
HTTP, against a real PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app import ticker
from pgsched.app.db import replay
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
