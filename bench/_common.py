"""Shared bits of the benchmarks: where results go, what machine they came from, tables."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def command_line(module: str) -> str:
    """The command that produced a result, as someone would retype it from the repo root."""
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """Enough about the host to tell two results files apart (absolute times drift anyway)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def source_digests(*paths: str) -> dict[str, str]:
    """Short SHA-256 of the measured sources (files or folders, relative to the repo root): the
    code under test changes between commits and under concurrent edits, so a result names what
    it ran."""
    root = RESULTS.parent.parent
    digests: dict[str, str] = {}
    for path in paths:
        target = root / path
        if target.is_dir():
            files = sorted(f for f in target.rglob("*") if f.suffix in {".py", ".sql"})
        else:
            files = [target] if target.exists() else []
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
        digests[path] = h.hexdigest()[:12] if files else "missing"
    return digests


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (prints readably and pastes into bench/README.md as is)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
