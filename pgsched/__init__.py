"""pgsched: a job scheduler that keeps its queue and its history in PostgreSQL, as events.

The installed package is this directory. Its subpackages are the repository's top-level folders,
linked here (ADR 0023): `pgsched.app` (domain, database, API, CLI), `pgsched.workers` (the worker
process and its job types), `pgsched.otel` (telemetry), and, as package data read through
importlib.resources, `migrations` (the alembic scripts) and `sql` (released partition SQL).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pgsched")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
