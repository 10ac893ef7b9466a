"""pgsched: a job scheduler that keeps its queue and its history in PostgreSQL, as events.

The installed package is this directory. Its subpackages are the repository's top-level folders,
linked here (ADR 0023): `pgsched.app` (domain, database, API, CLI), `pgsched.workers` (the worker
process and its job types), `pgsched.otel` (telemetry), and, as package data read through
importlib.resources, `migrations` (the alembic scripts) and `sql` (released partition SQL).

As a library (ADR 0027): `pgsched.Client` / `pgsched.AsyncClient` enqueue runs in the caller's
transaction (`pgsched.app.client`). `@pgsched.job("name", ...)` registers a function as a
python job definition, `pgsched.RunContext` is what such a job may ask for (`pgsched.app.jobs`).
They are imported on first use, so `import pgsched` stays light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgsched.app.client import AsyncClient, Client, Item, Run
    from pgsched.app.jobs import RunContext, job

try:
    __version__ = version("pgsched")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_CLIENT_NAMES = frozenset({"AsyncClient", "Client", "Item", "Run"})
_JOB_NAMES = frozenset({"RunContext", "job"})
__all__ = ["AsyncClient", "Client", "Item", "Run", "RunContext", "__version__", "job"]


def __getattr__(name: str) -> object:
    """The client's and the job registry's names, imported when first asked for (PEP 562)."""
    if name in _CLIENT_NAMES:
        from pgsched.app import client  # noqa: PLC0415 - lazy on purpose: keeps `import pgsched` light

        return getattr(client, name)
    if name in _JOB_NAMES:
        from pgsched.app import jobs  # noqa: PLC0415 - lazy on purpose, as above

        return getattr(jobs, name)
    raise AttributeError(f"module 'pgsched' has no attribute {name!r}")
