"""``execute``: validate, resolve secrets, run one job type, and bound what comes back.

This module owns the steps every job type shares, in order: structural validation (a payload
stored before validation existed still fails cleanly), secret resolution at the last moment,
dispatch, masking of every resolved value in ``output`` and ``error``, the 10 KB / 2 KB bounds,
and the duration. Each job type enforces ``ctx.timeout_seconds`` itself, because only it
knows how to stop its work (a process group, a server-side statement, an HTTP exchange).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from pgsched.app.domain.jobs import validate_payload
from pgsched.workers.jobs import command, http_request, python_call, sql
from pgsched.workers.jobs.base import (
    MAX_ERROR_BYTES,
    MAX_OUTPUT_BYTES,
    InvalidPayload,
    JobContext,
    Outcome,
    clip_head,
    number,
    one_line,
    storable,
)
from pgsched.workers.jobs.secretrefs import Masker, MissingSecret, resolve

__all__ = ["execute", "max_overrun_seconds"]

log = logging.getLogger(__name__)

_Runner = Callable[[Mapping[str, object], JobContext, Masker], Awaitable[Outcome]]


async def _noop(payload: Mapping[str, object], ctx: JobContext, masker: Masker) -> Outcome:
    return Outcome("succeeded", retryable=False)


_RUNNERS: dict[str, _Runner] = {
    "noop": _noop,
    "command": command.run,
    "http": http_request.run,
    "sql": sql.run,
    "python": python_call.run,
}


def max_overrun_seconds(job_type: str, payload: Mapping[str, object]) -> float:
    """How long :func:`execute` may take beyond ``ctx.timeout_seconds`` while stopping a job.

    For a worker sizing a lease or a backstop timeout: a command gets its kill grace plus the
    pipe drain, an sql job its backstop; the rest stop at the deadline. One second of slack
    covers scheduling and cleanup.
    """
    if job_type == "command":
        try:
            grace = number(payload.get("kill_after_seconds"), command.KILL_GRACE_SECONDS)
        except TypeError:
            grace = command.KILL_GRACE_SECONDS  # invalid payloads fail before running
        return grace + command.DRAIN_SECONDS + 1.0
    if job_type == "sql":
        return sql.BACKSTOP_SECONDS + 1.0
    return 1.0


def _finish(outcome: Outcome, masker: Masker, started: float) -> Outcome:
    """Mask (again: cheap, and a job type that forgot cannot leak), bound and time."""
    error = outcome.error
    if error is not None:
        error = clip_head(one_line(storable(masker.mask(error))), MAX_ERROR_BYTES)
    output = outcome.output
    if output is not None:
        output = clip_head(storable(masker.mask(output)), MAX_OUTPUT_BYTES)
    return dataclasses.replace(
        outcome,
        error=error,
        output=output,
        duration_ms=(time.monotonic() - started) * 1000,
    )


async def execute(job_type: str, payload: Mapping[str, object], ctx: JobContext) -> Outcome:
    """Run one attempt of a job. Never raises for a job's failure; see ADR 0012.

    Returns ``succeeded``, ``failed`` or ``timeout`` (never ``cancelled``: a cancelled task
    gets ``asyncio.CancelledError`` re-raised after its processes and connections are gone,
    and the worker records the cancellation).
    """
    started = time.monotonic()
    no_secrets = Masker(())
    try:
        clean = validate_payload(job_type, payload)
    except InvalidPayload as exc:
        return _finish(
            Outcome("failed", retryable=False, error=f"invalid payload: {exc}"), no_secrets, started
        )
    try:
        resolved, values = resolve(clean, ctx.environ)
    except MissingSecret as exc:
        return _finish(Outcome("failed", retryable=False, error=str(exc)), no_secrets, started)
    masker = Masker(values)
    if not isinstance(resolved, dict):  # cannot happen: resolve keeps a dict a dict
        raise TypeError("resolved payload is not an object")
    try:
        outcome = await _RUNNERS[job_type](resolved, ctx, masker)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in a job type must not kill the worker slot
        # Only the type is logged: the message could quote a payload value, and this is the
        # one place where an unexpected exception sees resolved secrets.
        log.error("job type %s raised %s (run %s)", job_type, type(exc).__name__, ctx.run_id)
        outcome = Outcome(
            "failed", retryable=True, error=f"internal error: {type(exc).__name__}: {exc}"
        )
    return _finish(outcome, masker, started)
