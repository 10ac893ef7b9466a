"""pgsched as a library: enqueue runs from an application, in the application's transaction.

    import pgsched

    client = pgsched.Client.connect("postgresql://app@db/app")
    client.define_job("send-email", "http", {"url": "https://mail.internal/send"})

    with psycopg.connect(dsn) as conn:           # the application's own transaction
        conn.execute("INSERT INTO orders ...")
        client.enqueue("send-email", {"json": {"order": 42}}, conn=conn)
    # committed together, or neither: a rolled-back order leaves no run and no event

`AsyncClient` is the same over asyncio. A job definition (`define_job`, a schedule of kind
`job`) holds a job's type and defaults; `enqueue` makes one run of it with its own arguments
(`payload` merged over the definition's, and any of queue, priority, run_at, max_attempts,
timeout_seconds), `enqueue_many` many in one statement. An `idempotency_key` makes a repeated
enqueue return the run the first one made (`Run.created` False).

Without `conn=`, the client uses a connection of its own (autocommit: each call commits on its
own) or one from the pool it was given (committed when returned to the pool). With `conn=`,
nothing is committed or rolled back here: the caller's transaction decides. Each enqueue is one
statement that locks nothing another enqueue waits for, one round trip once the client has read
the definition (ADR 0027). The sync client runs the same named statements through a sync
psycopg connection: no event loop per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgsched.app import jobs
from pgsched.app.db.store import Row
from pgsched.app.domain.errors import NotFound
from pgsched.app.services import runs, schedules
from pgsched.app.services.runs import Definitions, Item

__all__ = ["AsyncClient", "Client", "Item", "Run"]

DEFAULT_ACTOR = "client"


@dataclass(frozen=True, slots=True)
class Run:
    """A run an enqueue made (or, with `created` False, the one an earlier enqueue with the same
    idempotency key made). `payload` and `timeout_seconds` are the run's own (None: the
    definition's, read when a worker claims it); `row` is the whole row, as written (built from
    what was sent and what the statement returned, not read back: ADR 0034)."""

    id: int
    schedule_id: int
    due_at: datetime
    state: str
    queue: str
    priority: int
    available_at: datetime
    max_attempts: int
    payload: dict[str, Any] | None
    timeout_seconds: float | None
    idempotency_key: str | None
    created: bool
    row: Row

    @classmethod
    def of(cls, row: Row, created: bool) -> Run:
        return cls(
            id=row["id"],
            schedule_id=row["schedule_id"],
            due_at=row["due_at"],
            state=row["state"],
            queue=row["queue"],
            priority=row["priority"],
            available_at=row["available_at"],
            max_attempts=row["max_attempts"],
            payload=row["payload"],
            timeout_seconds=row["timeout_seconds"],
            idempotency_key=row["idempotency_key"],
            created=created,
            row=row,
        )


def _items(items: Iterable[Item | Mapping[str, Any]]) -> list[Item]:
    """Items given as Item or as mappings of its fields (a mapping's unknown key is a
    TypeError, as a misspelt keyword argument would be)."""
    return [i if isinstance(i, Item) else Item(**i) for i in items]


def _check_registered(job: str | int, items: list[Item]) -> None:
    """A job registered in this process with @pgsched.job (app.jobs): each run's kwargs must
    bind to its function, checked before the statement (InvalidRequest naming the argument).
    A job this process does not know is checked by the worker when it runs."""
    if jobs.registry.get(job) is None:
        return  # one lookup per call, not one per item of a bulk enqueue
    for item in items:
        jobs.registry.check_payload(job, item.payload)


def _registered(job: str | int) -> jobs.Job | None:
    """The job registered in this process under `job`, if any: enqueueing it before any
    worker defined it defines it first (committed on a connection of its own, as define_job
    does), whatever becomes of the caller's transaction; a definition is set-up, not data."""
    return jobs.registry.get(job) if isinstance(job, str) else None


class Client:
    """The sync client. Thread-safe as psycopg's connection and pool are; one per process is
    enough (it caches the definitions it read)."""

    def __init__(
        self,
        source: psycopg.Connection[Any] | ConnectionPool[Any],
        *,
        actor: str = DEFAULT_ACTOR,
        owns: bool = False,
    ) -> None:
        """A client over an open connection (used as it is: autocommit or not, the caller
        commits) or a pool. `owns`: close it with the client."""
        self._source = source
        self._owns = owns
        self.actor = actor
        self._definitions = Definitions()

    @classmethod
    def connect(cls, dsn: str, *, actor: str = DEFAULT_ACTOR) -> Client:
        """A client with a connection of its own (autocommit: each call commits alone)."""
        return cls(psycopg.connect(dsn, autocommit=True), actor=actor, owns=True)

    @classmethod
    def from_pool(cls, pool: ConnectionPool[Any], *, actor: str = DEFAULT_ACTOR) -> Client:
        return cls(pool, actor=actor)

    def close(self) -> None:
        if self._owns:
            self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(
        self,
        job: str | int,
        payload: Mapping[str, object] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Run:
        """One run of the job definition `job` (its name or id), in `conn`'s transaction when
        given. Raises app.domain.errors.NotFound (no such live definition) or InvalidRequest
        (naming the field the definition's job type or the run refuses)."""
        item = Item(
            payload, queue, priority, run_at, max_attempts, timeout_seconds, idempotency_key
        )
        (run,) = self._enqueue(job, [item], conn)
        return run

    def enqueue_many(
        self,
        job: str | int,
        items: Iterable[Item | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[Run]:
        """Many runs of `job` in one statement (all or none), one per item, in order."""
        return self._enqueue(job, _items(items), conn)

    def _enqueue(
        self, job: str | int, items: list[Item], conn: psycopg.Connection[Any] | None
    ) -> list[Run]:
        _check_registered(job, items)

        def go(c: psycopg.Connection[Any]) -> list[Run]:
            paired = runs.enqueue_items_sync(
                c, job, items, actor=self.actor, definitions=self._definitions
            )
            return [Run.of(row, created) for row, created in paired]

        def anywhere() -> list[Run]:
            if conn is not None:
                return go(conn)
            if isinstance(self._source, ConnectionPool):
                with self._source.connection() as pooled:
                    return go(pooled)
            return go(self._source)

        try:
            return anywhere()
        except NotFound:
            registered = _registered(job)
            if registered is None:
                raise
            self.define_job(
                registered.name, registered.job_type, registered.payload, **registered.definition()
            )
            return anywhere()

    def define_job(
        self,
        name: str,
        job_type: str,
        payload: Mapping[str, Any] | None = None,
        **defaults: object,
    ) -> Row:
        """Create the job definition `name`, or bring it up to these values (see
        app.services.schedules.define_job); committed at once, in a transaction of its own.

        The schedule use cases are async (ADR 0025), so this one call runs an event loop of
        its own on a connection of its own (in a helper thread when this thread runs one);
        defining a job is set-up, not the hot path."""
        dsn = self._conninfo()

        async def define() -> Row:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
            async with conn:
                return await schedules.define_job(
                    conn, name, job_type, payload, defaults=defaults, actor=self.actor
                )

        row = _run_to_end(define())
        self._definitions.forget(name)
        return row

    def _conninfo(self) -> str:
        """How to open another connection like the client's (its DSN with its password)."""
        if isinstance(self._source, ConnectionPool):
            with self._source.connection() as pooled:
                return _conninfo_of(pooled)
        return _conninfo_of(self._source)


def _run_to_end(work: Coroutine[Any, Any, Row]) -> Row:
    """Run `work` on an event loop of its own: here, or in a helper thread when this thread
    already runs a loop (asyncio.run refuses to nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgsched-define") as pool:
        return pool.submit(asyncio.run, work).result()


def _conninfo_of(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    info = conn.info
    return make_conninfo(info.dsn, password=info.password) if info.password else info.dsn


class AsyncClient:
    """The asyncio client; `Client`'s twin."""

    def __init__(
        self,
        source: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any],
        *,
        actor: str = DEFAULT_ACTOR,
        owns: bool = False,
    ) -> None:
        self._source = source
        self._owns = owns
        self.actor = actor
        self._definitions = Definitions()

    @classmethod
    async def connect(cls, dsn: str, *, actor: str = DEFAULT_ACTOR) -> AsyncClient:
        """A client with a connection of its own (autocommit: each call commits alone)."""
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return cls(conn, actor=actor, owns=True)

    @classmethod
    def from_pool(
        cls, pool: AsyncConnectionPool[Any], *, actor: str = DEFAULT_ACTOR
    ) -> AsyncClient:
        return cls(pool, actor=actor)

    async def close(self) -> None:
        if self._owns:
            await self._source.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(
        self,
        job: str | int,
        payload: Mapping[str, object] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Run:
        """One run of the job definition `job`; see Client.enqueue."""
        item = Item(
            payload, queue, priority, run_at, max_attempts, timeout_seconds, idempotency_key
        )
        (run,) = await self._enqueue(job, [item], conn)
        return run

    async def enqueue_many(
        self,
        job: str | int,
        items: Iterable[Item | Mapping[str, Any]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[Run]:
        """Many runs of `job` in one statement (all or none), one per item, in order."""
        return await self._enqueue(job, _items(items), conn)

    async def _enqueue(
        self, job: str | int, items: list[Item], conn: psycopg.AsyncConnection[Any] | None
    ) -> list[Run]:
        _check_registered(job, items)

        async def go(c: psycopg.AsyncConnection[Any]) -> list[Run]:
            paired = await runs.enqueue_items(
                c, job, items, actor=self.actor, definitions=self._definitions
            )
            return [Run.of(row, created) for row, created in paired]

        async def anywhere() -> list[Run]:
            if conn is not None:
                return await go(conn)
            if isinstance(self._source, AsyncConnectionPool):
                async with self._source.connection() as pooled:
                    return await go(pooled)
            return await go(self._source)

        try:
            return await anywhere()
        except NotFound:
            registered = _registered(job)
            if registered is None:
                raise
            defaults: dict[str, Any] = registered.definition()
            await self.define_job(
                registered.name, registered.job_type, registered.payload, **defaults
            )
            return await anywhere()

    async def define_job(
        self,
        name: str,
        job_type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        conn: psycopg.AsyncConnection[DictRow] | None = None,
        **defaults: object,
    ) -> Row:
        """Create the job definition `name`, or bring it up to these values (see
        app.services.schedules.define_job). With `conn` (a dict-row connection), in its
        transaction; otherwise committed at once."""

        async def define(c: psycopg.AsyncConnection[DictRow]) -> Row:
            return await schedules.define_job(
                c, name, job_type, payload, defaults=defaults, actor=self.actor
            )

        if conn is not None:
            row = await define(conn)
        else:
            # The schedule use cases read dict rows and commit their own transaction: a
            # connection of their own, rather than changing the row factory of the client's
            # (a caller's, or a pool's shared one).
            if isinstance(self._source, AsyncConnectionPool):
                async with self._source.connection() as pooled:
                    dsn = _conninfo_of(pooled)
            else:
                dsn = _conninfo_of(self._source)
            own = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
            async with own:
                row = await define(own)
        self._definitions.forget(name)
        return row
