"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright's bundled
driver; `playwright install` is never run): an operator's session end to end, and a viewer's.

The API runs under uvicorn on a real socket (tests/api/conftest.py `live_server`); the test
changes the database beside it, as a worker or another operator would, and watches the page
follow without a reload. Each main page is saved as a screenshot in $PGSCHED_SCREENSHOT_DIR, or
in the test's tmp_path. Without chromium the tests are skipped, except where
PGSCHED_REQUIRE_BROWSER=1 (CI, .ci/run): there a missing browser fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn, Lease
from pgsched.app.services import schedules
from tests.api.conftest import LiveServer, Tokens
from tests.support import store as test_store

CHROMIUM = os.environ.get("PGSCHED_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
pytestmark = pytest.mark.timeout(300)


def _missing(why: str) -> None:
    if os.environ.get("PGSCHED_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why} (PGSCHED_REQUIRE_BROWSER=1): bash scripts/setup test installs it")
    pytest.skip(why)


def _chromium_present() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed")
    if not _chromium_present():
        _missing(f"chromium not found at {CHROMIUM} (Debian packages chromium, chromium-driver)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("PGSCHED_SCREENSHOT_DIR") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


async def _page(browser: Any, server: LiveServer) -> Any:
    context = await browser.new_context(
        base_url=server.url, viewport={"width": 1366, "height": 860}
    )
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


async def _sign_in(page: Any, token: str) -> None:
    await page.goto("/ui/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui/")


async def _fail_until_dead(db: Conn, run_id: int, attempts: int) -> None:
    """Fail the run's every attempt, through the store as a worker would."""
    worker = await store.register_worker(
        db, name="w-test", host="h", pid=1, version="t", queues=["default"], slots=4, now=None
    )
    for attempt in range(attempts):
        at = datetime.now(UTC) + timedelta(minutes=attempt + 1)
        claimed = await test_store.claim_runs(
            db,
            worker_id=worker["id"],
            queues=["default"],
            limit=1,
            lease_seconds=30,
            actor="w-test",
            now=at,
        )
        assert [c["id"] for c in claimed] == [run_id]
        outcome = {"status": "failed", "error": "connection refused by the mail server"}
        lease = Lease.of(claimed[0])
        assert await test_store.fail_run(db, lease, outcome, jitter=0.5, actor="w-test", now=at)


async def _create_schedule(page: Any, shots: Path) -> int:
    """Create a schedule from the form; its id."""
    await page.click("text=Schedules")
    await page.click("text=New schedule")
    await page.fill("input[name=name]", "send-invoices")
    await page.select_option("select[name=job_type]", "noop")
    await page.fill("input[name=cron]", "0 6 * * 1-5")
    await page.fill("input[name=timezone]", "Europe/Berlin")
    await page.fill("input[name=max_attempts]", "2")
    await page.click("text=Create")
    await page.wait_for_selector("text=Created.")
    schedule_id = int(page.url.split("/ui/schedules/")[1].split("?")[0])
    assert "Europe/Berlin" in await page.inner_text("main")
    await page.screenshot(path=shots / "schedule.png", full_page=True)
    return schedule_id


async def _bulk_cancel(page: Any, db: Conn, schedule_id: int, shots: Path) -> None:
    """Bulk-cancel a filtered set: this schedule's waiting runs (one triggered here, three
    more and the retried)."""
    await page.goto(f"/ui/schedules/{schedule_id}")
    # A double click on "Trigger now" posts once (the button waits for the next page), and the
    # form's idempotency key would make a second post the same run anyway.
    await page.dblclick("button:has-text('Trigger now')")
    await page.wait_for_selector("text=Triggered: a run is waiting.")
    for _ in range(3):
        await schedules.trigger(db, schedule_id, actor="elsewhere", now=None)
    await page.goto("/ui/")
    await page.wait_for_selector("#overview >> text=w-test")
    await page.screenshot(path=shots / "overview.png", full_page=True)
    await page.goto(f"/ui/runs?state=waiting&schedule_id={schedule_id}")
    await page.screenshot(path=shots / "runs.png", full_page=True)
    await page.click("[data-testid=bulk-cancel]")
    assert "5 run(s) match" in await page.inner_text("[data-testid=bulk-count]")
    await page.screenshot(path=shots / "bulk-confirm.png", full_page=True)
    await page.click("[data-testid=bulk-confirm]")
    result = await page.inner_text("[data-testid=bulk-result]")
    assert result.startswith("5 run(s) cancelled; 0 running run(s) asked to stop; 0 skipped")
    left = await store.reads.page_runs(db, limit=10, schedule_id=schedule_id, states=["waiting"])
    assert left == []


async def test_an_operator_session_end_to_end(
    browser: Any,
    live_server: LiveServer,
    role_tokens: Tokens,
    db: Conn,
    shots: Path,
) -> None:
    page = await _page(browser, live_server)
    await page.goto("/ui/")
    await page.wait_for_url("**/ui/login")  # no session: the sign-in page
    await page.screenshot(path=shots / "login.png")
    await _sign_in(page, role_tokens.values["admin"])
    await page.wait_for_selector("#live-state.on")

    schedule_id = await _create_schedule(page, shots)

    # Its run appears live: triggered elsewhere, shown without a reload.
    await page.evaluate("window.__sameDocument = true")
    await page.wait_for_selector("#live-state.on")
    run, _ = await schedules.trigger(db, schedule_id, actor="elsewhere", now=None)
    await page.wait_for_selector(f"#schedule-runs >> text=#{run['id']}")
    assert await page.evaluate("window.__sameDocument === true")

    # The run fails every attempt: it shows up in the dead letter page, live too.
    await page.goto("/ui/dead")
    await page.wait_for_selector("#live-state.on")
    await page.evaluate("window.__sameDocument = true")
    await _fail_until_dead(db, run["id"], attempts=2)
    retry = page.locator(f"[data-testid=retry-{run['id']}]")
    await retry.wait_for()
    assert await page.evaluate("window.__sameDocument === true")
    assert "connection refused by the mail server" in await page.inner_text("#run-table")
    await page.screenshot(path=shots / "dead-letter.png", full_page=True)
    await page.goto(f"/ui/runs/{run['id']}")
    await page.screenshot(path=shots / "run.png", full_page=True)
    await page.go_back()

    # Retry it from the dead letter page.
    await retry.click()
    await page.wait_for_selector("text=Sent back to waiting.")
    got = await store.reads.run_detail(db, run["id"])
    assert got is not None and got["state"] == "waiting"

    await _bulk_cancel(page, db, schedule_id, shots)

    await page.goto("/ui/workers")
    await page.screenshot(path=shots / "workers.png", full_page=True)
    await page.goto("/ui/schedules")
    await page.screenshot(path=shots / "schedules.png", full_page=True)
    # The API reference, read with the session (no token pasted), from the nav.
    await page.click("header >> text=API")
    trigger = "#reference summary:has-text('/v1/schedules/{schedule_id}/trigger')"
    await page.wait_for_selector(trigger)
    await page.screenshot(path=shots / "api.png", full_page=True)
    assert await replay.verify(db) == []
    for name in ("login", "overview", "schedule", "dead-letter", "run", "runs", "workers", "api"):
        assert (shots / f"{name}.png").stat().st_size > 5_000, name


async def test_a_viewer_sees_no_retry_button(
    browser: Any,
    live_server: LiveServer,
    role_tokens: Tokens,
    db: Conn,
    shots: Path,
) -> None:
    s = await store.create_schedule(
        db,
        {**_noop_definition("nightly-export"), "max_attempts": 1},
        actor="test",
        now=None,
    )
    run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)
    await _fail_until_dead(db, run["id"], attempts=1)
    page = await _page(browser, live_server)
    await _sign_in(page, role_tokens.values["viewer"])
    await page.goto("/ui/dead")
    await page.wait_for_selector(f"#run-table >> text=#{run['id']}")
    assert await page.locator("button", has_text="Retry").count() == 0
    await page.goto(f"/ui/runs/{run['id']}")
    assert await page.locator("button", has_text="Retry").count() == 0
    assert await page.inner_text("[data-testid=run-state]") == "dead"
    await page.screenshot(path=shots / "viewer-run.png", full_page=True)
    # Signing out ends the session in the browser too.
    await page.click("text=Sign out")
    await page.wait_for_url("**/ui/login")
    await page.goto("/ui/dead")
    await page.wait_for_url("**/ui/login")


def _noop_definition(name: str) -> dict[str, object]:
    from pgsched.app.domain import schedule

    return schedule.complete(
        {"name": name, "job_type": "noop", "kind": "interval", "interval_seconds": 86_400}
    )


async def test_a_refused_live_stream_goes_to_sign_in(
    browser: Any, live_server: LiveServer, role_tokens: Tokens
) -> None:
    """After a restart or an expiry /ui/live is refused, and EventSource gives up (CLOSED):
    the page goes to sign-in rather than saying "reconnecting" forever."""
    page = await _page(browser, live_server)
    await _sign_in(page, role_tokens.values["viewer"])

    async def refused(route: Any) -> None:  # what a browser sees of the 303 to the sign-in page
        await route.fulfill(status=200, content_type="text/html", body="<!doctype html>")

    await page.route("**/ui/live", refused)
    await page.goto("/ui/dead")
    await page.wait_for_url("**/ui/login")
