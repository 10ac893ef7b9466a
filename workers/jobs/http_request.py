"""``http`` jobs: one request through the SSRF guard, judged against the expected status.

This module owns the job-level HTTP rules: the Idempotency-Key header, JSON bodies, the
expected-status check, and which failures are worth retrying. Everything about *where* a
request may go (address checks before connecting, pinning, redirects, the 10 KB body cap) is
``workers.netguard``'s (ADR 0010); this module never opens a connection itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import httpx

from pgsched.workers import netguard
from pgsched.workers.jobs.base import (
    MAX_OUTPUT_BYTES,
    JobContext,
    Outcome,
    number,
    str_dict,
    timeout_error,
)
from pgsched.workers.jobs.secretrefs import Masker

__all__ = ["NON_RETRYABLE_STATUSES", "run", "status_matches"]

# A 4xx means "this request is wrong"; sending it again will not change the answer. The
# exceptions are the 4xx statuses that mean "not now".
_RETRYABLE_4XX = frozenset({408, 425, 429})
NON_RETRYABLE_STATUSES = frozenset(range(400, 500)) - _RETRYABLE_4XX


def status_matches(status: int, expected: object) -> bool:
    """``expected`` is an int, a list of ints, or None for any 2xx."""
    if expected is None:
        return 200 <= status <= 299
    if isinstance(expected, list):
        return status in expected
    return status == expected


def _describe_expected(expected: object) -> str:
    if expected is None:
        return "2xx"
    if isinstance(expected, list):
        return " or ".join(map(str, expected))
    return str(expected)


def _one_line_header(name: str, value: str) -> str | None:
    """Why a resolved header value cannot be sent (never the value itself), or None."""
    if any(c in value for c in "\r\n\x00"):
        return f"header {name}: its value contains a line break or NUL"
    if not value.isascii():
        return f"header {name}: its value is not ASCII"
    return None


def _bounded_body(result: netguard.HttpResult, masker: Masker) -> str:
    """The body masked, then cut to 10 KB with a marker if it was (or now is) too long."""
    text = result.body
    if result.truncated:
        # netguard cut at our extended limit and said so; the marker is re-made below.
        text = text.removesuffix(f"\n[truncated at {MAX_OUTPUT_BYTES + masker.margin} bytes]")
    masked = masker.mask(text)
    raw = masked.encode()
    if not result.truncated and len(raw) <= MAX_OUTPUT_BYTES:
        return masked
    mark = f"\n[truncated at {MAX_OUTPUT_BYTES} bytes]"
    return raw[: MAX_OUTPUT_BYTES - len(mark)].decode(errors="ignore") + mark


async def run(payload: Mapping[str, object], ctx: JobContext, masker: Masker) -> Outcome:
    """Send a validated, secret-resolved ``http`` payload; never raises for job failures."""
    headers = str_dict(payload.get("headers"))
    for name, value in headers.items():
        # Literal values were checked by validate_payload; secrets only exist from here on.
        if (problem := _one_line_header(name, value)) is not None:
            return Outcome("failed", retryable=False, error=problem)
    if not any(k.lower() == "idempotency-key" for k in headers):
        headers["Idempotency-Key"] = ctx.idempotency_key
    body = payload.get("body")
    content: str | None
    if body is None or isinstance(body, str):
        content = body
    else:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    expected = payload.get("expected_status")
    try:
        result = await netguard.fetch(
            str(payload.get("method", "GET")),
            str(payload["url"]),
            headers=headers,
            body=content,
            timeout_s=ctx.timeout_seconds,
            policy=ctx.http_policy,
            resolver=ctx.resolver,
            # Read past the limit by the masker's margin: mask first, clip after.
            max_body=MAX_OUTPUT_BYTES + masker.margin,
            max_redirects=int(number(payload.get("max_redirects"), 0)),
        )
    except netguard.Unresolved as exc:
        # DNS failures are often temporary: the run uses its remaining attempts.
        return Outcome("failed", retryable=True, error=exc.reason)
    except netguard.TargetRefused as exc:
        # A policy decision, not a fault: it holds until an operator changes the allow-list.
        return Outcome("failed", retryable=False, error=f"target refused: {exc.reason}")
    except (TimeoutError, httpx.TimeoutException):
        return Outcome("timeout", retryable=True, error=timeout_error(ctx.timeout_seconds))
    except httpx.TransportError as exc:
        # Connection refused or reset, TLS failure, protocol error: the network's weather.
        return Outcome("failed", retryable=True, error=f"{type(exc).__name__}: {exc}")
    output = _bounded_body(result, masker)
    ok = status_matches(result.status, expected)
    return Outcome(
        "succeeded" if ok else "failed",
        retryable=not ok and result.status not in NON_RETRYABLE_STATUSES,
        error=None if ok else f"HTTP {result.status}, expected {_describe_expected(expected)}",
        http_status=result.status,
        output=output,
    )
