"""Errors as RFC 9457 problem details (`application/problem+json`), for every 4xx and 5xx.

Every error the API returns has the same shape: `type` (a stable URN per kind of problem),
`title`, `status`, `detail`, `instance` (the request path) and, for input errors, `errors`: a list
of `{field, message}` naming the offending field. Litestar's own errors (routing 404/405, the
msgspec validation of bodies and parameters, the body-size limit) go through the same mapping, so a
client handles one format. A failed validation of well-formed input is 422; input that cannot be
parsed at all (not JSON) is 400.

A 500 is a bug: it is logged with its traceback here and answered with a problem that says
nothing about the cause.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final, Literal

import msgspec
import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import ParameterKwarg
from litestar.types import ExceptionHandlersMap
from psycopg_pool import PoolTimeout

from pgsched.app.db import store
from pgsched.app.domain.errors import (
    HasDependents,
    InvalidDefinition,
    InvalidRequest,
    NotFound,
    Protected,
    VersionMismatch,
)
from pgsched.app.domain.jobs import InvalidPayload
from pgsched.app.domain.occurrences import InvalidSchedule

log = logging.getLogger("pgsched.api")

MEDIA_TYPE: Final = "application/problem+json"
_URN: Final = "urn:pgsched:problem:"


class FieldError(msgspec.Struct, omit_defaults=True):
    """One offending input: `field` is a JSON path below the body (`retry_backoff.factor`), a
    query or path parameter, or a header name; `source` says which."""

    field: str
    message: str
    source: str | None = None


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)


class ApiError(Exception):
    """An expected failure a handler raises; becomes a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        field: str | None = None,
        source: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _slug(status)
        self.errors = [FieldError(field, detail, source)] if field else []
        self.headers = dict(headers or {})


def _slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    detail: str | None,
    *,
    kind: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[Problem]:
    body = Problem(
        type=_URN + (kind or _slug(status)),
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors or [],
    )
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=dict(headers or {}))


# msgspec says "Object contains unknown field `bogus`" or "Object missing required field `to`"
# with the key of the whole body: name the field itself instead.
_UNKNOWN_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")
_SOURCES = {"body": "body", "query": "query", "path": "path", "header": "header"}


def _wire_names(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The handler's parameters whose name on the wire is not their Python name: Litestar
    reports a failed `states` or `if_match`, the client sent the query parameter `state` or the
    header `If-Match`, and the problem names what the client sent."""
    handler = request.scope.get("route_handler")
    if handler is None:
        return {}
    return {
        name: kwarg.name
        for name, field in handler.parsed_fn_signature.parameters.items()
        if isinstance(kwarg := field.kwarg_definition, ParameterKwarg) and kwarg.name
    }


def _choices(annotation: object) -> list[str]:
    """The values of the Literal inside a parameter's annotation (`list[RunState] | None`)."""
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return [c for arg in typing.get_args(annotation) for c in _choices(arg)]


_ENUM = re.compile(r"^Invalid enum value (?P<value>.*)$")


def _enum_message(message: str, name: str, request: Request[Any, Any, Any]) -> str:
    """msgspec's "Invalid enum value 'failed'", with the values that are valid: a client that
    guessed a word learns the right one from the answer, not from the document."""
    wrong = _ENUM.match(message)
    handler = request.scope.get("route_handler")
    if wrong is None or handler is None:
        return message
    declared = handler.parsed_fn_signature.parameters.get(name)
    choices = _choices(declared.annotation) if declared is not None else []
    if not choices:
        return message
    return f"must be one of {', '.join(choices)}; got {wrong['value']}"


def _validation_errors(extra: object, request: Request[Any, Any, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    if not isinstance(extra, list):
        return errors
    wire = _wire_names(request)
    for item in extra:
        if not isinstance(item, Mapping):
            continue
        message = str(item.get("message", "is invalid"))
        field = str(item.get("key") or "body")
        if field == "data":  # the body as a whole
            unknown = _UNKNOWN_FIELD.search(message)
            field = unknown.group(1) if unknown else "body"
        # Litestar gives "body" or a ParamType member (a str enum whose value is the name).
        source = item.get("source")
        value = getattr(source, "value", source)
        if value != "body":
            message = _enum_message(message, field, request)
            field = wire.get(field, field)
        errors.append(FieldError(field, message, _SOURCES.get(str(value)) if value else None))
    return errors


def _from_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    headers = dict(exc.headers or {})
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc.extra, request)
        if errors:
            detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
            return problem_response(
                request, 422, detail, kind="validation-failed", errors=errors, headers=headers
            )
        return problem_response(request, 400, exc.detail, headers=headers)
    status, detail = exc.status_code, exc.detail
    if status == 400:  # the body could not be decoded at all (msgspec's words follow)
        detail = f"the request could not be parsed: {detail}"
    elif status == 413:
        detail = "the body is larger than this API accepts"
    return problem_response(request, status, detail, headers=headers)


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Problem]:
    return problem_response(
        request, exc.status, exc.detail, kind=exc.kind, errors=exc.errors, headers=exc.headers
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if exc.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
        return problem_response(request, exc.status_code, HTTPStatus(exc.status_code).phrase)
    return _from_http_exception(request, exc)


def _not_found(request: Request[Any, Any, Any], exc: NotFound) -> Response[Problem]:
    return problem_response(request, 404, str(exc))


def _stale(request: Request[Any, Any, Any], exc: VersionMismatch) -> Response[Problem]:
    """The If-Match version is not the schedule's."""
    return _api_error(
        request,
        ApiError(412, str(exc), kind="precondition-failed", field="If-Match", source="header"),
    )


def _bad_definition(request: Request[Any, Any, Any], exc: InvalidDefinition) -> Response[Problem]:
    """A definition the domain refuses: the field is in the body."""
    return _api_error(request, ApiError(422, exc.message, field=exc.field, source="body"))


def _protected(request: Request[Any, Any, Any], exc: Protected) -> Response[Problem]:
    errors = [FieldError(exc.field, str(exc))] if exc.field else []
    return problem_response(request, 409, str(exc), kind="builtin-schedule", errors=errors)


def _has_dependents(request: Request[Any, Any, Any], exc: HasDependents) -> Response[Problem]:
    """Deleting an upstream of live schedules (ADR 0033): their names are in the detail."""
    return problem_response(request, 409, str(exc), kind="has-dependents")


def _invalid(
    request: Request[Any, Any, Any],
    exc: InvalidRequest | InvalidSchedule | InvalidPayload,
) -> Response[Problem]:
    """The domain's own validation errors, each naming its field."""
    if isinstance(exc, InvalidRequest):
        message = str(exc).removeprefix(f"{exc.field}: ")
    else:
        message = exc.message
    errors = [FieldError(exc.field, message)]
    return problem_response(
        request, 422, f"{exc.field}: {message}", kind="validation-failed", errors=errors
    )


def _name_taken(request: Request[Any, Any, Any], exc: store.NameTaken) -> Response[Problem]:
    return problem_response(
        request,
        409,
        "a live schedule already has this name",
        kind="name-taken",
        errors=[FieldError("name", "is taken by a live schedule")],
    )


def _partition_missing(
    request: Request[Any, Any, Any], exc: store.PartitionMissing
) -> Response[Problem]:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request, 503, "the database has no partition for this month yet; maintenance is behind"
    )


def _database_away(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return problem_response(
        request, 503, "the database is unavailable", headers={"Retry-After": "5"}
    )


def _bug(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Anything else is a bug: logged with its traceback, answered without a word about it."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "an internal error occurred; it has been logged")


# Litestar picks the handler of the closest class in the exception's MRO.
EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    NotFound: _not_found,
    VersionMismatch: _stale,
    InvalidDefinition: _bad_definition,
    Protected: _protected,
    HasDependents: _has_dependents,
    InvalidRequest: _invalid,
    InvalidSchedule: _invalid,
    InvalidPayload: _invalid,
    store.NameTaken: _name_taken,
    store.PartitionMissing: _partition_missing,
    PoolTimeout: _database_away,
    psycopg.OperationalError: _database_away,
    Exception: _bug,
}


def responses(*statuses: int, public: bool = False) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the problem responses a route may give: `statuses` plus those any
    request may get (400, 422, 503; 401 and 403 unless `public`). They replace Litestar's own
    ValidationException entry, whose shape is not what the API sends."""
    common = {400, 422, 503} | (set() if public else {401, 403})
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=MEDIA_TYPE,
            description=HTTPStatus(status).phrase,
            generate_examples=False,
        )
        for status in sorted(common | set(statuses))
    }
