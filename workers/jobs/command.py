"""``command`` jobs: run an argv list (never a shell) with a clean environment.

This module owns process execution: spawning in a new session (its own process group),
capturing stdout and stderr interleaved into a bounded buffer, the timeout and cancellation
path (SIGTERM to the group, a grace period, then SIGKILL), and making sure nothing the job
started outlives it: the group is killed even after a normal exit, so a backgrounded child
cannot keep running, or keep our pipe open.

We use ``loop.subprocess_exec`` with our own protocol rather than
``asyncio.create_subprocess_exec``: the protocol appends each chunk straight into the bounded
buffer (no StreamReader to drain or overflow), and we own the transport, so we can close it
even when a grandchild that escaped the group (``setsid``) still holds the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

from workers.jobs.base import (
    MAX_OUTPUT_BYTES,
    JobContext,
    Outcome,
    number,
    str_dict,
    str_list,
    timeout_error,
)
from workers.jobs.secretrefs import Masker

__all__ = [
    "DEFAULT_PATH",
    "DRAIN_SECONDS",
    "HEAD_BYTES",
    "KILL_GRACE_SECONDS",
    "PASSED_ENV",
    "run",
    "run_argv",
]

# SIGTERM first, SIGKILL this long after (payload "kill_after_seconds" overrides it).
KILL_GRACE_SECONDS = 5.0
# After the leader exits and its group is killed, how long we wait for the pipe to close. Only
# a process that left our group (setsid) can hold it open that long; we stop reading then.
DRAIN_SECONDS = 1.0
# Worker variables a command inherits: enough to find programs, pick a locale and a timezone,
# and have a home. Nothing else, so DATABASE_URL, PGSCHED_SECRET_* and PGSCHED_SQL_DSN_* never
# reach a command unless its payload says so (ADR 0012).
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Output keeps the first HEAD_BYTES and the rest from the end: the start says what the command
# was doing, the end usually says why it failed.
HEAD_BYTES = 2_048
_MARKER_ROOM = 48  # "\n[... N bytes omitted ...]\n" for any N below 10**20

# Cleanup tasks that outlived a second cancellation; referenced so they are not collected.
_REAPERS: set[asyncio.Task[None]] = set()


class _Capture(asyncio.SubprocessProtocol):
    """Bounded capture of the merged stdout/stderr pipe, plus exit and EOF signals."""

    def __init__(self, head: int, tail: int) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._head_limit = head
        self._tail_limit = tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.total += len(data)
        room = self._head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self._tail_limit:  # trim in batches, not per chunk
                del self.tail[: len(self.tail) - self._tail_limit]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def text(self, masker: Masker) -> str:
        """Masked output: whole if it fits, else the first 2 KiB and the last ~8 KiB."""
        kept = len(self.head) + len(self.tail)
        if kept == self.total and kept <= self._head_limit + self._tail_limit:
            whole = masker.mask(bytes(self.head + self.tail).decode(errors="replace"))
            if len(whole.encode()) <= MAX_OUTPUT_BYTES:
                return whole
        head = masker.mask(bytes(self.head).decode(errors="replace"))
        tail = masker.mask(bytes(self.tail[-self._tail_limit :]).decode(errors="replace"))
        return _join(head, tail, self.total)


def _join(head: str, tail: str, total: int) -> str:
    """First HEAD_BYTES of ``head``, a marker, and as much of the end of ``tail`` as fits.

    Both were masked on the margin-extended buffers; clipping only now means a secret cut by
    a limit was still seen whole.
    """
    head = _cut_head(head)
    tail = _cut_tail(tail, MAX_OUTPUT_BYTES - len(head.encode()) - _MARKER_ROOM)
    # Counted after masking, so approximate by the length difference of masked secrets.
    omitted = max(0, total - len(head.encode()) - len(tail.encode()))
    return f"{head}\n[... {omitted} bytes omitted ...]\n{tail}"


def _cut_head(text: str) -> str:
    return text.encode()[:HEAD_BYTES].decode(errors="ignore")


def _cut_tail(text: str, limit: int) -> str:
    raw = text.encode()
    return raw[max(0, len(raw) - limit) :].decode(errors="ignore")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The job runs in its own session, so its process group id is its pid. After the leader
    # has been reaped the id stays reserved while any member lives, so this cannot hit an
    # unrelated group unless the pid space wrapped around in between.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _stop(capture: _Capture, pgid: int, grace: float) -> str:
    """SIGTERM the group, wait ``grace`` for the leader, SIGKILL the group; how it ended."""
    how = "terminated (SIGTERM)"
    if not capture.exited.done():
        _signal_group(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(capture.exited)
        except TimeoutError:
            how = f"killed (SIGKILL) after a {grace:g} s grace"
    # Always: children that ignored SIGTERM, or that the leader left behind, die here.
    _signal_group(pgid, signal.SIGKILL)
    await asyncio.shield(capture.exited)  # never cancel the future others wait on
    return how


async def _drain(capture: _Capture) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await asyncio.shield(capture.closed)


def _environment(ctx: JobContext, extra: Mapping[str, str]) -> dict[str, str]:
    env = {name: ctx.environ[name] for name in PASSED_ENV if name in ctx.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    # The idempotency key of ADR 0004, for scripts that guard their side effects with it.
    env["PGSCHED_RUN_ID"] = str(ctx.run_id)
    env["PGSCHED_ATTEMPT"] = str(ctx.attempt)
    env["PGSCHED_IDEMPOTENCY_KEY"] = ctx.idempotency_key
    env.update(extra)
    return env


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"terminated by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"terminated by signal {-code}"
    return f"exit code {code}"


async def run(payload: Mapping[str, object], ctx: JobContext, masker: Masker) -> Outcome:
    """Run a validated, secret-resolved ``command`` payload under ``ctx.timeout_seconds``."""
    argv = str_list(payload["argv"])
    env = str_dict(payload.get("env"))
    cwd = payload.get("cwd")
    grace = number(payload.get("kill_after_seconds"), KILL_GRACE_SECONDS)
    return await run_argv(
        argv,
        env=_environment(ctx, env),
        cwd=None if cwd is None else str(cwd),
        timeout_seconds=ctx.timeout_seconds,
        grace=grace,
        masker=masker,
    )


async def run_argv(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout_seconds: float,
    grace: float = KILL_GRACE_SECONDS,
    masker: Masker | None = None,
) -> Outcome:
    """Run ``argv`` with exactly ``env``; see the module docstring for the lifecycle.

    Re-raises ``asyncio.CancelledError`` after the process group is gone.
    """
    masker = masker or Masker(())
    loop = asyncio.get_running_loop()
    # Capture beyond each limit by the masker's margin, so a secret cut by a limit is masked
    # before it is clipped (see Masker).
    tail_limit = MAX_OUTPUT_BYTES - HEAD_BYTES
    try:
        transport, capture = await loop.subprocess_exec(
            lambda: _Capture(HEAD_BYTES + masker.margin, tail_limit + masker.margin),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own process group, so we can signal all of it
        )
    except OSError as exc:
        # Missing program, missing cwd, not executable: retrying on this worker cannot help.
        where = f" ({exc.filename})" if exc.filename and exc.filename != argv[0] else ""
        return Outcome(
            "failed",
            retryable=False,
            error=f"cannot start {argv[0]!r}: {exc.strerror or type(exc).__name__}{where}",
        )
    pgid = transport.get_pid()
    try:
        try:
            async with asyncio.timeout(timeout_seconds) as deadline:
                await asyncio.shield(capture.exited)
        except TimeoutError:
            if not deadline.expired():
                raise
            how = await _stop(capture, pgid, grace)
            await _drain(capture)
            return Outcome(
                "timeout",
                retryable=True,
                error=f"{timeout_error(timeout_seconds)}; {how}",
                exit_code=transport.get_returncode(),
                output=capture.text(masker),
            )
        _signal_group(pgid, signal.SIGKILL)  # nothing the job started outlives it
        await _drain(capture)
        code = transport.get_returncode()
        if code is None:  # cannot happen once process_exited has fired
            raise RuntimeError("the process exited without a return code")
        return Outcome(
            "succeeded" if code == 0 else "failed",
            retryable=code != 0,
            error=None if code == 0 else _describe_exit(code),
            exit_code=code,
            output=capture.text(masker),
        )
    except asyncio.CancelledError:
        # Cooperative cancel or shutdown: stop the process, then let the cancel propagate.
        # The cleanup is shielded so a second cancel cannot leave the group running; if one
        # arrives we SIGKILL at once and let the reaper finish in the background.
        reaper = asyncio.ensure_future(_stop(capture, pgid, grace))
        try:
            await asyncio.shield(reaper)
        except asyncio.CancelledError:
            _signal_group(pgid, signal.SIGKILL)
            task = asyncio.ensure_future(_await_quietly(reaper))
            _REAPERS.add(task)
            task.add_done_callback(_REAPERS.discard)
        raise
    finally:
        transport.close()


async def _await_quietly(fut: asyncio.Future[str]) -> None:
    with contextlib.suppress(Exception):
        await fut
