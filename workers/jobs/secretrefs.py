"""Secret references in job payloads: ``{"$secret": "NAME"}``, resolved only at execution.

This module owns the reference syntax, where a reference's value comes from
(``PGSCHED_SECRET_<NAME>`` in the worker's environment, ADR 0012), and the :class:`Masker`
that removes resolved values from anything a job produced before it is stored.

Why references: schedules, runs and events are append-only history (ADR 0006),
so a secret written into a payload would stay in the event log until its partition is
dropped. A reference is safe to store, show and log; only the worker ever sees the value, and
only for the duration of one attempt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from pgsched.app.domain.jobs import SECRET_KEY, is_secret_ref, valid_name

__all__ = [
    "SECRET_ENV_PREFIX",
    "SECRET_KEY",
    "Masker",
    "MissingSecret",
    "env_var",
    "is_secret_ref",
    "resolve",
    "secret_names",
    "valid_name",
]

# Only variables under this prefix can be named, so a payload cannot read DATABASE_URL,
# PGSCHED_SQL_DSN_* or anything else the worker happens to have in its environment.
SECRET_ENV_PREFIX = "PGSCHED_SECRET_"  # noqa: S105 - a variable-name prefix
MASK = "***"


class MissingSecret(LookupError):
    """A referenced secret is not set (or empty) in the worker's environment."""

    def __init__(self, name: str, *, empty: bool = False) -> None:
        self.name = name
        super().__init__(f"secret {name} is {'empty' if empty else 'not set'}")


def env_var(name: str) -> str:
    """The environment variable a reference reads: ``slack_hook`` → ``PGSCHED_SECRET_SLACK_HOOK``.

    Names are upper-cased so that the lower-case names people write in JSON and the
    upper-case names people write in environment files meet.
    """
    return SECRET_ENV_PREFIX + name.upper()


def secret_names(payload: object) -> set[str]:
    """Every secret name referenced anywhere in ``payload``."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if is_secret_ref(node):
            found.add(node[SECRET_KEY])
        elif isinstance(node, Mapping):
            for item in node.values():
                walk(item)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)

    walk(payload)
    return found


def resolve(payload: object, environ: Mapping[str, str]) -> tuple[object, list[str]]:
    """``payload`` with every reference replaced by its value, and the values used.

    Walks nested mappings and lists; returns new containers (the input is not changed).
    Raises :class:`MissingSecret` for a name that is unset or empty: an empty credential is a
    misconfiguration, and sending one would fail in a less obvious way.
    """
    used: list[str] = []

    def walk(node: object) -> object:
        if is_secret_ref(node):
            name = node[SECRET_KEY]
            value = environ.get(env_var(name))
            if value is None:
                raise MissingSecret(name)
            if value == "":
                raise MissingSecret(name, empty=True)
            used.append(value)
            return value
        if isinstance(node, Mapping):
            return {key: walk(item) for key, item in node.items()}
        if isinstance(node, list | tuple):
            return [walk(item) for item in node]
        return node

    return walk(payload), used


class Masker:
    """Replaces resolved secret values in job output and errors with ``***``.

    Besides each value as is, it masks the spellings a job is likely to print it in: JSON
    string escaping, Python ``repr`` escaping (python jobs' return values) and URL
    percent-encoding. Longer spellings are matched first, so a secret that contains another
    is masked whole. ``margin`` is the longest spelling in UTF-8 bytes: job types capture that
    many bytes beyond their limit, so a secret cut by the limit is still seen whole, masked,
    and only then clipped (a clipped secret would otherwise leak its first or last part).
    """

    def __init__(self, values: Iterable[str]) -> None:
        self._values = tuple(values)
        spellings: set[str] = set()
        for value in self._values:
            if not value:
                continue
            spellings.update(
                {value, json.dumps(value)[1:-1], repr(value)[1:-1], quote(value, safe="")}
            )
        ordered = sorted(spellings, key=len, reverse=True)
        self.margin = max((len(s.encode()) for s in ordered), default=0)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def with_values(self, more: Iterable[str]) -> Masker:
        """A masker for these values and ``more`` (e.g. a DSN's password)."""
        return Masker((*self._values, *more))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
