"""The expected failures of pgsched's operations, whoever asks: the API maps each to a problem
response (app.api.problems), the CLI to a one-line reason and exit code 2.

Pure: raised by app.domain and app.services, never by the database layer (whose own errors,
PartitionMissing and the names taken, are app.db.store's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class OperationError(Exception):
    """An expected failure of an operation on a schedule or a run."""


class NotFound(OperationError):
    """No live schedule, or no run, has this id."""


class InvalidRequest(OperationError):
    """The request is well-formed but not acceptable; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidDefinition(OperationError):
    """A schedule definition (the fields a client gives) that cannot be stored; `field` names
    the culprit. Apart from InvalidRequest because it is always about the definition itself,
    not about the operation's other arguments."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Protected(OperationError):
    """The change would stop pgsched's own built-in schedule; `field` names the culprit (None:
    the whole schedule, as in a delete)."""

    def __init__(self, row: Mapping[str, Any], message: str, field: str | None = None) -> None:
        super().__init__(f"schedule {row['id']} is the built-in {row['name']!r}: {message}")
        self.field = field


class VersionMismatch(OperationError):
    """The schedule is no longer at the version the change was based on (optimistic
    concurrency); `version` is where it is now."""

    def __init__(self, version: int) -> None:
        super().__init__(f"the schedule changed since that version; it is now at version {version}")
        self.version = version


class HasDependents(OperationError):
    """The schedule is an upstream of live schedules (ADR 0033): deleting it would leave their
    occurrences waiting for runs that never come. `dependents` are their names."""

    def __init__(self, row: Mapping[str, Any], dependents: list[str]) -> None:
        named = ", ".join(repr(name) for name in dependents)
        super().__init__(
            f"schedule {row['id']} ({row['name']!r}) is an upstream of {named}: "
            "remove it from their depends_on first"
        )
        self.dependents = dependents
