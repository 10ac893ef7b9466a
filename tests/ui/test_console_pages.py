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
from pgsched.app.services import schedules, tokens
from tests.api.conftest import LiveServer, Tokens
from tests.api.test_runs import _dead_run
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
    for action in ("pause", "resume", "trigger"):
        done = await api.post(f"{base}/{action}", data={"csrf": csrf}, follow_redirects=False)
        assert done.status_code == 303, (action, done.text)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    backfill = await api.post(
        f"{base}/backfill",
        data={
            "csrf": csrf,
            "from": (end - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"),
            "to": end.strftime("%Y-%m-%dT%H:%M"),
        },
        follow_redirects=False,
    )
    assert backfill.status_code == 303, backfill.text
    kinds = [e["type"] for e in await _events(db, "schedule", s["id"])]
    assert {"schedule.paused", "schedule.resumed", "schedule.backfilled"} <= set(kinds)
    runs = await store.reads.page_runs(db, limit=10, schedule_id=s["id"])
    assert {r["origin"] for r in runs} == {"trigger", "backfill"}
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
    # Nothing changed before the confirmation.
    assert [await _state(db, d["id"]) for d in dead] == ["dead"] * 3
    done = await api.post("/ui/runs/bulk", data={"csrf": csrf, "action": "retry", "run_id": ids})
    assert done.status_code == 200 and "3 run(s) retried; 0 skipped" in done.text
    for d in dead:
        assert await _state(db, d["id"]) == "waiting"
        retried = [e for e in await _events(db, "run", d["id"]) if e["type"] == "run.retried"]
        assert retried[0]["actor"] == "operator-token"
        assert retried[0]["meta"]["via"] == "console"
    again = await api.post("/ui/runs/bulk", data={"csrf": csrf, "action": "retry", "run_id": ids})
    assert "0 run(s) retried; 3 skipped" in again.text
    bulk_cancel = await api.get("/ui/runs/bulk?state=waiting&action=cancel")
    ids = re.findall(r'name="run_id" value="(\d+)"', bulk_cancel.text)
    assert len(ids) == 3
    cancelled = await api.post(
        "/ui/runs/bulk", data={"csrf": csrf, "action": "cancel", "run_id": ids}
    )
    assert "3 run(s) cancelled" in cancelled.text
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
