"""The job-type catalogue and the structural validation of job payloads (ADR 0012).

Pure: no I/O, no database, no HTTP framework. The API calls :func:`validate_payload` before a
schedule is stored (a 422 naming the field), the built-in schedule is checked by the same
function, and a worker calls it again before it executes a run. Whether a host resolves, a
module imports or a DSN name is configured is only known on a worker, at execution time, so
none of that is checked here.

This module owns the shape of each job type's payload: required and optional keys, their types
and ranges, and where secret references (``{"$secret": NAME}``, resolved only on a worker) may
and, for credential headers, must appear. Unknown keys are refused rather than ignored, so a
typo such as ``expected_staus`` is a 422 instead of a job that silently checks the default.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import TypeGuard

import httpx

__all__ = [
    "HTTP_METHODS",
    "JOB_TYPES",
    "MAX_KILL_AFTER_SECONDS",
    "MAX_REDIRECTS",
    "SECRET_HEADERS",
    "SECRET_KEY",
    "InvalidPayload",
    "is_secret_ref",
    "valid_name",
    "validate_payload",
]


class InvalidPayload(ValueError):
    """A payload that can never run; ``field`` names where (``payload.argv[0]``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# A secret reference is exactly ``{"$secret": NAME}``; workers.jobs.secretrefs resolves it.
SECRET_KEY = "$secret"  # noqa: S105 - the reference's key, not a secret
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Values of these headers never appear in results or logs, must be secret references in a
# payload, and are dropped when a redirect leaves the origin they were written for.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"}
)


def is_secret_ref(value: object) -> TypeGuard[Mapping[str, str]]:
    """True for exactly ``{"$secret": "<name>"}``: one key, a string name."""
    return isinstance(value, Mapping) and len(value) == 1 and isinstance(value.get(SECRET_KEY), str)


def valid_name(name: str) -> bool:
    """A secret's name: what follows PGSCHED_SECRET_ in the worker's environment."""
    return _SECRET_NAME.fullmatch(name) is not None


JOB_TYPES = ("http", "command", "sql", "python", "noop")  # the schedule table's CHECK
# CONNECT and TRACE have no business in a scheduled job (netguard refuses them too).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_REDIRECTS = 10
MAX_KILL_AFTER_SECONDS = 60.0
MAX_ARGV = 4096
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DSN_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TARGET = re.compile(rf"(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})")
# Managed by netguard (Host is pinned to the validated URL; framing is httpx's), so a value
# given here would be dropped; refusing it says so instead.
_MANAGED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"}
)

Json = object
_Validator = Callable[[Mapping[str, Json]], dict[str, Json]]


def validate_payload(job_type: str, payload: Mapping[str, object]) -> dict[str, object]:
    """Check ``payload`` for ``job_type``; return it normalised (a new dict) or raise.

    Raises :class:`InvalidPayload` whose ``field`` is ``job_type``, ``payload`` or a path
    below it (``payload.headers.Authorization``, ``payload.argv[2]``).
    """
    validator = _VALIDATORS.get(job_type) if isinstance(job_type, str) else None
    if validator is None:
        raise InvalidPayload("job_type", f"must be one of {', '.join(JOB_TYPES)}")
    if not isinstance(payload, Mapping):
        raise InvalidPayload("payload", "must be an object")
    _check_refs(payload, "payload")
    return validator(payload)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _check_refs(node: object, path: str) -> None:
    """Every object holding ``$secret`` must be exactly a valid reference; keys are strings."""
    if isinstance(node, Mapping):
        if SECRET_KEY in node:
            if not is_secret_ref(node):
                raise InvalidPayload(path, 'a secret reference is exactly {"$secret": "NAME"}')
            if not valid_name(str(node[SECRET_KEY])):
                raise InvalidPayload(
                    path, "secret names are letters, digits and _ (at most 128, no leading digit)"
                )
            return
        for key, item in node.items():
            if not isinstance(key, str):
                raise InvalidPayload(path, "object keys must be strings")
            _check_refs(item, f"{path}.{key}")
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            _check_refs(item, f"{path}[{i}]")


def _only(payload: Mapping[str, Json], allowed: set[str], required: set[str]) -> None:
    for key in payload:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidPayload(f"payload.{key}", f"unknown key (allowed: {known})")
    for key in sorted(required):
        if key not in payload:
            raise InvalidPayload(f"payload.{key}", "is required")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object, path: str, *, ref_ok: bool, what: str = "a string") -> Json:
    """A string (or, where allowed, a secret reference) without NUL characters."""
    if ref_ok and is_secret_ref(value):
        return dict(value)
    if not isinstance(value, str):
        raise InvalidPayload(path, f"must be {what}{' or a secret reference' if ref_ok else ''}")
    if "\x00" in value:
        raise InvalidPayload(path, "must not contain NUL characters")
    return value


# ------------------------------------------------------------------------------------------
# per type
# ------------------------------------------------------------------------------------------


def _noop(payload: Mapping[str, Json]) -> dict[str, Json]:
    _only(payload, set(), set())
    return {}


def _command(payload: Mapping[str, Json]) -> dict[str, Json]:
    _only(payload, {"argv", "env", "cwd", "kill_after_seconds"}, {"argv"})
    out: dict[str, Json] = {}
    argv = payload["argv"]
    if not isinstance(argv, list) or not argv:
        raise InvalidPayload("payload.argv", "must be a non-empty list of strings")
    if len(argv) > MAX_ARGV:
        raise InvalidPayload("payload.argv", f"at most {MAX_ARGV} items")
    # The program itself stays visible in the schedule: a secret there would hide what runs.
    if not isinstance(argv[0], str) or not argv[0]:
        raise InvalidPayload("payload.argv[0]", "must be a non-empty string (the program)")
    out["argv"] = [_text(a, f"payload.argv[{i}]", ref_ok=i > 0) for i, a in enumerate(argv)]
    if "env" in payload:
        env = payload["env"]
        if not isinstance(env, Mapping):
            raise InvalidPayload("payload.env", "must be an object of strings")
        clean: dict[str, Json] = {}
        for name, value in env.items():
            if not _ENV_NAME.fullmatch(name):
                raise InvalidPayload(f"payload.env.{name}", "is not a valid variable name")
            clean[name] = _text(value, f"payload.env.{name}", ref_ok=True)
        out["env"] = clean
    if "cwd" in payload:
        cwd = _text(payload["cwd"], "payload.cwd", ref_ok=False)
        # A relative directory would depend on wherever the worker was started.
        if not PurePosixPath(str(cwd)).is_absolute():
            raise InvalidPayload("payload.cwd", "must be an absolute path")
        out["cwd"] = cwd
    if "kill_after_seconds" in payload:
        grace = payload["kill_after_seconds"]
        if not _is_number(grace) or not 0 < grace <= MAX_KILL_AFTER_SECONDS:
            raise InvalidPayload(
                "payload.kill_after_seconds", f"must be a number in (0, {MAX_KILL_AFTER_SECONDS:g}]"
            )
        out["kill_after_seconds"] = grace
    return out


def _http(payload: Mapping[str, Json]) -> dict[str, Json]:
    _only(
        payload,
        {"url", "method", "headers", "body", "expected_status", "max_redirects"},
        {"url"},
    )
    out: dict[str, Json] = {"url": _url(payload["url"])}
    if "method" in payload:
        method = payload["method"]
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            raise InvalidPayload(
                "payload.method", f"must be one of {', '.join(sorted(HTTP_METHODS))}"
            )
        out["method"] = method.upper()
    if "headers" in payload:
        out["headers"] = _headers(payload["headers"])
    if "body" in payload:
        body = payload["body"]
        # A string is sent as is; an object or list is sent as JSON (secret references inside
        # it are resolved first).
        if not isinstance(body, str | list | Mapping):
            raise InvalidPayload("payload.body", "must be a string, an object or a list")
        out["body"] = body if not isinstance(body, Mapping) else dict(body)
    if "expected_status" in payload:
        out["expected_status"] = _expected_status(payload["expected_status"])
    if "max_redirects" in payload:
        hops = payload["max_redirects"]
        if not _is_int(hops) or not 0 <= hops <= MAX_REDIRECTS:
            raise InvalidPayload("payload.max_redirects", f"must be an integer 0..{MAX_REDIRECTS}")
        out["max_redirects"] = hops
    return out


def _url(value: Json) -> Json:
    url = _text(value, "payload.url", ref_ok=True, what="an http(s) URL")
    if not isinstance(url, str):
        return url  # a whole-URL secret (a webhook URL is a credential); netguard checks it later
    if len(url) > 8192:
        raise InvalidPayload("payload.url", "at most 8192 characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, UnicodeError):
        raise InvalidPayload("payload.url", "is not a valid URL") from None
    if parsed.scheme.lower() not in ("http", "https"):
        raise InvalidPayload("payload.url", "scheme must be http or https")
    if not parsed.host:
        raise InvalidPayload("payload.url", "has no host")
    if parsed.userinfo:
        # netguard refuses user@host (a parser-differential trick), and credentials in a URL
        # would be stored in plain text: use a secret header or a whole-URL secret instead.
        raise InvalidPayload(
            "payload.url", "must not contain credentials (user@); use a secret header"
        )
    return url


def _headers(value: Json) -> dict[str, Json]:
    if not isinstance(value, Mapping):
        raise InvalidPayload("payload.headers", "must be an object of strings")
    out: dict[str, Json] = {}
    seen: set[str] = set()
    for name, header in value.items():
        path = f"payload.headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidPayload(path, "is not a valid header name")
        lower = name.lower()
        if lower in seen:
            raise InvalidPayload(path, "is given twice (header names are case-insensitive)")
        seen.add(lower)
        if lower in _MANAGED_HEADERS:
            raise InvalidPayload(path, "is set by the HTTP client, not by the payload")
        if lower in SECRET_HEADERS and not is_secret_ref(header):
            # A literal credential would be stored in the schedule row and every event that
            # copies the payload, for as long as the event log is kept.
            raise InvalidPayload(path, 'must be a secret reference {"$secret": "NAME"}')
        checked = _text(header, path, ref_ok=True)
        if isinstance(checked, str) and (
            not checked.isascii() or any(c in checked for c in "\r\n")
        ):
            raise InvalidPayload(path, "must be printable ASCII on one line")
        out[name] = checked
    return out


def _expected_status(value: Json) -> Json:
    def code(item: object) -> int:
        if not _is_int(item) or not 100 <= item <= 599:
            raise InvalidPayload(
                "payload.expected_status", "must be an HTTP status (100..599) or a list of them"
            )
        return item

    if isinstance(value, list):
        if not value or len(value) > 100:
            raise InvalidPayload("payload.expected_status", "a list needs 1..100 statuses")
        return sorted({code(item) for item in value})
    return code(value)


def _sql(payload: Mapping[str, Json]) -> dict[str, Json]:
    _only(payload, {"statement", "dsn", "params", "autocommit"}, {"statement"})
    statement = _text(payload["statement"], "payload.statement", ref_ok=False)
    if not str(statement).strip():
        raise InvalidPayload("payload.statement", "must not be empty")
    out: dict[str, Json] = {"statement": statement}
    if "dsn" in payload:
        name = payload["dsn"]
        if not isinstance(name, str) or not _DSN_NAME.fullmatch(name):
            raise InvalidPayload(
                "payload.dsn",
                "must be a DSN name (letters, digits, _), as in PGSCHED_SQL_DSN_<NAME>",
            )
        out["dsn"] = name
    if "params" in payload:
        params = payload["params"]
        if not isinstance(params, list):
            raise InvalidPayload("payload.params", "must be a list")
        for i, param in enumerate(params):
            if not (param is None or isinstance(param, str | int | float) or is_secret_ref(param)):
                raise InvalidPayload(
                    f"payload.params[{i}]", "must be a string, number, boolean, null or secret"
                )
        out["params"] = list(params)
    if "autocommit" in payload:
        if not isinstance(payload["autocommit"], bool):
            raise InvalidPayload("payload.autocommit", "must be true or false")
        out["autocommit"] = payload["autocommit"]
    return out


def _python(payload: Mapping[str, Json]) -> dict[str, Json]:
    _only(payload, {"target", "kwargs"}, {"target"})
    target = payload["target"]
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise InvalidPayload("payload.target", 'must be "package.module:function"')
    out: dict[str, Json] = {"target": target}
    if "kwargs" in payload:
        kwargs = payload["kwargs"]
        if not isinstance(kwargs, Mapping):
            raise InvalidPayload("payload.kwargs", "must be an object")
        for name in kwargs:
            path = f"payload.kwargs.{name}"
            if not name.isidentifier() or keyword.iskeyword(name):
                raise InvalidPayload(path, "is not a valid Python parameter name")
            if name == "idempotency_key":
                raise InvalidPayload(path, "is reserved: the worker passes run_id:attempt")
            if name == "database_url":
                raise InvalidPayload(path, "is reserved: the worker passes its database URL")
            if name == "run_context":  # app.jobs.RUN_CONTEXT_PARAMETER (ADR 0027)
                raise InvalidPayload(path, "is reserved: the worker passes the run's context")
        out["kwargs"] = dict(kwargs)
    return out


_VALIDATORS: dict[str, _Validator] = {
    "noop": _noop,
    "command": _command,
    "http": _http,
    "sql": _sql,
    "python": _python,
}
