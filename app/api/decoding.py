"""Request bodies decoded at the boundary: bounded nesting, strict types, instants in range.

Litestar decodes a JSON body into Python values and then converts them to the handler's msgspec
struct in msgspec's lax mode. Three kinds of hostile input got through that way and became
500s or broke the OpenAPI contract, so `ApiRequest.json` checks them before any handler code
(and before anything recursive) sees the body:

- **Nesting.** msgspec, `json.dumps` and every recursive walk of a payload fail with a
  RecursionError at about 1,000 levels (a 2 KB body). A body nested deeper than
  `MAX_JSON_DEPTH` is refused by a linear scan of its bytes, before it is decoded.
- **Duplicate keys.** A JSON decoder keeps the last of two equal keys in one object, silently
  (`{"name": "a", ..., "name": "b"}` created "b"), so what a client, a proxy or a log reads
  from a body could differ from what the API stored. A body with a key twice in one object, at
  any depth, is refused naming the key's path; found by a linear, non-recursive scan.
- **Strict types.** Lax conversion turns a JSON number into a date-time (seconds since the
  epoch) and the string `"5"` into an integer, which the OpenAPI document does not allow. The
  body is converted once more in strict mode, so it is accepted exactly when the document
  says it is valid; the problem names the field.
- **Instants.** `datetime` covers years 1 to 9999 in its own offset: `0001-01-01T00:00:00+14:00`
  is before year 1 in UTC and `9999-12-31T23:59:59-14:00` after 9999, so converting either
  overflows, and instants near the edges overflow later in interval, jitter, grace and retry
  arithmetic (each up to 2^31 seconds, 68 years). Every instant in a body must lie in
  [`EARLIEST`, `LATEST`): from the Unix epoch (no run, event or partition predates it) to the
  year 9000, which leaves nearly a thousand years of margin for that arithmetic and for the
  occurrence function's searches. Comparing aware datetimes does not convert them, so the
  check itself cannot overflow.

Decisions: docs/adr/0014-rest-api.md ("Bounded input").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from itertools import accumulate
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.exceptions import ClientException, ValidationException
from litestar.types import Empty

from pgsched.app.domain.schedule import EARLIEST, LATEST, RANGE_TEXT

__all__ = ["EARLIEST", "LATEST", "MAX_JSON_DEPTH", "RANGE_TEXT"]

MAX_JSON_DEPTH: Final = 32

# A JSON string (escapes included): brackets inside strings do not nest.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: linear, fast
_NOT_BRACKET: Final = re.compile(rb"[^\[\]{}]+")
# Opening brackets count +1, closing ones -1 (translated to 2 and 0, then shifted by one).
_STEP: Final = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# The tokens that shape a JSON text: strings, brackets, colons and commas (scalars are skipped).
_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,]', re.DOTALL)
# The same text as runs that hold no key and no brace, keys (a string, then a colon) and braces:
# `duplicate_key` loops in Python only over keys and braces. Possessive, so nothing backtracks.
_S = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_SHAPE: Final = re.compile(
    rb"(?:[^\"{}]++|"
    + _S
    + rb"(?![ \t\n\r]*+:))++|(?P<key>"
    + _S
    + rb")[ \t\n\r]*+:|(?P<brace>[{}])",
    re.DOTALL,
)
_QUOTE, _COLON, _COMMA = ord('"'), ord(":"), ord(",")
_OPEN_OBJECT, _OPEN_ARRAY = ord("{"), ord("[")
# msgspec's "... - at `$.retry_backoff.factor`" suffix: the path of the offending value.
_AT: Final = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_FIELD: Final = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def nesting_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar).

    Linear and non-recursive, so any body can be measured; brackets inside strings are skipped.
    A malformed text gets some number, and the decoder then says what is wrong with it.
    """
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", body))
    if not brackets:
        return 0
    return max(accumulate(step - 1 for step in brackets.translate(_STEP)))


def _key(token: bytes) -> str:
    """A JSON string token as the key it names (escapes decoded: `"a"` and `"\\u0061"` are one)."""
    if b"\\" not in token:
        return token[1:-1].decode("utf-8", "surrogateescape")
    key: str = msgspec.json.decode(token)
    return key


def _path(place: list[str | int], key: str) -> str:
    """Where a key is, as the API names fields: `retry_backoff.factor`, `payload.body.a[1].b`."""
    path = ""
    for step in [*place, key]:
        path += f"[{step}]" if isinstance(step, int) else f".{step}" if path else step
    return path


def duplicate_key(body: bytes) -> str | None:
    """The path of the first key that appears twice in one object of a JSON text, or None.

    Linear and never recursive, like `nesting_depth`: one pass over the keys and braces with a
    stack of the open objects' keys (a colon outside a string is always in the innermost open
    object, so arrays need no tracking). Only a body that has a duplicate is scanned again, by
    `_locate`, to name it. Meant for a text the decoder accepted; on any other it returns
    something or None and changes nothing.
    """
    objects: list[set[str]] = []
    for match in _SHAPE.finditer(body):
        if (token := match["key"]) is not None:
            if not objects:
                return None  # not JSON; the decoder reports it
            key = _key(token)
            if key in objects[-1]:
                return _locate(body)
            objects[-1].add(key)
        elif (brace := match["brace"]) == b"{":
            objects.append(set())
        elif brace is not None and objects:
            objects.pop()
    return None


def _locate(body: bytes) -> str | None:
    """`duplicate_key`'s answer with its path: every container tracked, arrays by index."""
    seen: list[set[str] | None] = []  # per open container: an object's keys, None for an array
    place: list[str | int] = []  # per open container: the current key or index
    last = b""
    for match in _TOKEN.finditer(body):
        token = match.group()
        first = token[0]
        if first == _QUOTE:
            last = token
        elif first == _COLON and seen and (keys := seen[-1]) is not None:
            key = _key(last)
            if key in keys:
                return _path(place[:-1], key)
            keys.add(key)
            place[-1] = key
        elif first == _OPEN_OBJECT:
            seen.append(set())
            place.append("")
        elif first == _OPEN_ARRAY:
            seen.append(None)
            place.append(0)
        elif first == _COMMA:
            if place and isinstance(index := place[-1], int):
                place[-1] = index + 1
        elif seen:  # a closing bracket
            seen.pop()
            place.pop()
    return None


def _problem(field: str, message: str) -> ValidationException:
    detail = f"{field}: {message}"
    return ValidationException(
        detail=detail, extra=[{"key": field, "message": message, "source": "body"}]
    )


def _field(path: str, message: str) -> tuple[str, str]:
    """A msgspec path (`.retry_backoff.factor`, `[2]`) as the field name the API reports."""
    field = path.lstrip(".")
    named = _FIELD.search(message)
    if named:  # msgspec reports a missing or unknown key at the object that holds it
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    return field or "body", message


def _instants(value: object, path: str) -> Iterator[tuple[str, datetime]]:
    """Every datetime in a decoded struct, with the field name it came from."""
    if isinstance(value, datetime):
        yield path, value
    elif isinstance(value, msgspec.Struct):
        for info in msgspec.structs.fields(value):
            name = f"{path}.{info.encode_name}" if path else info.encode_name
            yield from _instants(getattr(value, info.name), name)


def check_body(value: object, target: type[Any]) -> object:
    """`value` (decoded JSON) converted strictly to `target`, its instants within range.

    Raises ValidationException naming the first offending field (a 422, app.api.problems).
    """
    try:
        converted = msgspec.convert(value, target, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT.match(text)
        # At the top level msgspec names no path.
        field, message = _field(match["path"], match["message"]) if match else _field("", text)
        raise _problem(field, message) from exc
    for field, instant in _instants(converted, ""):
        if not EARLIEST <= instant < LATEST:
            raise _problem(field, f"must be an instant {RANGE_TEXT}")
    return converted


def _body_type(request: Request[Any, Any, Any]) -> type[Any] | None:
    """The msgspec struct the handler declares as its `data`, if any."""
    handler = request.scope.get("route_handler")
    parameter = handler.parsed_fn_signature.parameters.get("data") if handler else None
    target = parameter.annotation if parameter is not None else None
    return target if isinstance(target, type) and issubclass(target, msgspec.Struct) else None


class ApiRequest(Request[Any, Any, Any]):
    """Litestar's request, whose JSON body is bounded and checked as the module says."""

    _checked = False

    async def json(self) -> Any:  # noqa: ANN401 (Litestar's signature: any JSON value)
        if self._json is Empty and self._connection_state.json is Empty:
            body = await self.body()
            if not body.strip() and _body_type(self) is not None:
                # Litestar would read it as `null` and report the missing value as "'data'".
                raise ClientException(detail="a JSON body is required")
            depth = nesting_depth(body)
            if depth > MAX_JSON_DEPTH:
                raise _problem(
                    "body", f"nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted"
                )
        value = await super().json()
        if not self._checked:
            duplicate = duplicate_key(await self.body())
            if duplicate is not None:
                raise _problem(
                    duplicate, "appears more than once in its object; send each key once"
                )
            target = _body_type(self)
            if target is not None:
                check_body(value, target)
            self._checked = True
        return value
