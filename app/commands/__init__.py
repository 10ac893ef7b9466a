"""The `pgsched` command groups beyond the service's own (app.cli): schedules, runs and status.

Each module owns one group and adds it to the parser with `register`; app.cli calls them. They
call app.services and the store's reads directly, never the HTTP API (ADR 0025's layers).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add every group here to `sub` (the `pgsched` parser's subcommands)."""
    from pgsched.app.commands import runs, schedules, status

    schedules.register(sub)
    runs.register(sub)
    status.register(sub)
