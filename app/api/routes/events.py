"""/v1/events: the global event feed in commit order, as pages and as a live SSE tail.

What a consumer may rely on (ADR 0014, built on ADR 0005):
- order: events come in (tx_id, id) order, which is commit order between transactions and
  change order within one; a cursor is that pair;
- completeness: a page only holds events of transactions older than every transaction still
  running, so an event committed later never sorts before a cursor already handed out: resuming
  from any cursor misses nothing and repeats nothing;
- latency: an event appears once every transaction that started before it has ended; a long
  transaction elsewhere in the database holds the feed back for its duration;
- `next_cursor` is never null here: an empty page means "caught up, ask again later";
- retention: months of events are retired after 90 days (ADR 0005); a cursor older than that
  resumes at the oldest event kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any, Final

import msgspec
import psycopg
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from psycopg_pool import PoolTimeout

from pgsched.app.api import cursors
from pgsched.app.api.auth import principal
from pgsched.app.api.common import DEFAULT_PAGE, VIEWER, Limit, page_size
from pgsched.app.api.config import ApiSettings
from pgsched.app.api.metrics import EVENT_STREAMS
from pgsched.app.api.problems import responses
from pgsched.app.api.routes.runs import event_out
from pgsched.app.api.schemas import EventPage
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.services import tokens

log = logging.getLogger("pgsched.api")

TAGS = ["events"]
_STREAM_BATCH = 200


# `after=now`: start at the feed's current end instead of replaying the whole history.
NOW: Final = "now"
AFTER_DESCRIPTION: Final = (
    "A cursor (`next_cursor` or an event's `cursor`), or `now` to start at the feed's current "
    "end (only events committed from then on); omitted: from the oldest event kept."
)


def _position(cursor: str | None, field: str) -> tuple[int, int]:
    return cursors.decode_pair(cursor, field) if cursor else (0, 0)


async def _start(conn: Conn, cursor: str | None, field: str) -> tuple[int, int]:
    """Where a reader starts: after `cursor`, at the feed's end for `now`, else the start."""
    if cursor == NOW:
        return await reads.feed_now(conn)
    return _position(cursor, field)


@get(
    "/events",
    operation_id="listEvents",
    summary="The global event feed, in commit order",
    tags=TAGS,
    opt=VIEWER,
    responses=responses(),
)
async def list_events(
    conn: NamedDependency[Conn],
    after: Annotated[
        str | None,
        QueryParameter(
            required=False,
            max_length=512,
            description=AFTER_DESCRIPTION,
        ),
    ] = None,
    limit: Limit = DEFAULT_PAGE,
) -> EventPage:
    """Events in commit order, by (tx_id, id). A page holds only events of transactions older
    than every transaction still running, so resuming from any cursor (`next_cursor`, or an
    event's own `cursor`) misses nothing and repeats nothing, even when a transaction commits
    late; the price is that a long transaction holds the feed back. `next_cursor` is never
    null: pass it back as `after`; an empty page means caught up. `after=now` answers an empty
    page whose `next_cursor` is the feed's current end."""
    position = await _start(conn, after, "after")
    rows = await reads.event_feed(conn, after=position, limit=page_size(limit))
    items = [event_out(r) for r in rows]
    return EventPage(
        items=items, next_cursor=items[-1].cursor if items else cursors.encode(*position)
    )


# Polls whose stream was cancelled mid-query, kept referenced until they finish.
_FINISHING: set[asyncio.Task[Any]] = set()


async def _poll(
    request: Request[Any, Any, Any], position: tuple[int, int], token_id: int | None
) -> tuple[list[Row], bool]:
    """The feed after `position`, and whether the token is still live (checked when given)."""
    state = request.app.state
    async with state.pool.connection() as conn:
        rows = await reads.event_feed(conn, after=position, limit=_STREAM_BATCH)
        if token_id is None:
            return rows, True
        return rows, await tokens.is_live(conn, token_id, now=state.clock.db_now())


def _settle(task: asyncio.Task[Any]) -> None:
    _FINISHING.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failed orphan poll is nobody's to report


async def _uninterrupted(
    poll: Coroutine[Any, Any, tuple[list[Row], bool]],
) -> tuple[list[Row], bool]:
    """Run a poll that a disconnect does not interrupt: the stream ends at once, the query
    finishes on its own. A query cancelled half-way makes psycopg close the connection (and log
    two WARNINGs), so every client hanging up during a poll would cost a pooled connection."""
    task = asyncio.ensure_future(poll)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        _FINISHING.add(task)
        task.add_done_callback(_settle)
        raise


async def _tail(
    request: Request[Any, Any, Any], start: tuple[int, int] | None
) -> AsyncIterator[ServerSentEventMessage]:
    """Poll the feed and send what is new; stops when the client goes (Litestar cancels this
    generator on http.disconnect), when the caller's token is revoked or expires (re-checked
    every keepalive period), or when the database goes away (the client reconnects with
    Last-Event-ID). A pooled connection is held only for each poll. `start` None: from the
    feed's current end, whose cursor the first message carries as its `id:` (an EventSource
    that reconnects before any event arrives then resumes from there, not from a later now)."""
    state = request.app.state
    settings: ApiSettings = state.settings
    clock = state.clock
    token_id = principal(request).token_id
    idle = 0.0
    checked = clock.monotonic()
    EVENT_STREAMS.inc()
    try:
        if start is None:
            try:
                async with state.pool.connection() as conn:
                    start = await reads.feed_now(conn)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("event stream ends: database unavailable: %s", exc)
                return
            opening = cursors.encode(*start)
        else:
            opening = None
        position = start
        yield ServerSentEventMessage(
            comment="pgsched event feed", retry=2000, data=None, id=opening
        )
        while True:
            recheck = clock.monotonic() - checked >= settings.stream_keepalive_seconds
            if recheck:
                checked = clock.monotonic()
            try:
                rows, live = await _uninterrupted(
                    _poll(request, position, token_id if recheck else None)
                )
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("event stream ends: database unavailable: %s", exc)
                return
            if not live:
                yield ServerSentEventMessage(comment="token revoked or expired", data=None)
                return
            for row in rows:
                event = event_out(row)
                position = (event.tx_id, event.id)
                yield ServerSentEventMessage(
                    data=msgspec.json.encode(event).decode(), event=event.type, id=event.cursor
                )
                # A send to a client that hung up fails in the transport, but the server learns
                # of it (connection_lost, then http.disconnect, which cancels this generator)
                # only when the event loop runs its callbacks. A backlog is sent without any
                # other pause, so give the loop one turn per message: otherwise a whole batch
                # goes to a closed socket and asyncio logs a WARNING for each write.
                await asyncio.sleep(0)
            if len(rows) == _STREAM_BATCH:
                continue  # catching up: no pause between full batches
            idle = 0.0 if rows else idle + settings.stream_poll_seconds
            if idle >= settings.stream_keepalive_seconds:
                idle = 0.0
                # A comment keeps proxies from timing the connection out, and finds dead
                # clients whose disconnect never arrived.
                yield ServerSentEventMessage(comment="keepalive", data=None)
            await clock.sleep(settings.stream_poll_seconds)
    except (asyncio.CancelledError, GeneratorExit):
        # The client went away (Litestar cancels the stream on http.disconnect): a normal end.
        log.debug("event stream ends: the client disconnected")
        raise
    finally:
        EVENT_STREAMS.dec()


@get(
    "/events/stream",
    operation_id="streamEvents",
    summary="Tail the event feed (server-sent events)",
    tags=TAGS,
    opt=VIEWER,
    media_type="text/event-stream",
    responses=responses(),
)
async def stream_events(
    request: Request[Any, Any, Any],
    after: Annotated[
        str | None, QueryParameter(required=False, max_length=512, description=AFTER_DESCRIPTION)
    ] = None,
    last_event_id: Annotated[
        str | None,
        HeaderParameter(
            name="Last-Event-ID",
            required=False,
            max_length=512,
            description="Sent by EventSource on reconnect; wins over `after`.",
        ),
    ] = None,
) -> ServerSentEvent:
    """Each SSE message is one event: `event:` its type, `id:` its cursor, `data:` the event as
    JSON (the same object as in GET /v1/events). Reconnecting with Last-Event-ID resumes
    exactly after it. `?after=now` tails only what happens from now on. Idle streams get a
    comment every 15 s."""
    position: tuple[int, int] | None
    if last_event_id:
        position = _position(last_event_id, "Last-Event-ID")
    elif after == NOW:
        position = None  # resolved on the stream's first connection (_tail)
    else:
        position = _position(after, "after")
    return ServerSentEvent(_tail(request, position), headers={"Cache-Control": "no-store"})


ROUTES = [list_events, stream_events]
