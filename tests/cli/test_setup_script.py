"""`scripts/setup` (which `scripts/run` and `scripts/test` call first): it installs pgsched only
when pyproject.toml or the extras changed since the last install, quietly, and shows pip's log
only when the install fails.

The script runs for real in a copy of the checkout's layout whose `.venv/bin/pip` is a stand-in
that records its calls (a real `pip install -e` would take half a minute and the network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

FAKE_PIP = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../pip-calls"
echo "Obtaining file:///checkout (a line of pip's chatter)"
[ -z "${FAKE_PIP_FAILS:-}" ] || { echo "ERROR: no matching distribution"; exit 1; }
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "pgsched"\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "pip").write_text(FAKE_PIP)
    (bin_dir / "pip").chmod(0o755)
    return tmp_path


def _setup(home: Path, extras: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(home / "scripts" / "setup"), extras],
        check=False,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _installs(home: Path) -> list[str]:
    calls = home / ".venv" / "pip-calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_setup_installs_once_until_pyproject_or_the_extras_change(checkout: Path) -> None:
    first = _setup(checkout)
    assert first.returncode == 0, first.stderr
    assert _installs(checkout) == ["install --disable-pip-version-check -e ."]
    assert "chatter" not in first.stdout + first.stderr, "pip's output goes to .venv/pip.log"
    assert "chatter" in (checkout / ".venv" / "pip.log").read_text()

    again = _setup(checkout)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert len(_installs(checkout)) == 1, "nothing changed: no install"

    assert _setup(checkout, "embedded").returncode == 0
    assert _installs(checkout)[-1] == "install --disable-pip-version-check -e .[embedded]"
    (checkout / "pyproject.toml").write_text('[project]\nname = "pgsched"\nversion = "2"\n')
    assert _setup(checkout, "embedded").returncode == 0
    assert _setup(checkout, "embedded").returncode == 0
    assert len(_installs(checkout)) == 3, "one install per change, none after"


def test_a_failed_install_shows_the_logs_tail_and_installs_again_next_time(
    checkout: Path,
) -> None:
    failed = _setup(checkout, FAKE_PIP_FAILS="1")
    assert failed.returncode == 1
    assert "ERROR: no matching distribution" in failed.stderr
    assert "failed; the end of .venv/pip.log" in failed.stderr
    assert _setup(checkout).returncode == 0
    assert len(_installs(checkout)) == 2, "no stamp after a failure: the next run installs"
