"""Harness for the REST API tests: the app over real HTTP semantics, on a database of its own.

`api` is Litestar's AsyncTestClient around `create_app(...)` (ASGI: real routing, middleware,
guards, lifespan and pool), connected as the `pgsched_api` role so every test also proves the
API needs no more privilege than ADR 0006 grants. Tokens for each role are created as the CLI
would (superuser connection); `auth(role)` gives the header. `live_server` runs the same app under
uvicorn on 127.0.0.1 and an ephemeral port, for tests that need a real socket (SSE, schemathesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched.app.api import create_app
from pgsched.app.api.config import ApiSettings
from pgsched.app.db.store import Conn
from pgsched.app.services import tokens
from tests.conftest import connect

ROLES = ("viewer", "operator", "admin")


def as_role(dsn: str, role: str) -> str:
    """`dsn` whose sessions run as `role` (a startup option; the test superuser may do that)."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options={quote(f'-c role={role}')}"


def settings_for(dsn: str, **over: Any) -> ApiSettings:
    base = ApiSettings(
        database_url=as_role(dsn, "pgsched_api"),
        pool_max_size=4,
        stream_poll_seconds=0.05,
        stream_keepalive_seconds=0.5,
    )
    return replace(base, **over)


@dataclass
class Tokens:
    values: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.values[role]}"}


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Conn]:
    """A superuser connection to the test's database (for setup and for checking events).

    This overrides tests/conftest.py's `db` for the API tests: the same database (`dsn`), but
    without that fixture's `public.job_log` table, which only worker tests read."""
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def role_tokens(db: Conn) -> Tokens:
    values = {}
    for role in ROLES:
        _, token = await tokens.create_token(
            db, name=f"{role}-token", role=role, actor="test", now=None
        )
        values[role] = token
    return Tokens(values)


@pytest.fixture
def auth(role_tokens: Tokens) -> Callable[[str], dict[str, str]]:
    return role_tokens.auth


@pytest.fixture
def app(dsn: str) -> Litestar:
    return create_app(settings_for(dsn))


@pytest.fixture
async def api(app: Litestar, role_tokens: Tokens) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as client:
        yield client


@dataclass
class LiveServer:
    url: str
    app: Litestar


@contextlib.contextmanager
def serve(app: Litestar) -> Iterator[LiveServer]:
    """`app` under uvicorn in a thread of its own (its own event loop) on an ephemeral port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield LiveServer(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
async def live_server(app: Litestar, role_tokens: Tokens) -> AsyncIterator[LiveServer]:
    with serve(app) as server:
        yield server
        await asyncio.sleep(0)


async def wait_for(check: Callable[[], Any], within: float = 10.0, step: float = 0.05) -> Any:
    """Poll an async `check` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(step)
