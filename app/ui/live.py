"""Live updates: the event feed as server-sent events to the console's pages (ADR 0030).

The console cannot send the API's bearer token from an EventSource, so it has this stream of its
own, authenticated by the session cookie. It starts where the feed ends when the page opens (a
page already shows the past) and sends, per event, only what a page needs to know that it is
stale: the type and the stream it belongs to, never the event's data or meta. The session is
checked again every keepalive period, as every page checks it (app.ui.session.load): a revoked
token, a signed-out or expired session ends the stream with `signed-out`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import psycopg
from litestar import Request, get
from litestar.response import ServerSentEvent, ServerSentEventMessage
from psycopg_pool import PoolTimeout

from pgsched.app.api.config import ApiSettings
from pgsched.app.db.store import console as console_store
from pgsched.app.db.store import reads
from pgsched.app.ui.pages import VIEWER
from pgsched.app.ui.session import SignInRequired, load

log = logging.getLogger("pgsched.api")
_BATCH: Final = 200


async def _still_signed_in(request: Request[Any, Any, Any]) -> bool:
    try:
        await load(request)
    except SignInRequired:
        return False
    return True


async def _changes(request: Request[Any, Any, Any]) -> AsyncIterator[ServerSentEventMessage]:
    state = request.app.state
    settings: ApiSettings = state.settings
    clock = state.clock
    try:
        async with state.pool.connection() as conn:
            position = await console_store.feed_head(conn)
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("console live stream ends: database unavailable: %s", exc)
        return
    yield ServerSentEventMessage(comment="pgsched console", retry=3000, data=None)
    checked, idle = clock.monotonic(), 0.0
    while True:
        live = True
        try:
            async with state.pool.connection() as conn:
                rows = await reads.event_feed(conn, after=position, limit=_BATCH)
            if clock.monotonic() - checked >= settings.stream_keepalive_seconds:
                checked = clock.monotonic()
                live = await _still_signed_in(request)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("console live stream ends: database unavailable: %s", exc)
            return
        if not live:
            yield ServerSentEventMessage(event="signed-out", data="{}")
            return
        if rows:
            position = (int(rows[-1]["tx_id"]), int(rows[-1]["id"]))
            summary = [
                {"type": r["type"], "stream": r["stream"], "stream_id": r["stream_id"]}
                for r in rows
            ]
            yield ServerSentEventMessage(event="changes", data=json.dumps(summary))
            idle = 0.0
            if len(rows) == _BATCH:
                continue
        else:
            idle += settings.stream_poll_seconds
            if idle >= settings.stream_keepalive_seconds:
                idle = 0.0
                yield ServerSentEventMessage(comment="keepalive", data=None)
        await clock.sleep(settings.stream_poll_seconds)


@get("/live", opt=VIEWER, include_in_schema=False, media_type="text/event-stream")
async def live_changes(request: Request[Any, Any, Any]) -> ServerSentEvent:
    """`event: changes`, `data:` a JSON list of {type, stream, stream_id}, as they commit."""
    return ServerSentEvent(_changes(request), headers={"Cache-Control": "no-store"})


ROUTES = [live_changes]
