"""The console's pages and forms over HTTP: what an operator sees and what each form does,
through the same services as the API (same events, same actor), with no drift from the log."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import replay, store
from pgsched.app.db.store import Conn
from pgsched.app.services import runs, schedules, tokens
from tests.api.conftest import LiveServer, Tokens
from tests.api.test_runs import _claim, _dead_run, _worker
from tests.factories import cover_last_month, make_schedule
from tests.ui.conftest import csrf_of, sign_in

Client = AsyncTestClient[Litestar]


async def _events(db: Conn, stream: str, stream_id: int) -> list[dict[str, object]]:
    return await store.reads.stream_events(db, stream, stream_id, limit=1000)


async def _state(db: Conn, run_id: int) -> str:
    run = await store.reads.run_detail(db, run_id)
    assert run is not None
    return str(run["state"])


async def test_create_a_schedule_from_the_form(api: Client, role_tokens: Tokens, db: Conn) -> None:
    csrf = await sign_in(api, role_tokens, "admin")
    bad = await api.post(
        "/ui/schedules",
        data={"csrf": csrf, "name": "nightly", "job_type": "noop", "cron": "61 * * * *"},
    )
    assert bad.status_code == 422
    assert 'value="nightly"' in bad.text and "61 * * * *" in bad.text  # the form keeps it
    created = await api.post(
        "/ui/schedules",
        data={
            "csrf": csrf,
            "name": "nightly",
            "job_type": "noop",
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "payload": "",
        },
        follow_redirects=False,
    )
    assert created.status_code == 303
    schedule_id = int(created.headers["location"].split("/")[3].split("?")[0])
    row = await schedules.live(db, schedule_id)
    assert row["cron"] == "30 2 * * *" and row["timezone"] == "Europe/Berlin"
    (event,) = await _events(db, "schedule", schedule_id)
    assert event["actor"] == "admin-token" and event["meta"]["via"] == "console"
    listing = (await api.get("/ui/schedules?name=nightly")).text
    assert "02:30:00 Europe/Berlin" in listing
    utc = row["next_due_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert utc in listing and "none yet" in listing
    empty = (await api.get("/ui/schedules?name=other")).text
    assert "No schedule matches" in empty


async def test_schedule_actions_and_a_stale_form(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    s = await make_schedule(db, kind="cron", interval_seconds=None, cron="0 * * * *")
    await cover_last_month(db)  # the backfilled hours may fall in the previous month
    csrf = await sign_in(api, role_tokens, "admin")
    base = f"/ui/schedules/{s['id']}"
    page = (await api.get(base)).text
    assert "Pause" in page and "Trigger now" in page and "Next due times" in page
    version = s["version"]
    for action in ("pause", "resume"):
        done = await api.post(
            f"{base}/{action}",
            data={"csrf": csrf, "version": str(version)},
            follow_redirects=False,
        )
        assert done.status_code == 303, (action, done.text)
        version = (await schedules.live(db, s["id"]))["version"]
    # A form made before the schedule changed is refused: it acted on what the page showed.
    stale_pause = await api.post(f"{base}/pause", data={"csrf": csrf, "version": str(version - 1)})
    assert stale_pause.status_code == 412 and "stale" in stale_pause.text
    assert (await schedules.live(db, s["id"]))["enabled"]
    # Trigger now: the page's form carries a random key, so a double submit makes one run.
    page = (await api.get(base)).text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page)
    assert key and key.group(1) != re.search(
        r'name="idempotency_key" value="([^"]+)"', (await api.get(base)).text
    ).group(1)  # type: ignore[union-attr]
    trigger = {"csrf": csrf, "version": str(version), "idempotency_key": key.group(1)}
    for _ in range(2):
        done = await api.post(f"{base}/trigger", data=trigger, follow_redirects=False)
        assert done.status_code == 303, done.text
    triggered = await store.reads.page_runs(db, limit=10, schedule_id=s["id"])
    assert [r["origin"] for r in triggered] == ["trigger"]
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    backfill = {
        "csrf": csrf,
        "version": str(version),
        "from": (end - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
        "to": end.strftime("%Y-%m-%dT%H:%M"),
    }
    first = await api.post(f"{base}/backfill", data=backfill)
    assert first.status_code == 200, first.text
    assert "3 occurrence(s)" in first.text and "3 run(s) created" in first.text
    # The same range again: nothing made, and the page says why.
    again = await api.post(f"{base}/backfill", data=backfill)
    assert "0 run(s) created" in again.text
    assert "Nothing was created: every occurrence in the range already has a run" in again.text
    kinds = [e["type"] for e in await _events(db, "schedule", s["id"])]
    assert {"schedule.paused", "schedule.resumed", "schedule.backfilled"} <= set(kinds)
    runs = await store.reads.page_runs(db, limit=10, schedule_id=s["id"])
    assert {r["origin"] for r in runs} == {"trigger", "backfill"}
    # The schedule's own history: who paused, resumed and backfilled it.
    history = (await api.get(base)).text.split("<h2>History</h2>")[1]
    for kind in ("schedule.paused", "schedule.resumed", "schedule.backfilled", "schedule.created"):
        assert kind in history
    assert "admin-token" in history
    version = (await schedules.live(db, s["id"]))["version"]
    # A form made from an older version is refused, not applied.
    stale = await api.post(
        f"{base}/edit",
        data={"csrf": csrf, "version": str(version - 1), "interval_seconds": "120"},
    )
    assert stale.status_code == 412 and "stale" in stale.text
    assert (await schedules.live(db, s["id"]))["cron"] == "0 * * * *"
    edit = await api.post(
        f"{base}/edit",
        data={"csrf": csrf, "version": str(version), "cron": "", "interval_seconds": "120"},
        follow_redirects=False,
    )
    assert edit.status_code == 303, edit.text
    assert (await schedules.live(db, s["id"]))["interval_seconds"] == 120
    stale_delete = await api.post(f"{base}/delete", data={"csrf": csrf, "version": str(version)})
    assert stale_delete.status_code == 412
    deleted = await api.post(
        f"{base}/delete", data={"csrf": csrf, "version": str(version + 1)}, follow_redirects=False
    )
    assert deleted.status_code == 303
    assert (await api.get(base)).status_code == 404
    assert await replay.verify(db) == []


async def test_a_run_page_and_the_dead_letter_bulk_retry(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    dead = [await _dead_run(db) for _ in range(3)]
    csrf = await sign_in(api, role_tokens, "operator")
    run = (await api.get(f"/ui/runs/{dead[0]['id']}")).text
    assert "boom 2" in run and "run.claimed" in run and "run.dead" in run
    assert "lease_token" not in run  # the fencing token is never shown
    assert run.count('class="state failed"') == 1 and run.count('class="state dead"') >= 2
    letter = (await api.get("/ui/dead")).text
    assert all(f"#{d['id']}" in letter for d in dead) and "boom 2" in letter
    confirm = await api.get("/ui/runs/bulk?state=dead&queue=default&action=retry")
    assert confirm.status_code == 200
    assert "3 run(s) match" in confirm.text
    ids = re.findall(r'name="run_id" value="(\d+)"', confirm.text)
    assert sorted(map(int, ids)) == sorted(d["id"] for d in dead)
    assert 'name="state" value="dead"' in confirm.text
    # Nothing changed before the confirmation.
    assert [await _state(db, d["id"]) for d in dead] == ["dead"] * 3
    # One of them is retried elsewhere meanwhile, and a listed id no longer exists: skipped.
    await runs.retry(db, dead[2]["id"], actor="other", now=None, meta=None)
    form = {"csrf": csrf, "action": "retry", "state": "dead", "run_id": [*ids, "987654321"]}
    done = await api.post("/ui/runs/bulk", data=form)
    assert done.status_code == 200 and "2 run(s) retried; 2 skipped" in done.text
    for d in dead:
        assert await _state(db, d["id"]) == "waiting"
    retried = [e for e in await _events(db, "run", dead[0]["id"]) if e["type"] == "run.retried"]
    assert retried[0]["actor"] == "operator-token"
    assert retried[0]["meta"]["via"] == "console"
    again = await api.post("/ui/runs/bulk", data=form)
    assert "0 run(s) retried; 4 skipped" in again.text
    # An action that cannot apply to the state is refused at confirmation and at posting.
    impossible = await api.get("/ui/runs/bulk?state=waiting&action=retry")
    assert impossible.status_code == 422 and "state: retry applies to dead or cancelled" in (
        impossible.text
    )
    refused = await api.post("/ui/runs/bulk", data={**form, "state": "waiting"})
    assert refused.status_code == 422
    # Cancel: a waiting run is cancelled, a running one asked to stop, counted apart.
    running_id = (await _claim(db, await _worker(db))).run_id
    for state, expected in (("waiting", "2 run(s) cancelled"), ("running", "1 running run(s)")):
        confirm = await api.get(f"/ui/runs/bulk?state={state}&action=cancel")
        ids = re.findall(r'name="run_id" value="(\d+)"', confirm.text)
        result = await api.post(
            "/ui/runs/bulk", data={"csrf": csrf, "action": "cancel", "state": state, "run_id": ids}
        )
        assert expected in result.text, result.text
    stopping = await store.reads.run_detail(db, running_id)
    assert stopping is not None and stopping["state"] == "running" and stopping["cancel_requested"]
    assert await replay.verify(db) == []


async def test_overview_workers_and_filters(api: Client, role_tokens: Tokens, db: Conn) -> None:
    s = await make_schedule(db, queue="mail")
    await schedules.trigger(db, s["id"], actor="test", now=None)
    await store.register_worker(
        db, name="w-laptop", host="h", pid=7, version="t", queues=["mail"], slots=3, now=None
    )
    await sign_in(api, role_tokens, "viewer")
    overview = (await api.get("/ui/")).text
    assert "mail" in overview and "w-laptop" in overview and "Runs finished per minute" in overview
    workers = (await api.get("/ui/workers")).text
    assert "w-laptop" in workers and ">3<" in workers
    mail = (await api.get("/ui/runs?queue=mail&state=waiting")).text
    other = (await api.get("/ui/runs?queue=other")).text
    assert s["name"] in mail and "No run matches" in other
    by_schedule = (await api.get(f"/ui/runs?schedule_id={s['id']}&since=2000-01-01T00:00")).text
    long_ago = (await api.get(f"/ui/runs?schedule_id={s['id']}&until=2000-01-01T00:00")).text
    assert s["name"] in by_schedule and "No run matches" in long_ago
    assert (await api.get("/ui/runs?since=yesterday")).status_code == 422
    bad = await api.get("/ui/runs?state=failed")
    assert bad.status_code == 422 and "state: must be one of" in bad.text


async def test_the_live_feed_tells_a_page_what_changed(
    live_server: LiveServer, role_tokens: Tokens, db: Conn
) -> None:
    s = await make_schedule(db)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        form = await client.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        await client.post("/ui/login", data={"token": role_tokens.values["viewer"], "nonce": nonce})
        csrf_of((await client.get("/ui/")).text)
        async with client.stream("GET", "/ui/live") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith(":")  # the opening comment: from now on
            run, _ = await schedules.trigger(db, s["id"], actor="test", now=None)

            async def changes() -> list[dict[str, object]]:
                async for line in lines:
                    if line.startswith("data: "):
                        return json.loads(line[6:])
                raise AssertionError("stream ended")

            got = await asyncio.wait_for(changes(), 10)
    assert {"type": "run.created", "stream": "run", "stream_id": run["id"]} in got
    assert all(set(change) == {"type", "stream", "stream_id"} for change in got)


async def test_the_live_feed_ends_when_the_token_is_revoked(
    live_server: LiveServer, role_tokens: Tokens, db: Conn
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        form = await client.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        await client.post("/ui/login", data={"token": role_tokens.values["viewer"], "nonce": nonce})
        async with client.stream("GET", "/ui/live") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith(":")
            await tokens.revoke_token(db, "viewer-token", actor="test", now=None)

            async def ending() -> list[str]:
                seen = [line async for line in lines]  # until the server ends the stream
                return seen

            seen = await asyncio.wait_for(ending(), 10)
        assert "event: signed-out" in seen
        page = await client.get("/ui/", follow_redirects=False)
        assert page.status_code == 303


async def test_the_api_reference_is_a_console_page(api: Client, role_tokens: Tokens) -> None:
    """No public /docs: the reference and its document are read with a session, any role."""
    assert (await api.get("/docs")).status_code == 404
    for path in ("/ui/api", "/ui/api/openapi.json"):
        nobody = await api.get(path, follow_redirects=False)
        assert nobody.status_code == 303 and nobody.headers["location"] == "/ui/login"
    await sign_in(api, role_tokens, "viewer")
    page = await api.get("/ui/api")
    assert page.status_code == 200 and '<script src="/ui/static/reference.js">' in page.text
    assert 'href="/ui/api"' in page.text  # reached from the console's nav
    assert "http:" not in page.text and "https:" not in page.text, "nothing from elsewhere"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    document = await api.get("/ui/api/openapi.json")
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
    assert "/v1/workers/{worker_id}" in document.json()["paths"]
    bearer = await api.get("/schema/openapi.json", headers=role_tokens.auth("viewer"))
    assert bearer.json() == document.json()  # the same document as a token reads
    script = await api.get("/ui/static/reference.js")
    assert script.status_code == 200 and "/ui/api/openapi.json" in script.text
    assert "innerHTML" not in script.text  # API text goes in as text nodes only


async def test_the_schedule_page_pages_its_missed_occurrences_in_its_zone(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    s = await make_schedule(db, timezone="Europe/Berlin")
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    for i in range(55):  # as the ticker records them: meta.due_at as RFC 3339 text
        due = (start + timedelta(hours=i)).isoformat()
        await store.record_schedule_event(
            db,
            s["id"],
            "schedule.occurrence_missed",
            actor="ticker",
            now=None,
            meta={"due_at": due, "reason": "skip"},
        )
    await sign_in(api, role_tokens, "viewer")
    page = (await api.get(f"/ui/schedules/{s['id']}")).text
    missed = page.split("Occurrences that did not run")[1].split("</table>")[0]
    # The newest 50, each due time in the schedule's zone and in UTC, never raw JSON text.
    assert missed.count("<td>skip</td>") == 50
    assert "2026-01-07 16:00:00 Europe/Berlin" in missed and "2026-01-07 15:00:00 UTC" in missed
    assert "+00:00" not in missed
    older = re.search(r'href="\?missed_before=(\d+)"', page)
    assert older, "a link to the older ones"
    rest = (await api.get(f"/ui/schedules/{s['id']}?missed_before={older.group(1)}")).text
    rest_missed = rest.split("Occurrences that did not run")[1].split("</table>")[0]
    assert rest_missed.count("<td>skip</td>") == 5
    assert "2026-01-05 10:00:00 UTC" in rest_missed
    assert "missed_before=" not in rest.split("Occurrences that did not run")[1].split("<h2>")[0]


async def test_forms_keep_what_was_typed_and_clear_what_was_emptied(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    csrf = await sign_in(api, role_tokens, "admin")
    bad_json = await api.post(
        "/ui/schedules",
        data={"csrf": csrf, "name": "typed", "job_type": "noop", "payload": "{not json"},
    )
    assert bad_json.status_code == 422 and "payload: must be JSON" in bad_json.text
    assert 'value="typed"' in bad_json.text and "{not json" in bad_json.text
    odd = await api.post(
        "/ui/schedules",
        data={"csrf": csrf, "name": "odd", "job_type": "noop", "max_attempts": "²"},
    )
    assert odd.status_code == 422 and "max_attempts: must be a whole number" in odd.text
    created = await api.post(
        "/ui/schedules",
        data={
            "csrf": csrf,
            "name": "full",
            "job_type": "noop",
            "interval_seconds": "300",
            "priority": "-5",
            "timeout_seconds": "2.5",
            "overlap_policy": "queue",
            "missed_policy": "all",
        },
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    schedule_id = int(created.headers["location"].split("/")[3].split("?")[0])
    row = await schedules.live(db, schedule_id)
    assert (row["priority"], row["timeout_seconds"]) == (-5, 2.5)
    assert (row["overlap_policy"], row["missed_policy"]) == ("queue", "all")
    base = f"/ui/schedules/{schedule_id}"
    form = {"csrf": csrf, "version": str(row["version"])}
    bad_version = await api.post(f"{base}/edit", data={**form, "version": "²"})
    assert bad_version.status_code == 422 and "version" in bad_version.text
    emptied = await api.post(f"{base}/edit", data={**form, "queue": ""})
    assert emptied.status_code == 422 and "queue: cannot be emptied" in emptied.text
    # Interval to once: the emptied interval is sent as null, run_at given.
    once = await api.post(
        f"{base}/edit",
        data={**form, "interval_seconds": "", "run_at": "2030-01-02T03:04", "priority": "7"},
        follow_redirects=False,
    )
    assert once.status_code == 303, once.text
    row = await schedules.live(db, schedule_id)
    assert row["interval_seconds"] is None and row["kind"] == "once" and row["priority"] == 7
    assert row["run_at"] == datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    assert await replay.verify(db) == []


async def test_lists_keep_their_filter_and_name_the_worker(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    dead = await _dead_run(db)
    csrf = await sign_in(api, role_tokens, "operator")
    letter = (await api.get("/ui/dead?queue=default")).text
    assert 'name="back" value="/ui/dead?queue=default"' in letter
    # The attempts' worker by name and host, linked to the workers page.
    assert '<a href="/ui/workers#worker-' in letter and "w1 @ h" in letter
    run = (await api.get(f"/ui/runs/{dead['id']}")).text
    assert "w1 @ h" in run and "/ui/workers#worker-" in run
    retried = await api.post(
        f"/ui/runs/{dead['id']}/retry",
        data={"csrf": csrf, "back": "/ui/dead?queue=default&done=cancelled"},
        follow_redirects=False,
    )
    assert retried.headers["location"] == "/ui/dead?queue=default&done=retried"
    # Paging keeps the filter but not the notice of an earlier action.
    for _ in range(50):
        await schedules.trigger(db, dead["schedule_id"], actor="test", now=None)
    listing = (await api.get("/ui/runs?queue=default&done=retried")).text
    older = re.search(r'href="\?([^"]*before=[^"]*)">Older runs', listing)
    assert older and "queue=default" in older.group(1) and "done=" not in older.group(1)


async def test_the_live_feed_ends_when_the_session_is_signed_out(
    live_server: LiveServer, role_tokens: Tokens
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        form = await client.get("/ui/login")
        nonce = form.text.split('name="nonce" value="')[1].split('"')[0]
        await client.post("/ui/login", data={"token": role_tokens.values["viewer"], "nonce": nonce})
        csrf = csrf_of((await client.get("/ui/")).text)
        async with client.stream("GET", "/ui/live") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith(":")
            out = await client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
            assert out.status_code == 303

            async def ending() -> list[str]:
                return [line async for line in lines]

            seen = await asyncio.wait_for(ending(), 10)
        assert "event: signed-out" in seen


async def test_the_edit_form_sent_back_unchanged_changes_nothing(
    api: Client, role_tokens: Tokens, db: Conn
) -> None:
    """Every field as the page renders it reads back as the same value: no event, no version."""
    s = await make_schedule(db, timeout_seconds=1_234_567.0, priority=-3, overlap_policy="skip")
    csrf = await sign_in(api, role_tokens, "admin")
    page = (await api.get(f"/ui/schedules/{s['id']}")).text
    form = page.split('action="/ui/schedules/' + str(s["id"]) + '/edit">')[1].split("</form>")[0]
    data = dict(re.findall(r'<input (?:type="[^"]+" )?name="([^"]+)" value="([^"]*)"', form))
    data.update(re.findall(r'<select name="([^"]+)">.*?<option selected>([^<]+)</option>', form))
    data["payload"] = re.search(r"<textarea name=\"payload\">([^<]*)</textarea>", form).group(1)  # type: ignore[union-attr]
    assert data["timeout_seconds"] == "1234567" and data["priority"] == "-3"
    assert data["overlap_policy"] == "skip" and data["csrf"] == csrf
    sent = await api.post(f"/ui/schedules/{s['id']}/edit", data=data, follow_redirects=False)
    assert sent.status_code == 303, sent.text
    assert "done=" not in sent.headers["location"]  # nothing to save
    assert (await schedules.live(db, s["id"]))["version"] == s["version"]
