"""/v1/events: the global feed in commit order (ADR 0005's tx_id rule), as pages and as SSE.

The central property: an event whose transaction commits late never appears *behind* a cursor
already handed out. The test holds a transaction open with an event in it, commits a later one
meanwhile, and checks the feed withholds both until the first commits, then serves them in
(tx_id, id) order. The SSE tail is read with a bound over a real socket, and must stop (its gauge
back to zero) when the client goes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.db import store
from pgsched.app.db.store import Conn
from pgsched.app.services import tokens
from tests.api.conftest import LiveServer, Tokens, wait_for
from tests.api.test_schedules import problem
from tests.conftest import connect
from tests.factories import make_schedule

Client = AsyncTestClient[Litestar]


async def _feed(api: Client, headers: dict[str, str], after: str | None = None) -> dict[str, Any]:
    params = {"after": after} if after else {}
    response = await api.get("/v1/events", params={**params, "limit": 200}, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def _note(conn: Conn, schedule_id: int, what: str) -> None:
    await store.record_schedule_event(
        conn, schedule_id, "test.note", actor="test", now=None, meta={"what": what}
    )


async def test_the_feed_resumes_from_any_cursor(api: Client, role_tokens: Tokens, db: Conn) -> None:
    viewer = role_tokens.auth("viewer")
    s = await make_schedule(db)
    for i in range(5):
        await _note(db, s["id"], f"n{i}")
    page = await _feed(api, viewer)
    everything = page["items"]
    assert [e["type"] for e in everything][:4] == ["token.created"] * 3 + ["schedule.created"]
    keys = [(e["tx_id"], e["id"]) for e in everything]
    assert keys == sorted(keys)
    # Resuming from each event's cursor yields exactly what follows it.
    for i, event in enumerate(everything):
        rest = (await _feed(api, viewer, event["cursor"]))["items"]
        assert [e["id"] for e in rest] == [e["id"] for e in everything[i + 1 :]]
    caught_up = await _feed(api, viewer, page["next_cursor"])
    assert caught_up["items"] == [] and caught_up["next_cursor"] == page["next_cursor"]
    small = (await api.get("/v1/events?limit=2", headers=viewer)).json()
    assert len(small["items"]) == 2 and small["next_cursor"] == small["items"][1]["cursor"]
    problem(await api.get("/v1/events?after=nope", headers=viewer), 422, "after")


async def test_a_late_commit_is_never_skipped(
    api: Client, role_tokens: Tokens, db: Conn, dsn: str
) -> None:
    viewer = role_tokens.auth("viewer")
    s = await make_schedule(db)
    cursor = (await _feed(api, viewer))["next_cursor"]
    slow = await connect(dsn)
    try:
        # The slow writer gets its transaction id first and appends, but does not commit yet.
        await slow.execute("BEGIN")
        await _note(slow, s["id"], "slow")
        await _note(db, s["id"], "fast")  # commits at once, with a later tx id
        held = await _feed(api, viewer, cursor)
        assert held["items"] == [], "nothing past a transaction that is still open"
        assert held["next_cursor"] == cursor
        await slow.execute("COMMIT")
    finally:
        await slow.close()
    page = await _feed(api, viewer, cursor)
    assert [e["meta"]["what"] for e in page["items"]] == ["slow", "fast"]


async def _read_sse(lines: AsyncIterator[str], count: int) -> list[dict[str, Any]]:
    """Read `count` SSE messages that carry data (comments are skipped)."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in lines:
        if line == "":
            if "data" in current:
                messages.append(current)
                if len(messages) == count:
                    return messages
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
    return messages


async def _open_streams(client: httpx.AsyncClient) -> float:
    metrics = (await client.get("/metrics")).text
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith("pgsched_api_event_streams ")]
    return float(line.split()[1])


async def test_sse_tail_delivers_live_events_and_stops_on_disconnect(
    live_server: LiveServer, role_tokens: Tokens, db: Conn
) -> None:
    viewer = role_tokens.auth("viewer")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        async with asyncio.timeout(15):
            baseline = await _open_streams(client)
            async with client.stream("GET", "/v1/events/stream", headers=viewer) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.aiter_lines()
                first = await _read_sse(lines, 3)  # the three token.created events
                assert [m["event"] for m in first] == ["token.created"] * 3
                assert await _open_streams(client) == baseline + 1
                s = await make_schedule(db)  # arrives while we listen
                (live,) = await _read_sse(lines, 1)
                data = json.loads(live["data"])
                assert (live["event"], data["stream_id"]) == ("schedule.created", s["id"])
                assert live["id"] == data["cursor"]
            # The client went away: the server notices and ends the generator.
            await wait_for(lambda: _stream_closed(client, baseline))

            # Resuming with Last-Event-ID continues exactly after that event.
            await _note(db, s["id"], "after")
            resume = {**viewer, "Last-Event-ID": first[-1]["id"]}
            async with client.stream("GET", "/v1/events/stream", headers=resume) as response:
                again = await _read_sse(response.aiter_lines(), 2)
            assert [m["event"] for m in again] == ["schedule.created", "test.note"]
        bad = await client.get("/v1/events/stream?after=bogus", headers=viewer)
        assert bad.status_code == 422
        assert (await client.get("/v1/events/stream")).status_code == 401


async def test_a_client_that_hangs_up_mid_stream_is_a_normal_end(
    live_server: LiveServer, role_tokens: Tokens, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """`curl .../v1/events/stream | head -c 1500`: the client closes while the server is still
    sending a backlog. That used to log ~31 WARNINGs `asyncio: socket.send() raised exception.`
    naming nothing; a hang-up is a normal end of a stream."""
    s = await make_schedule(db)
    for i in range(600):  # a backlog of full batches, sent with no pause between them
        await _note(db, s["id"], f"n{i}" + "x" * 200)
    viewer = role_tokens.auth("viewer")
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        async with asyncio.timeout(15):
            baseline = await _open_streams(client)
            async with client.stream("GET", "/v1/events/stream", headers=viewer) as response:
                got = b""
                async for chunk in response.aiter_raw():
                    got += chunk
                    if len(got) >= 1500:
                        break
            await wait_for(lambda: _stream_closed(client, baseline))
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [(r.name, r.getMessage()) for r in loud]
    ends = [r for r in caplog.records if r.name == "pgsched.api" and "stream ends" in r.message]
    assert [(r.levelno, r.getMessage()) for r in ends] == [
        (logging.DEBUG, "event stream ends: the client disconnected")
    ]


async def _stream_closed(client: httpx.AsyncClient, baseline: float) -> bool:
    return await _open_streams(client) == baseline


async def test_sse_tail_ends_when_its_token_is_revoked(
    live_server: LiveServer, role_tokens: Tokens, db: Conn
) -> None:
    """Keepalive is 0.5 s in tests: the token is re-checked that often."""
    viewer = role_tokens.auth("viewer")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        async with asyncio.timeout(10):
            async with client.stream("GET", "/v1/events/stream", headers=viewer) as response:
                lines = response.aiter_lines()
                await _read_sse(lines, 3)
                await tokens.revoke_token(db, "viewer-token", actor="test", now=None)
                rest = [line async for line in lines]  # the server ends the response
    assert ": token revoked or expired" in rest
