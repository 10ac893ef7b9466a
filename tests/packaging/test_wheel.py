"""The wheel, as a user installs it (ADR 0023): built from this checkout, installed into a fresh
venv in a directory that also holds an application's own `app` package, and run from there.

`pgsched migrate` and `pgsched verify` work from the installed package data alone, and a worker
of the installed package completes a run whose job is a function of the application's `app`:
the two `app`s never meet, because the wheel installs one top-level name, `pgsched`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ROOT

# What a wheel is built from: the Dockerfile's build stage copies the same.
SOURCES = ("pyproject.toml", "README.md", "pgsched", "app", "workers", "otel", "alembic", "sql")
# Building the wheel and installing its dependencies into a fresh venv can take minutes cold.
pytestmark = pytest.mark.timeout(900)

APP_INIT = '"""The application\'s own package, named like pgsched\'s repository folder."""\n'
APP_JOBS = '''\
"""A job of the application's: it leaves a file behind, so the test sees it ran."""

from pathlib import Path


def leave_mark(path: str, text: str) -> str:
    Path(path).write_text(text)
    return "marked"
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of what the Dockerfile copies (the sources, not a checkout's build/
    leftovers, which setuptools would pack too)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("pgsched-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding a fresh venv with the wheel installed, and an application's `app`."""
    home = tmp_path_factory.mktemp("site")
    venv.EnvBuilder(with_pip=True, clear=True).create(home / "venv")
    subprocess.run(
        [
            home / "venv" / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (home / "app").mkdir()
    (home / "app" / "__init__.py").write_text(APP_INIT)
    (home / "app" / "jobs.py").write_text(APP_JOBS)
    yield home


def _env(home: Path, **extra: str) -> dict[str, str]:
    """What a user's shell would hold: the venv on PATH, nothing of this checkout's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGSCHED_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{home / 'venv' / 'bin'}:/usr/bin:/bin"
    return {**env, **extra}


def _pgsched(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [home / "venv" / "bin" / "pgsched", *args],
        check=False,
        cwd=home,
        env=_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tops = {name.split("/", 1)[0] for name in whl.namelist()}
        names = set(whl.namelist())
    assert tops == {"pgsched", wheel.name.split("-py3")[0] + ".dist-info"}
    # The data `pgsched migrate` reads travels in the package.
    assert "pgsched/migrations/env.py" in names
    assert "pgsched/sql/partitions/maintain_v2.sql" in names
    assert "pgsched/app/db/queries/runs.sql" in names


def test_from_the_wheel_migrate_verify_and_a_worker_run_the_applications_job(
    site: Path, empty_dsn: str
) -> None:
    # The application's `app` is still its own, beside the installed pgsched.
    python = site / "venv" / "bin" / "python"
    found = subprocess.run(
        [python, "-c", "import app, pgsched; print(app.__file__); print(pgsched.__file__)"],
        cwd=site,
        env=_env(site),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found[0] == str(site / "app" / "__init__.py")
    assert found[1].startswith(str(site / "venv"))

    migrated = _pgsched(site, "migrate", DATABASE_URL=empty_dsn)
    assert migrated.returncode == 0, migrated.stderr
    verified = _pgsched(site, "verify", DATABASE_URL=empty_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    created = _pgsched(
        site, "token", "create", "--name", "ops", "--role", "admin", DATABASE_URL=empty_dsn
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.split()[0]

    # The whole service from the wheel (API, ticker, worker), started where the application
    # lives so that its `app.jobs` is importable, as an application would run it.
    mark = site / "mark.txt"
    log = site / "service.log"
    with _service(site, empty_dsn, log) as base:
        reply = httpx.post(
            f"{base}/v1/schedules",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "name": "application-job",
                "job_type": "python",
                "payload": {
                    "target": "app.jobs:leave_mark",
                    "kwargs": {"path": str(mark), "text": "ran"},
                },
                "run_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
            },
            timeout=10,
        )
        assert reply.status_code == 201, reply.text
        state = _final_state(empty_dsn, reply.json()["id"], log)
    assert state == "succeeded", log.read_text()
    assert mark.read_text() == "ran"
    assert "Traceback" not in log.read_text()
    verified = _pgsched(site, "verify", DATABASE_URL=empty_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@contextlib.contextmanager
def _service(home: Path, dsn: str, log: Path) -> Iterator[str]:
    """`python -m pgsched run` from `home` until the block ends; yields the API's base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as sink:
        service = subprocess.Popen(
            [home / "venv" / "bin" / "python", "-m", "pgsched", "run"],
            cwd=home,
            env=_env(home, DATABASE_URL=dsn, PGSCHED_HTTP_PORT=str(port)),
            stdout=sink,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(base):
            assert service.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _final_state(dsn: str, schedule_id: int, log: Path) -> str:
    """The state the schedule's one run ends in (within two minutes)."""
    deadline = time.monotonic() + 120
    with psycopg.connect(dsn, autocommit=True) as c:
        while True:
            row = c.execute(
                "SELECT state FROM pgsched.run WHERE schedule_id = %s", [schedule_id]
            ).fetchone()
            if row is not None and row[0] in {"succeeded", "dead", "cancelled"}:
                return str(row[0])
            assert time.monotonic() < deadline, (row, log.read_text())
            time.sleep(0.2)
