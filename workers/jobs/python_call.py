"""``python`` jobs: call ``module:function`` in the worker process, sync or async.

This module owns importing the target, deciding how to call it (awaited on the event loop if
it is a coroutine function, otherwise on a thread of its own), passing ``kwargs`` and, to a
function that has a parameter of that name, ``idempotency_key`` (``run_id:attempt``) and
``database_url`` (the worker's own database, so pgsched's built-in maintenance job connects
there without anything in the environment) and ``run_context`` (a ``pgsched.RunContext``: the
run's id, attempt and key, and ``cancelled()``, which turns true when the worker stops the
attempt; ADR 0027), and turning what it returned or raised into an outcome.

A thread cannot be killed. When a sync function overruns its timeout the outcome is
``timeout``, but the thread runs on until the function returns. That is why each call gets a
daemon thread of its own rather than one of ``asyncio.to_thread``'s executor threads: a
runaway neither starves the loop's default executor nor blocks the worker's shutdown
(``asyncio.run`` waits for executor threads, not for daemon threads).

The same holds when the worker stops a job because its lease was lost or could not be renewed
in time (ADR 0020): an async function is cancelled at once, a sync function's thread runs on,
and can then run beside the run's next attempt on another worker. A ``python`` job also runs
with everything the worker has: its environment (``DATABASE_URL``, every
``PGSCHED_SECRET_*``), its memory and its connections. It is part of the worker, not a
sandboxed guest (ADR 0020's trust boundary).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from pgsched.app.jobs import RUN_CONTEXT_PARAMETER, RunContext
from pgsched.workers.jobs.base import JobContext, Outcome, clip_tail, one_line, timeout_error
from pgsched.workers.jobs.secretrefs import Masker

__all__ = ["DATABASE_URL_PARAMETER", "IDEMPOTENCY_PARAMETER", "RUN_CONTEXT_PARAMETER", "run"]

IDEMPOTENCY_PARAMETER = "idempotency_key"
DATABASE_URL_PARAMETER = "database_url"
_TRACEBACK_BYTES = 8_192


class _TargetError(Exception):
    """The target cannot be called as written: a non-retryable failure."""


# Targets whose module moved. Runs queued before migration 0018 name the built-in maintenance
# job by its import path from before pgsched was one package (ADR 0023).
_MOVED = {"app.maintenance:run_builtin": "pgsched.app.maintenance:run_builtin"}


def _load(target: str) -> Callable[..., Any]:
    module_name, _, attr_path = _MOVED.get(target, target).partition(":")
    try:
        # Runs the module's top-level code on the loop thread, once per process (sys.modules
        # caches it). Modules with slow imports should be imported at worker start.
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise _TargetError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _TargetError(f"{target}: {part!r} not found") from None
    if not callable(obj):
        raise _TargetError(f"{target} is not callable")
    return obj


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - instances with an async __call__
    )


def _arguments(
    fn: Callable[..., Any], target: str, kwargs: dict[str, object], given: Mapping[str, object]
) -> None:
    """Add each of ``given`` that ``fn`` names; check the call binds before making it."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature; the call itself will tell
    for name, value in given.items():
        parameter = signature.parameters.get(name)
        # Only a parameter of that name counts, not **kwargs: a function that forwards
        # **kwargs elsewhere did not ask for it.
        if parameter is not None and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            kwargs[name] = value
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise _TargetError(f"kwargs do not match {target}: {exc}") from None


async def _awaited(
    fn: Callable[..., Any], kwargs: Mapping[str, object], stop: RunContext
) -> object:
    """``await fn(**kwargs)`` in a task of its own, so that when this await is cancelled (the
    timeout, or the worker stopping the job) ``stop.cancelled()`` is true before the function
    sees its CancelledError; then the function is cancelled and waited for, as a direct await
    would have."""
    inner = asyncio.ensure_future(fn(**kwargs))
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        stop.stop()
        inner.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):  # its end is not the outcome
            await inner
        raise


async def _in_thread(fn: Callable[..., Any], kwargs: Mapping[str, object], name: str) -> object:
    """``fn(**kwargs)`` on a daemon thread; cancelling the await abandons, not stops, it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()
    context = contextvars.copy_context()  # as asyncio.to_thread does

    def deliver(value: object, error: BaseException | None) -> None:
        if future.done():  # timed out or cancelled: nobody is waiting any more
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    def body() -> None:
        value: object = None
        error: BaseException | None = None
        try:
            value = context.run(fn, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            error = exc
        # RuntimeError: the loop has closed (worker shut down); the result has no reader.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, value, error)

    threading.Thread(target=body, name=name, daemon=True).start()
    return await future


def _failure(exc: BaseException, masker: Masker) -> Outcome:
    if isinstance(exc, SystemExit):
        # sys.exit() in a CLI-style main: report it like a command's exit code.
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            return Outcome("succeeded", retryable=False, exit_code=0)
        return Outcome("failed", retryable=True, error=f"SystemExit: {exc.code}", exit_code=code)
    error = one_line(masker.mask(f"{type(exc).__qualname__}: {exc}"))
    trace = masker.mask("".join(traceback.format_exception(exc)))
    return Outcome("failed", retryable=True, error=error, output=clip_tail(trace, _TRACEBACK_BYTES))


async def run(payload: Mapping[str, object], ctx: JobContext, masker: Masker) -> Outcome:
    """Call a validated, secret-resolved ``python`` payload; never raises for job failures."""
    target = str(payload["target"])
    given = payload.get("kwargs")
    kwargs = {str(k): v for k, v in given.items()} if isinstance(given, Mapping) else {}
    try:
        fn = _load(target)
        context = RunContext(ctx.run_id, ctx.attempt, ctx.timeout_seconds)
        given = {
            IDEMPOTENCY_PARAMETER: ctx.idempotency_key,
            DATABASE_URL_PARAMETER: ctx.database_url,
            RUN_CONTEXT_PARAMETER: context,
        }
        _arguments(fn, target, kwargs, given)
    except _TargetError as exc:
        return Outcome("failed", retryable=False, error=masker.mask(str(exc)))
    is_async = _is_async(fn)
    deadline = asyncio.timeout(ctx.timeout_seconds)
    try:
        async with deadline:
            if is_async:
                result = await _awaited(fn, kwargs, context)
            else:
                try:
                    result = await _in_thread(fn, kwargs, f"pgsched-job-{ctx.idempotency_key}")
                except asyncio.CancelledError:
                    context.stop()  # the thread runs on: tell it, for it to look
                    raise
    except TimeoutError as exc:
        if not deadline.expired():
            return _failure(exc, masker)  # the function's own TimeoutError
        note = "" if is_async else "; the thread cannot be stopped and runs on"
        return Outcome("timeout", retryable=True, error=timeout_error(ctx.timeout_seconds) + note)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a job's exception is its outcome
        return _failure(exc, masker)
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it so Python does not warn
        return Outcome(
            "failed",
            retryable=False,
            error=f"{target} returned an awaitable from a sync call; declare it async def",
        )
    output = None if result is None else masker.mask(repr(result))
    return Outcome("succeeded", retryable=False, output=output)
