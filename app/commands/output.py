"""How commands print: aligned tables for people (the default), JSON for scripts (`--json`).

JSON is the API's own shape for the same thing (its msgspec structs: app.api.schemas), so a
script moves between `curl` and `pgsched … --json` without rewriting its `jq`. Timestamps are
printed in UTC, as the API gives them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import msgspec

Column = tuple[str, Callable[[Mapping[str, Any]], object]]


def instant(value: datetime | None, *, zone: tzinfo = UTC) -> str:
    """An instant, to the second, in `zone` (UTC by default); `-` for none."""
    if value is None:
        return "-"
    return value.astimezone(zone).isoformat(timespec="seconds").replace("+00:00", "Z")


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return instant(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return text.splitlines()[0] if text else text


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    """`rows` as aligned columns under their headers; the last column is not padded."""
    cells = [[cell(get(row)) for _, get in columns] for row in rows]
    widths = [
        max([len(name)] + [len(line[i]) for line in cells]) for i, (name, _) in enumerate(columns)
    ]
    for line in [[name for name, _ in columns], *cells]:
        padded = [text.ljust(width) for text, width in zip(line[:-1], widths, strict=False)]
        print("  ".join([*padded, line[-1]]).rstrip())


def fields(pairs: Sequence[tuple[str, object]]) -> None:
    """One `name: value` line each, the names aligned."""
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        print(f"{name + ':':<{width + 1}} {cell(value)}")


def json_out(value: object) -> None:
    """`value` (msgspec structs, dicts, lists, datetimes) as one JSON document on stdout."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
