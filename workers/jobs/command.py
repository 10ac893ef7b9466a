"""``command`` jobs: run an argv list (never a shell) with a clean environment.

This module owns process execution as the worker sees it: starting the job through its
supervisor (``workers.jobs.procguard``, a small process of its own with an empty environment),
telling the supervisor of every lease renewal, capturing stdout and stderr interleaved into a
bounded buffer, and turning how the job ended into an outcome. The supervisor owns the job's
processes: the session, the timeout and cancellation path (SIGTERM to the group, a grace
period, then SIGKILL), the lease bound, and killing every descendant (the group, and anything
that left it) when the job ends or the worker dies; see its docstring and ADR 0020. The
worker is the supervisor's own backstop: a supervisor the job killed or stopped is killed,
and what the job left running (re-parented to the worker, a child subreaper) is killed and
reaped before the attempt's outcome counts (``sweep_orphans``).

We use ``loop.subprocess_exec`` with our own protocol rather than
``asyncio.create_subprocess_exec``: the protocol appends each chunk straight into the bounded
buffer (no StreamReader to drain or overflow), and we own the transport, so we can close it
even when a process that got out of reach still holds the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TypeVar

from pgsched.workers.jobs import procguard
from pgsched.workers.jobs.base import (
    MAX_OUTPUT_BYTES,
    JobContext,
    LeaseDeadline,
    Outcome,
    number,
    str_dict,
    str_list,
    timeout_error,
)
from pgsched.workers.jobs.secretrefs import Masker

__all__ = [
    "BACKSTOP_SECONDS",
    "COMMAND_USER_ENV",
    "DEFAULT_PATH",
    "DRAIN_SECONDS",
    "HEAD_BYTES",
    "KILL_GRACE_SECONDS",
    "PASSED_ENV",
    "SUPERVISOR_CHECK_SECONDS",
    "run",
    "run_argv",
    "sweep_orphans",
]

# SIGTERM first, SIGKILL this long after (payload "kill_after_seconds" overrides it).
KILL_GRACE_SECONDS = 5.0
# After the supervisor exits, how long we wait for the pipe to close. It has killed every
# process below it by then; only one that got out of reach (a setuid program that changed its
# user) could hold it open that long, and we stop reading then.
DRAIN_SECONDS = 1.0
# How long past its own deadlines a supervisor may take to report and exit before the worker
# kills it (its job's leader dies with it, PR_SET_PDEATHSIG). It never should.
BACKSTOP_SECONDS = 5.0
# How often the worker looks whether a supervisor was stopped (SIGSTOP; only a process of the
# job's user, the job itself among them, can do that): a stopped supervisor enforces nothing,
# so the worker kills it and the job's processes (ADR 0020).
SUPERVISOR_CHECK_SECONDS = 0.25
# The worker setting that runs every command job as another user (uid, its primary group, no
# supplementary groups; HOME is that user's unless the payload sets it). The worker must be
# root then; a job running as another user can neither read the worker's memory or
# environment nor signal it (ADR 0020).
COMMAND_USER_ENV = "PGSCHED_COMMAND_USER"
# Worker variables a command inherits: enough to find programs, pick a locale and a timezone,
# and have a home. Nothing else, so DATABASE_URL, PGSCHED_SECRET_* and PGSCHED_SQL_DSN_* never
# reach a command unless its payload says so (ADR 0012).
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Output keeps the first HEAD_BYTES and the rest from the end: the start says what the command
# was doing, the end usually says why it failed.
HEAD_BYTES = 2_048
_MARKER_ROOM = 48  # "\n[... N bytes omitted ...]\n" for any N below 10**20

log = logging.getLogger("pgsched.worker")
T = TypeVar("T")


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
    env = _environment(ctx, str_dict(payload.get("env")))
    cwd = payload.get("cwd")
    grace = number(payload.get("kill_after_seconds"), KILL_GRACE_SECONDS)
    user = None
    if name := ctx.environ.get(COMMAND_USER_ENV):
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            error = f"cannot start {argv[0]!r}: {COMMAND_USER_ENV} names no user ({name!r})"
            return Outcome("failed", retryable=False, error=error)
        user = (account.pw_uid, account.pw_gid)
        if "HOME" not in str_dict(payload.get("env")):
            env["HOME"] = account.pw_dir
    return await run_argv(
        argv,
        env=env,
        cwd=None if cwd is None else str(cwd),
        timeout_seconds=ctx.timeout_seconds,
        grace=grace,
        masker=masker,
        lease=ctx.lease,
        user=user,
    )


async def run_argv(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout_seconds: float,
    grace: float = KILL_GRACE_SECONDS,
    masker: Masker | None = None,
    lease: LeaseDeadline | None = None,
    user: tuple[int, int] | None = None,
) -> Outcome:
    """Run ``argv`` with exactly ``env`` under a supervisor; see the module docstring.

    Re-raises ``asyncio.CancelledError`` after the job's processes are gone and reaped.
    """
    masker = masker or Masker(())
    _guard_this_process()
    loop = asyncio.get_running_loop()
    since = _ticks_now()
    ours, theirs = socket.socketpair()
    try:
        # Capture beyond each limit by the masker's margin, so a secret cut by a limit is
        # masked before it is clipped (see Masker).
        tail_limit = MAX_OUTPUT_BYTES - HEAD_BYTES
        transport, capture = await loop.subprocess_exec(
            lambda: _Capture(HEAD_BYTES + masker.margin, tail_limit + masker.margin),
            *_supervisor_argv(theirs.fileno()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={},  # nothing of the worker's: $PPID of the job is the supervisor (ADR 0012)
            pass_fds=(theirs.fileno(),),
            # A process group of its own, so a terminal's ^C or ^Z for the worker does not
            # reach it; the worker's session, so no orphan of a job (always in a session of
            # its own, below the supervisor's setsid) is ever taken for a supervisor.
            process_group=0,
        )
    finally:
        theirs.close()
    line = _Line(ours)
    supervisor = _Supervisor(transport, since)
    try:
        return await _supervise(
            line,
            supervisor,
            capture,
            job={
                "argv": list(argv),
                "env": dict(env),
                "cwd": cwd,
                "timeout": timeout_seconds,
                "grace": grace,
                "stop_at": None if lease is None else _local(lease, lease.stop_at),
                "user": user,
            },
            lease=lease,
            masker=masker,
            timeout_seconds=timeout_seconds,
        )
    finally:
        line.close()
        transport.close()


async def _supervise(
    line: _Line,
    supervisor: _Supervisor,
    capture: _Capture,
    *,
    job: dict[str, object],
    lease: LeaseDeadline | None,
    masker: Masker,
    timeout_seconds: float,
) -> Outcome:
    argv0 = str_list(job["argv"])[0]
    grace = number(job["grace"], KILL_GRACE_SECONDS)
    transport = supervisor.transport
    line.send(job)
    unsubscribe = (
        None
        if lease is None
        else lease.subscribe(lambda stop_at: line.send({"stop_at": _local(lease, stop_at)}))
    )
    watch = asyncio.create_task(supervisor.watch(), name="supervisor watch")
    try:
        started = await line.receive()
        if started is not None and "spawn_error" in started:
            await _through_cancels(_finished(transport, capture), line)
            # Missing program, missing cwd, not executable: retrying here cannot help.
            filename = started.get("filename")
            where = f" ({filename})" if filename and filename != argv0 else ""
            return Outcome(
                "failed",
                retryable=False,
                error=f"cannot start {argv0!r}: {started['spawn_error']}{where}",
            )
        if started is not None and isinstance(pid := started.get("pid"), int):
            supervisor.leader = pid
        # The supervisor enforces the timeout; this bound only catches a supervisor that
        # hangs, and then kills it and the job's group (the job's leader would die with the
        # supervisor, PR_SET_PDEATHSIG, but not the rest of its group).
        try:
            async with asyncio.timeout(timeout_seconds + grace + BACKSTOP_SECONDS):
                result = await line.receive()
        except TimeoutError:
            supervisor.kill()
            result = None
    except asyncio.CancelledError:
        # Cooperative cancel or shutdown: the supervisor stops the job (SIGTERM, grace,
        # SIGKILL); a second cancel makes it SIGKILL at once. We return only once it has
        # exited and been reaped, and no orphan of the job is left, then let the cancel
        # propagate.
        line.send({"stop": True})
        await _through_cancels(_report_and_exit(line, supervisor, capture, grace), line)
        raise
    finally:
        watch.cancel()
        if unsubscribe is not None:
            unsubscribe()
    await _through_cancels(_finished(transport, capture), line)
    if result is None:
        # The supervisor died without saying how the job ended: killed by the job itself, by
        # the OOM killer, or by us (stopped, hung). What the job had running is re-parented
        # to this process (a child subreaper): it must be dead before the attempt can count
        # as over, or attempt 2 could run beside it (ADR 0020).
        survivors = await _through_cancels_value(sweep_orphans(supervisor.since), line)
        if survivors:
            return Outcome(
                "failed",
                retryable=False,
                error=f"{supervisor.why_no_result()}; processes of the job could not be "
                f"killed (pids {', '.join(map(str, survivors))}): not retried while they "
                "may still run",
                output=capture.text(masker),
            )
    return _outcome(result, supervisor, capture, masker, timeout_seconds)


class _Supervisor:
    """The worker's view of one supervisor: its process, the job's leader once reported, and
    the instant before it was started (whatever of the job's is found later started after)."""

    def __init__(self, transport: asyncio.SubprocessTransport, since: int) -> None:
        self.transport = transport
        self.since = since
        self.leader: int | None = None
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL the supervisor and the job's group (the rest, re-parented to this process
        once the supervisor is gone, is for ``sweep_orphans``)."""
        if self.leader is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.leader, signal.SIGKILL)
        self.transport.kill()

    async def watch(self) -> None:
        """Kill the supervisor if it is stopped (SIGSTOP, or a tracer): stopped, it enforces
        neither the timeout nor the lease, and would not notice the worker's death."""
        pid = self.transport.get_pid()
        while True:
            await asyncio.sleep(SUPERVISOR_CHECK_SECONDS)
            stat = procguard.proc_stat(pid)
            if stat is None or stat.state in ("Z", "X"):
                return
            if stat.state in ("T", "t"):
                self.stopped = True
                self.kill()
                return

    def why_no_result(self) -> str:
        if self.stopped:
            return "the job's supervisor was stopped (SIGSTOP); it and the job were killed"
        died = self.transport.get_returncode()
        return f"the job's supervisor ended without a result ({_describe_exit(died or 0)})"


def _ticks_now() -> int:
    """Now, in the unit and on the clock of ``/proc/<pid>/stat``'s start time (clock ticks
    of CLOCK_BOOTTIME), rounded down."""
    return int(procguard.lease_clock() * os.sysconf("SC_CLK_TCK"))


async def sweep_orphans(since: int, within: float = BACKSTOP_SECONDS) -> list[int]:
    """SIGKILL and reap every orphan of a command job that was re-parented to this process;
    the pids still alive after ``within`` seconds (none, unless one is out of our reach).

    An orphan is a child of this process in another session than ours, started at or after
    ``since`` (clock ticks, ``_ticks_now``). Every process of a job is in a session of its
    own (the supervisor's ``setsid``) and no process can join an existing session, while the
    supervisors themselves are in ours. Only a ``python`` job's child started in a session of
    its own meanwhile would be taken for one (ADR 0020). Each orphan is waited for by pid,
    never ``waitpid(-1)``, which would take the supervisors' exits from asyncio's watcher.
    """
    me, session = os.getpid(), os.getsid(0)
    give_up = time.monotonic() + within
    while True:
        orphans: list[int] = []
        for pid in procguard.children_of(me):
            stat = procguard.proc_stat(pid)
            if stat is None or stat.session == session or stat.started < since:
                continue
            orphans.append(pid)
            if stat.state not in ("Z", "X"):
                # Its own children are re-parented to us as it dies; the next round has them.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if not orphans:
            return []
        for pid in orphans:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never blocks
        if time.monotonic() >= give_up:
            return [p for p in orphans if procguard.proc_stat(p) is not None]
        await asyncio.sleep(0.01)


async def _through_cancels(work: Awaitable[None], line: _Line) -> None:
    """Finish ``work`` whatever cancels arrive meanwhile (each asks the supervisor to SIGKILL
    at once, so it is short), then re-raise the cancel if there was one.

    Returning before the supervisor is reaped would leave a process for asyncio to warn about
    later, in whatever code runs then.
    """
    await _through_cancels_value(work, line)


async def _through_cancels_value(work: Awaitable[T], line: _Line) -> T:
    """``_through_cancels``, returning what ``work`` returned."""
    done = asyncio.ensure_future(work)
    cancelled = False
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            if done.done():
                break
            cancelled = True
            line.send({"kill": True})
    value = done.result()
    if cancelled:
        raise asyncio.CancelledError
    return value


async def _report_and_exit(
    line: _Line, supervisor: _Supervisor, capture: _Capture, grace: float
) -> None:
    message: dict[str, object] | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace + BACKSTOP_SECONDS):
            # The cancel may have come before the supervisor said it started the job: skip
            # that message, wait for how the job ended (or the end of the line).
            while (message := await line.receive()) is not None and "ended" not in message:
                pass
    await _finished(supervisor.transport, capture)
    # No result: whatever it left behind is ours to kill (see _supervise).
    no_result = message is None or "ended" not in message
    if no_result and (survivors := await sweep_orphans(supervisor.since)):
        log.error(
            "a cancelled command's supervisor ended without a result and processes of "
            "its job could not be killed (pids %s)",
            ", ".join(map(str, survivors)),
        )


async def _finished(transport: asyncio.SubprocessTransport, capture: _Capture) -> None:
    """The supervisor has exited and been reaped, and the output pipe is read to its end."""
    try:
        async with asyncio.timeout(BACKSTOP_SECONDS):
            await asyncio.shield(capture.exited)
    except TimeoutError:
        transport.kill()  # a supervisor that hangs after reporting: its job is dead already
        await asyncio.shield(capture.exited)
    # Every process the job started is dead (the supervisor killed them all), so the pipe is
    # closing; the bound is for a process that got out of reach (a setuid program).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await asyncio.shield(capture.closed)


def _outcome(
    result: dict[str, object] | None,
    supervisor: _Supervisor,
    capture: _Capture,
    masker: Masker,
    timeout_seconds: float,
) -> Outcome:
    output = capture.text(masker)
    if result is None:
        # Every process of the job is dead (swept): another attempt cannot overlap this one.
        return Outcome("failed", retryable=True, error=supervisor.why_no_result(), output=output)
    code = result["exit_code"]
    exit_code = code if isinstance(code, int) else None
    ended, how = result["ended"], str(result["how"])
    if ended == "timeout":
        return Outcome(
            "timeout",
            retryable=True,
            error=f"{timeout_error(timeout_seconds)}; {how}",
            exit_code=exit_code,
            output=output,
        )
    if ended != "exited" or exit_code is None:
        # The lease ran out before the worker could renew it (the worker stops in-process
        # jobs at the same instant), or the supervisor was stopped from outside.
        return Outcome("failed", retryable=True, error=how, exit_code=exit_code, output=output)
    return Outcome(
        "succeeded" if exit_code == 0 else "failed",
        retryable=exit_code != 0,
        error=None if exit_code == 0 else _describe_exit(exit_code),
        exit_code=exit_code,
        output=output,
    )


class _Line:
    """The worker's end of the socket to the supervisor (messages: ``procguard.encode``)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.inbox = b""
        self.pending: list[dict[str, object]] = []
        self.closed = False

    def send(self, message: dict[str, object]) -> None:
        """Send without waiting: a few hundred bytes into an idle socket's buffer. A
        supervisor that is gone or not reading misses it; it reports through its exit."""
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.send(procguard.encode(message))

    async def receive(self) -> dict[str, object] | None:
        """The next message; ``None`` at end-of-file (the supervisor exited)."""
        loop = asyncio.get_running_loop()
        while not self.pending:
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                return None
            self.pending, self.inbox = procguard.decode(self.inbox + data)
        return self.pending.pop(0)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _supervisor_argv(fd: int) -> list[str]:
    # -I: no PYTHON* variables, no user site, no script directory on sys.path; -S: no site
    # packages (it needs only modules built into the interpreter; see its docstring).
    return [sys.executable, "-I", "-S", procguard.__file__, str(fd), str(os.getpid())]


def _local(lease: LeaseDeadline, at: float) -> float:
    """``at`` on the worker clock's scale, on the supervisor's (``procguard.lease_clock``)."""
    return procguard.lease_clock() + (at - lease.now())


_guarded = False


def _guard_this_process() -> None:
    """Prepare the process that runs command jobs, once:

    - non-dumpable (ADR 0012): a job running as the same user can then not read
      ``/proc/<worker>/environ`` (the database password, ``PGSCHED_SECRET_*``) or ``mem``.
      Root, or CAP_SYS_PTRACE, still can. (Every long-running ``pgsched`` command does this at
      its start; this is for a worker embedded elsewhere.)
    - a child subreaper: what a job still runs when its supervisor dies (the job killed it,
      or the OOM killer did) is re-parented here instead of to PID 1, where ``sweep_orphans``
      kills it before the attempt's result counts (ADR 0020).
    """
    global _guarded  # noqa: PLW0603 - once per process
    if not _guarded:
        _guarded = procguard.undumpable() & procguard.child_subreaper()
