"""The real thing: `pgsched api` as a process on a TCP port, tokens made with `pgsched token`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT

PGSCHED = str(Path(sys.executable).parent / "pgsched")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(dsn: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": dsn, **extra}


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PGSCHED, *args],
        env=_env(dsn),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_token_commands(dsn: str) -> None:
    made = _cli(dsn, "token", "create", "--name", "ops", "--role", "operator")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pgs_") and "shown once" in made.stderr and token not in made.stderr
    taken = _cli(dsn, "token", "create", "--name", "ops", "--role", "viewer")
    assert taken.returncode == 2 and taken.stderr.count("\n") == 1 and "exists" in taken.stderr
    assert _cli(dsn, "token", "create", "--name", "x", "--role", "root").returncode == 2
    listed = _cli(dsn, "token", "list")
    assert "ops" in listed.stdout and "operator" in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout
    assert _cli(dsn, "token", "revoke", "ops").returncode == 0
    assert "revoked" in _cli(dsn, "token", "list").stdout
    assert _cli(dsn, "token", "revoke", "ops").returncode == 2, "only live tokens are revoked"


async def _start(dsn: str, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        PGSCHED,
        "api",
        "--log-level",
        "warning",
        env=_env(dsn, PGSCHED_HTTP_PORT=str(port)),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _wait_until_up(client: httpx.AsyncClient, server: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        try:
            await client.get("/health")
            return
        except httpx.TransportError:
            assert server.returncode is None, "pgsched api exited"
            await asyncio.sleep(0.05)
    raise AssertionError("pgsched api did not come up")


async def test_pgsched_api_serves_over_tcp(dsn: str) -> None:
    operator = _cli(dsn, "token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    admin = _cli(dsn, "token", "create", "--name", "root", "--role", "admin").stdout.strip()
    port = _free_port()
    server = await _start(dsn, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await _wait_until_up(client, server)
            health = await client.get("/health")
            assert health.json()["components"]["database"] == "healthy"
            assert "server" not in health.headers
            op = {"Authorization": f"Bearer {operator}"}
            root = {"Authorization": f"Bearer {admin}"}
            assert (await client.get("/v1/schedules")).status_code == 401
            created = await client.post(
                "/v1/schedules",
                headers=root,
                json={"name": "via-socket", "job_type": "noop", "interval_seconds": 60},
            )
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            assert (await client.delete(f"/v1/schedules/{sid}", headers=op)).status_code == 403
            triggered = await client.post(f"/v1/schedules/{sid}/trigger", headers=op)
            assert triggered.status_code == 201
            schema = await client.get("/schema/openapi.json", headers=op)
            assert schema.json()["openapi"] == "3.1.0"
            assert _cli(dsn, "token", "revoke", "ops").returncode == 0
            assert (await client.get("/v1/schedules", headers=op)).status_code == 401
    finally:
        server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            out, err = await server.communicate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit tells what stopped it
    # (systemd counts that as a clean stop).
    assert server.returncode in (0, -signal.SIGTERM), err
    assert b"Traceback" not in err
    assert f"http://127.0.0.1:{port}".encode() in out
