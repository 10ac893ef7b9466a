"""Where Litestar's generated OpenAPI document and OPTIONS answers disagree with the API.

- **Request bodies forbid unknown fields** (`forbid_unknown_fields=True`: a typo is a 422), but
  Litestar does not write `additionalProperties: false` for them, so a client generated from
  the document would believe extra fields are fine. `OpenAPIJson` adds it to the schema of
  every struct in app.api.schemas that forbids them.
- **Integer bounds** leave Litestar as floats (`float(le)`): `maximum: 9.223372036854776e+18`
  on ids is 2^63, one more than the bigint the API accepts. Bounds of integer schemas are
  written as integers; a float at or above 2^63 can only be the bigint bound, the largest any
  integer input has.
- **Deprecated fields** cannot be marked from a msgspec field, so `DEPRECATED` lists them
  (`deprecated: true` on their property): a kept alias such as `/stats`'
  `error_stats.failed_runs_24h` (ADR 0029).
- **OPTIONS**: Litestar answers it with an `Allow` header computed from the first handler
  registered for a path (`OPTIONS /v1/schedules` said `OPTIONS, POST`, leaving out GET).
  `correct_allow` rewrites the header from the path's route, which knows every method: the
  same list a 405 gives, and the methods the document lists for the path, plus OPTIONS.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Final

import msgspec
from litestar import Litestar, Request
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

from pgsched.app.api import schemas
from pgsched.app.api.auth import is_generated_options

_BOUNDS: Final = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# (component schema, property) kept for old clients only.
DEPRECATED: Final = frozenset({("ErrorStats", "failed_runs_24h")})


def _strict_structs() -> frozenset[str]:
    """Names of the body structs that refuse unknown fields (their component schema titles)."""
    return frozenset(
        name
        for name, cls in inspect.getmembers(schemas, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__struct_config__.forbid_unknown_fields
    )


STRICT_STRUCTS: Final = _strict_structs()


def _is_integer(node: dict[str, Any]) -> bool:
    if node.get("type") == "integer":
        return True
    variants = node.get("oneOf") or node.get("anyOf") or []
    types = {v.get("type") for v in variants if isinstance(v, dict)} - {"null"}
    return types == {"integer"}


def _integer_bound(value: float) -> int:
    return schemas.BIGINT if value >= 2**63 else int(value)


def _tidy(node: object) -> None:
    if isinstance(node, dict):
        if _is_integer(node):
            for key in _BOUNDS:
                if isinstance(node.get(key), float):
                    node[key] = _integer_bound(node[key])
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for value in node:
            _tidy(value)


def tidy(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the generated document, corrected as the module says."""
    document = copy.deepcopy(document)
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        if name in STRICT_STRUCTS:
            schema["additionalProperties"] = False
        for prop, spec in schema.get("properties", {}).items():
            if (name, prop) in DEPRECATED:
                spec["deprecated"] = True
    _tidy(document)
    return document


class OpenAPIJson(JsonRenderPlugin):
    """`/schema/openapi.json`, tidied."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return self.render_json(request, tidy(openapi_schema))


def _methods(app: Litestar) -> dict[str, str]:
    """Each path template's `Allow` value, from the merged routes."""
    allowed: dict[str, str] = app.state.get("allow_by_path", {})
    if not allowed:
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                allowed[route.path_format] = ", ".join(sorted(route.methods))
        app.state["allow_by_path"] = allowed
    return allowed


async def correct_allow(message: Message, scope: Scope) -> None:
    """A `before_send` hook: the `Allow` of Litestar's OPTIONS answer lists every method."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    handler = scope.get("route_handler")
    if handler is None or not is_generated_options(handler):
        return
    allow = _methods(scope["app"]).get(scope.get("path_template", ""))
    if allow:
        MutableScopeHeaders.from_message(message)["Allow"] = allow
