"""The wheel, as a user installs it (ADR 0023): built from this checkout, installed into a fresh
venv in a directory that also holds an application's own `app` package, and run from there.

`pgsched migrate` and `pgsched verify` work from the installed package data alone, and a worker
of the installed package completes a run whose job is a function of the application's `app`:
the two `app`s never meet, because the wheel installs one top-level name, `pgsched`.

The README's "Use it from your application" runs as written: its code blocks marked `example`
become the application's files (`file=...`) and its shell lines are run, in order, with the
venv's `pgsched` and `python` (ADR 0027).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
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
    # ... and so do the console's templates and static files (ADR 0030), read at run time.
    assert "pgsched/app/ui/templates/base.html" in names
    assert "pgsched/app/ui/static/console.js" in names


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


# A README code block the test runs: ```python example file=myapp/jobs.py, or ```sh example.
_EXAMPLE = re.compile(r"^```(?P<lang>\w+) example(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)
README_SECTION = "## Use it from your application"


def readme_example() -> tuple[dict[str, str], list[str]]:
    """The section's files (path -> text) and its shell lines, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    section = text[start : end if end >= 0 else None]
    files: dict[str, str] = {}
    lines: list[str] = []
    for block in _EXAMPLE.finditer(section):
        named = re.search(r"\bfile=(\S+)", block["info"])
        if named is not None:
            files[named[1]] = block["body"]
        elif block["lang"] == "sh":
            lines += block["body"].splitlines()
    return files, lines


def test_the_readme_names_the_files_and_commands_it_runs() -> None:
    files, lines = readme_example()
    assert set(files) == {"myapp/jobs.py", "signup.py"}
    commands = " ".join(lines)
    assert "pgsched migrate" in commands
    assert "pgsched worker --import myapp.jobs" in commands
    assert "python signup.py" in commands


def test_the_readme_application_example_runs_from_the_wheel(site: Path, empty_dsn: str) -> None:
    """Its files written, its commands run: the committed signup's run succeeds with its
    kwargs, the rolled-back one left no run and no user."""
    home = site / "readme"
    files, lines = readme_example()
    for name, body in files.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(body)
    env = _env(site, DATABASE_URL=empty_dsn)
    log = home / "worker.log"
    background: list[subprocess.Popen[bytes]] = []
    said = ""
    try:
        for raw in lines:
            line = raw.split("  #", 1)[0].strip()
            if not line or line.startswith(("#", "export ")):  # the test sets DATABASE_URL
                continue
            argv = shlex.split(line.removesuffix("&"))
            if line.endswith("&"):
                with log.open("ab") as sink:
                    background.append(
                        subprocess.Popen(argv, cwd=home, env=env, stdout=sink, stderr=sink)
                    )
                # As written: the next line runs at once, whether or not the worker has
                # defined its jobs yet (the application's client defines a registered job it
                # enqueues first, ADR 0027).
                continue
            done = subprocess.run(
                argv, cwd=home, env=env, capture_output=True, text=True, timeout=120, check=False
            )
            assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
            said += done.stdout
        assert background, "the README starts no worker"
        run_id, user_id = _welcome_run(empty_dsn, log)
    finally:
        for proc in background:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "bob@example.com refused - rolled back, no run" in said
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        users = c.execute("SELECT id, email FROM users").fetchall()
        sent = c.execute("SELECT user_id, attempt FROM welcome_sent").fetchall()
        definition = c.execute(
            "SELECT kind, job_type, payload, queue, max_attempts FROM pgsched.schedule"
            " WHERE name = 'send_welcome'"
        ).fetchone()
    assert users == [(user_id, "ada@example.com")]  # bob's row rolled back with his run
    assert sent == [(user_id, f"{run_id}:1")]  # the kwargs and the run's context reached it
    assert definition == ("job", "python", {"target": "myapp.jobs:send_welcome"}, "mail", 5)
    assert all(p.returncode == 0 for p in background), log.read_text()
    assert "Traceback" not in log.read_text()
    verified = _pgsched(site, "verify", DATABASE_URL=empty_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _welcome_run(dsn: str, log: Path) -> tuple[int, int]:
    """(run id, user id) of the one send_welcome run, once it succeeded."""
    deadline = time.monotonic() + 120
    with psycopg.connect(dsn, autocommit=True) as c:
        while True:
            rows = c.execute(
                "SELECT r.id, r.state, r.payload FROM pgsched.run r"
                " JOIN pgsched.schedule s ON s.id = r.schedule_id WHERE s.name = 'send_welcome'"
            ).fetchall()
            assert len(rows) <= 1, rows  # the rolled-back enqueue left no run
            if rows and rows[0][1] in {"succeeded", "dead", "cancelled"}:
                run_id, state, payload = rows[0]
                assert state == "succeeded", log.read_text()
                return int(run_id), int(payload["kwargs"]["user_id"])
            assert time.monotonic() < deadline, (rows, log.read_text())
            time.sleep(0.2)
