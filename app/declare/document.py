"""A schedules file: read into definitions, and written back from the stored schedules.

The file (YAML, or TOML by its `.toml` suffix)::

    manager: ingest            # who declares these schedules; default: the file's stem
                               # (`--prune` needs it given)
    defaults:                  # any schedule field but name and timing, under each schedule's
      timezone: Europe/Berlin
      retry_backoff: {delay_seconds: 60, factor: 2}
      labels: {team: data}     # retry_backoff, health_policy and labels merge key by key;
                               # the rest replaces
    schedules:
      - name: posts
        job_type: http
        payload: {url: "https://${API_HOST}/posts", headers: {Authorization: {$secret: api}}}
        cron: "*/30 * * * *"
      - name: report
        job_type: noop
        cron: "0 6 * * *"
        depends_on: [posts]    # by name: the file's schedules, or live ones (ADR 0033)
        health_policy: {consecutive_failures: 5}   # the thresholds not given keep the defaults

Each schedule is a `POST /v1/schedules` body (app.api.schemas.ScheduleCreate), checked by that
struct. `${NAME}` in a string value is the environment variable NAME (`${NAME:-fallback}` when
unset, `$${` always a literal `${`); an unset one without a fallback is an error naming it. What it
gives is stored and recorded in events, so secrets belong in `{"$secret": NAME}` references,
resolved by the worker when the job runs (ADR 0012), never in `${...}`.

Every error is a DeclarationError whose message is one line naming the schedule and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import tomli_w
import yaml

from pgsched.app.api.decoding import EARLIEST, LATEST, RANGE_TEXT
from pgsched.app.api.definition import create_fields
from pgsched.app.api.schemas import ScheduleCreate
from pgsched.app.domain import schedule

Format = Literal["yaml", "toml"]
FORMATS: Final = ("yaml", "toml")
_TOP: Final = frozenset({"manager", "defaults", "schedules"})
# Fields a file-level default may not give: they identify or time one schedule.
_NOT_DEFAULTS: Final = frozenset({"name", "cron", "interval_seconds", "run_at"})
# Fields whose default and own value merge key by key.
_MERGED: Final = ("retry_backoff", "health_policy", "labels")
_INSTANTS: Final = ("run_at", "starts_at", "ends_at")
# `$${` (a literal `${`, whatever follows) or `${NAME}` / `${NAME:-fallback}`.
_VARIABLE: Final = re.compile(r"\$(\$)\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MANAGER: Final = re.compile(r"[^\x00]{1,200}")
_BACKOFF: Final = (
    ("delay_seconds", "retry_delay_seconds"),
    ("factor", "retry_factor"),
    ("max_delay_seconds", "retry_max_delay_seconds"),
)


class DeclarationError(Exception):
    """A schedules file that cannot be applied; the message is one line."""


@dataclass(frozen=True, slots=True)
class Document:
    manager: str
    sha256: str  # of the file's bytes, recorded in each event it causes
    # Each schedule's client-settable columns, as the API's create would take them, in file
    # order; a field left out is absent (the operator's, then the built-in default fills it).
    schedules: list[dict[str, Any]]
    # The file names its `manager` (not its file name standing in): `--prune` needs that, since
    # two files of the same name in different places would share a stem.
    manager_given: bool = False


def load(path: Path, env: Mapping[str, str]) -> Document:
    """Read and check the file at `path`; `env` for `${...}`."""
    fmt: Format = "toml" if path.suffix.lower() == ".toml" else "yaml"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        # Without the path: the caller names it (`pgsched apply` prints "PATH: ...").
        raise DeclarationError(f"cannot read it: {exc.strerror or exc}") from None
    return parse(raw, fmt, manager=path.stem, env=env)


def parse(raw: bytes, fmt: Format, *, manager: str, env: Mapping[str, str]) -> Document:
    """A file's bytes in `fmt`; `manager` when the file names none."""
    tree = _decode(raw, fmt)
    if not isinstance(tree, Mapping):
        raise DeclarationError("the file must be a mapping with `schedules` (and `defaults`)")
    unknown = sorted(set(tree) - _TOP)
    if unknown:
        raise DeclarationError(
            f"{unknown[0]}: unknown key (the file has {', '.join(sorted(_TOP))})"
        )
    tree = dict(tree)
    for key in ("manager", "defaults"):
        tree[key] = _interpolate(tree.get(key), key, env)
    given = tree.get("manager") is not None
    manager = tree["manager"] if given else manager
    if not isinstance(manager, str) or not _MANAGER.fullmatch(manager):
        raise DeclarationError("manager: must be text of 1 to 200 characters")
    defaults = tree.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise DeclarationError("defaults: must be a mapping of schedule fields")
    for key in defaults:
        if key in _NOT_DEFAULTS:
            raise DeclarationError(f"defaults.{key}: is given per schedule, not as a default")
    entries = tree.get("schedules") or []
    if not isinstance(entries, list):
        raise DeclarationError("schedules: must be a list of schedules")
    declared: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        fields = _definition(i, _interpolate(entry, f"schedules[{i}]", env), defaults)
        if fields["name"] in seen:
            raise DeclarationError(f"schedule {fields['name']!r}: declared twice")
        seen.add(fields["name"])
        declared.append(fields | {"managed_by": manager})
    return Document(manager, hashlib.sha256(raw).hexdigest(), declared, manager_given=given)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one
    silently: what a reader sees would not be what is applied)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    for key in keys:
        if keys.count(key) > 1:
            raise DeclarationError(f"line {node.start_mark.line + 1}: key {key!r} given twice")
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


def _decode(raw: bytes, fmt: Format) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DeclarationError("the file is not UTF-8 text") from None
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationError(f"not valid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DeclarationError(f"not valid YAML: {where}{problem}") from None


def _interpolate(node: object, path: str, env: Mapping[str, str]) -> object:
    """`${NAME}` in every string value (not in keys) from `env`."""
    if isinstance(node, str):

        def value(match: re.Match[str]) -> str:
            escaped, name, fallback = match.groups()
            if escaped:
                return "${"
            if name in env:
                return env[name]
            if fallback is not None:
                return fallback
            raise DeclarationError(f"{path}: environment variable {name} is not set")

        return _VARIABLE.sub(value, node)
    if isinstance(node, Mapping):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    return node


def _definition(i: int, entry: object, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """One schedule's columns: its entry over the file's defaults, checked as the API checks
    a create body (bounds, types, unknown fields)."""
    if not isinstance(entry, Mapping):
        raise DeclarationError(f"schedules[{i}]: must be a mapping of schedule fields")
    name = entry.get("name")
    who = f"schedule {name!r}" if isinstance(name, str) else f"schedules[{i}]"
    merged = {**defaults, **entry}
    for key in _MERGED:
        if isinstance(defaults.get(key), Mapping) and isinstance(entry.get(key), Mapping):
            merged[key] = {**defaults[key], **entry[key]}
    for key in _INSTANTS:
        # Lax conversion would read a number as seconds since 1970: refuse it as the API does.
        if isinstance(merged.get(key), int | float) and not isinstance(merged[key], bool):
            raise DeclarationError(f"{who}: {key}: must be an RFC 3339 date-time, not a number")
    try:
        # Lax, so that `${ATTEMPTS}` (a string) may give a number.
        data = msgspec.convert(merged, ScheduleCreate, strict=False)
    except msgspec.ValidationError as exc:
        raise DeclarationError(f"{who}: {_where(str(exc))}") from None
    for key in _INSTANTS:
        instant = getattr(data, key)
        if isinstance(instant, datetime) and not EARLIEST <= instant < LATEST:
            raise DeclarationError(f"{who}: {key}: must be {RANGE_TEXT}")
    fields = create_fields(data)
    if "enabled" not in merged:
        # Left out, `enabled` is not declared: apply never pauses nor resumes the schedule, so
        # a pause by the circuit breaker or an operator outlives every apply (ADR 0031).
        del fields["enabled"]
    return fields


def _where(message: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.max_attempts`" as "max_attempts: ..."."""
    text, sep, at = message.rpartition(" - at `$")
    if not sep:
        return message
    return f"{at.rstrip('`').lstrip('.')}: {text}"


# -- export ----------------------------------------------------------------------------------


def render(
    rows: Sequence[Mapping[str, Any]],
    fmt: Format,
    *,
    manager: str | None,
    defaults: Mapping[str, Any] | None = None,
) -> str:
    """`rows` (stored schedules) as a schedules file that applying changes nothing: each field
    that differs from what a left-out field would get (`defaults`, then the built-in ones)."""
    base = schedule.complete({}, defaults)
    document: dict[str, Any] = {}
    if manager is not None:
        document["manager"] = manager
    document["schedules"] = [_entry(row, base) for row in rows]
    # Every `${` stored is text, not a variable: written as `$${`, apply reads it back as is
    # instead of filling it from its environment (where a secret could be).
    document = {k: _escaped(v) for k, v in document.items()}
    if fmt == "toml":
        try:
            return tomli_w.dumps(document)
        except TypeError as exc:  # TOML has no null: a payload that holds one
            raise DeclarationError(f"cannot be written as TOML ({exc}); use yaml") from None
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _entry(row: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": row["name"], "job_type": row["job_type"]}
    for key in schedule.TIMING:
        if row[key] is not None:
            entry[key] = _plain(row[key])
    backoff = {key: row[column] for key, column in _BACKOFF if row[column] != base[column]}
    for column in sorted(schedule.COLUMNS - set(schedule.TIMING)):
        if column in {"name", "job_type", "kind", "managed_by"} or column.startswith("retry_"):
            continue
        value: Any = schedule.stored(row, column)
        if column == "health_policy":  # only the thresholds that differ: apply merges them
            value = {k: v for k, v in value.items() if v != schedule.HEALTH_POLICY.get(k)}
            if value:
                entry[column] = _plain(value)
            continue
        if value != base[column]:
            entry[column] = _plain(value)
    if backoff:
        entry["retry_backoff"] = backoff
    return entry


def _escaped(node: object) -> object:
    """Every string value in `node` with `${` as `$${`, which the file's interpolation reads
    as a literal `${`. Keys are left as they are: interpolation does not read them."""
    if isinstance(node, str):
        return node.replace("${", "$${")
    if isinstance(node, Mapping):
        return {k: _escaped(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escaped(v) for v in node]
    return node


def _plain(value: object) -> object:
    """A value both formats write and read back the same: instants as RFC 3339 text, the rest
    as JSON has it (payloads are JSON already)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        plain: Any = json.loads(json.dumps(value, default=str))
        return plain
    return value
