"""The supervisor of one ``command`` job: a small process between the worker and the job.

The worker does not start a command itself; it starts this module as a script
(``python -I -S procguard.py FD WORKER_PID``, stdlib only, an empty environment) and tells it
over a socket (file descriptor FD) what to run. This process then:

- learns when the worker dies, twice over: ``PR_SET_PDEATHSIG`` (a signal when its parent
  exits) and end-of-file on the socket (the kernel closes the worker's end whatever killed it);
- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever the job double-forks or
  ``setsid``-s away stays below this process, so it can be found and killed;
- starts the job's argv in a session of its own (its own process group), with exactly the
  environment the worker sent; the job's stdout and stderr are this process's, the worker's
  capture pipe;
- enforces the job's timeout itself (SIGTERM to the group, the grace period, SIGKILL), so the
  timeout holds while the worker is stopped, busy or gone;
- bounds the job by the worker's **lease**: the worker sends the local instant by which its
  lease could expire each time it renews it (``time.monotonic``, system-wide on Linux); when
  that instant minus a margin passes without a newer one, everything is killed. A worker that
  is SIGSTOPped or cut off from the database past its lease therefore has no job still running
  when another worker takes the run over (ADR 0020);
- when the job ends, however it ends, or the worker dies, SIGKILLs the group and every
  remaining descendant, reaps them all, reports how the job ended, and exits.

The worker's environment (database URL, ``PGSCHED_SECRET_*``) never reaches this process, so
a job reading ``/proc/$PPID/environ`` finds it empty (ADR 0012). ``undumpable`` is for the
worker: it keeps same-user processes out of ``/proc/<worker>/environ`` and ``mem``.

Protocol: newline-delimited JSON objects. Worker to here: the job first (``argv``, ``env``,
``cwd``, ``timeout``, ``grace``, ``stop_at``), then any of ``{"stop_at": t}`` (lease renewed),
``{"stop": true}`` (cancel: SIGTERM, grace, SIGKILL) and ``{"kill": true}`` (SIGKILL now).
Here to the worker: ``{"pid": n}`` once started, or ``{"spawn_error": ..., "filename": ...}``;
then ``{"exit_code": c, "ended": why, "how": text}``, ``ended`` one of ``exited``, ``timeout``,
``stopped``, ``killed``, ``lease``, ``worker_gone``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["child_subreaper", "main", "parent_death_signal", "undumpable"]

# prctl(2) options (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36

# What ends the job, and how it is stopped: a timeout or a cancel leaves it the grace period
# to clean up after SIGTERM; a lease that runs out, a hard cancel or a dead worker do not.
_GRACEFUL = ("timeout", "stopped")


_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)``; False where there is no prctl (not Linux) or it failed."""
    global _libc  # noqa: PLW0603 - loaded once, before any fork that calls this
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return int(_libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def parent_death_signal(sig: int) -> bool:
    """Ask the kernel for ``sig`` when the parent (the thread that forked us) exits."""
    return _prctl(_PR_SET_PDEATHSIG, sig)


def child_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of to PID 1."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def undumpable() -> bool:
    """Make this process non-dumpable: ``/proc/<pid>/environ``, ``mem`` and ptrace are closed
    to other processes of the same user (not to root or CAP_SYS_PTRACE), and no core dump."""
    return _prctl(_PR_SET_DUMPABLE, 0)


def _children() -> list[int]:
    """This process's direct children (zombies included)."""
    me = os.getpid()
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{me}/task/{me}/children").read_text().split()]
    # Kernels without CONFIG_PROC_CHILDREN: scan every process's parent.
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..."; comm may hold spaces or parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return found


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Guard:
    def __init__(self, sock: socket.socket, worker_pid: int) -> None:
        self.sock = sock
        self.worker_pid = worker_pid
        self.inbox = b""
        self.leader: subprocess.Popen[bytes] | None = None
        self.status: int | None = None  # the leader's wait status, once reaped
        self.ended: str | None = None  # why we are stopping it
        self.how = ""
        self.kill_at: float | None = None  # SIGKILL when this passes (grace running)
        self.timeout_at = 0.0
        self.stop_at: float | None = None  # the lease deadline, minus the margin
        self.grace = 0.0
        self.worker_gone = False
        self.killed = False  # SIGKILL sent: only the leader's exit is left to wait for

    # -- messages --------------------------------------------------------------------------

    def send(self, message: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # a worker that is gone reads nothing
            self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> list[dict[str, object]]:
        """Messages waiting on the socket; sets ``worker_gone`` at end-of-file."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.worker_gone = True
            return []
        self.inbox += data
        *lines, self.inbox = self.inbox.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def first_message(self) -> dict[str, object] | None:
        self.sock.setblocking(True)
        while b"\n" not in self.inbox:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.inbox += data
        line, _, self.inbox = self.inbox.partition(b"\n")
        self.sock.setblocking(False)
        message: dict[str, object] = json.loads(line)
        return message

    # -- the job -----------------------------------------------------------------------------

    def start(self, job: dict[str, object]) -> bool:
        argv = [str(a) for a in job["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in job["env"].items()}  # type: ignore[attr-defined]
        cwd = job.get("cwd")
        self.grace = float(job["grace"])  # type: ignore[arg-type]
        stop_at = job.get("stop_at")
        self.stop_at = None if stop_at is None else float(stop_at)  # type: ignore[arg-type]
        try:
            self.leader = subprocess.Popen(  # noqa: S603 - an argv list, never a shell
                argv,
                env=env,
                cwd=None if cwd is None else str(cwd),
                stdin=0,
                stdout=1,
                stderr=2,
                start_new_session=True,  # its own process group: one signal reaches all of it
                # If this process is SIGKILLed (it cannot clean up then), the job's leader at
                # least does not outlive it.
                preexec_fn=lambda: parent_death_signal(signal.SIGKILL),  # noqa: PLW1509
            )
        except OSError as exc:
            self.send(
                {
                    "spawn_error": exc.strerror or type(exc).__name__,
                    "filename": None if exc.filename is None else str(exc.filename),
                }
            )
            return False
        self.timeout_at = time.monotonic() + float(job["timeout"])  # type: ignore[arg-type]
        self.send({"pid": self.leader.pid})
        return True

    def stop(self, why: str) -> None:
        """Stop the job: SIGTERM and the grace period for a timeout or a cancel, else SIGKILL."""
        if self.leader is None or self.status is not None or self.killed:
            return
        if why in _GRACEFUL:
            if self.ended is None:  # a second graceful request changes nothing
                self.ended = why
                self.how = "terminated (SIGTERM)"
                _killpg(self.leader.pid, signal.SIGTERM)
                self.kill_at = time.monotonic() + self.grace
            return
        self.killed = True
        self.ended = self.ended or why
        self.how = {
            "killed": "killed (SIGKILL) at once",
            "lease": "killed (SIGKILL): the worker's lease was not renewed in time",
            "worker_gone": "killed (SIGKILL): the worker is gone",
        }.get(why, f"killed (SIGKILL) after a {self.grace:g} s grace")
        _killpg(self.leader.pid, signal.SIGKILL)
        self.kill_at = None

    def reap(self) -> None:
        """Collect every exited child: the leader's status, and orphans re-parented here."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.leader is not None and pid == self.leader.pid:
                self.status = status
                self.leader.returncode = os.waitstatus_to_exitcode(status)

    def kill_everything(self) -> None:
        """SIGKILL the group and every descendant still below us; reap them all."""
        if self.leader is not None:
            _killpg(self.leader.pid, signal.SIGKILL)
        while True:
            children = _children()
            if not children:
                break
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # Reap one; a killed child's own children are re-parented to us meanwhile, and the
            # next round finds them.
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if self.leader is not None and pid == self.leader.pid:
                self.status = status
        self.reap()

    # -- the loop ------------------------------------------------------------------------------

    def next_wake(self) -> float | None:
        if self.killed:
            return None  # SIGCHLD wakes us
        instants = [self.timeout_at if self.ended is None else None, self.kill_at, self.stop_at]
        due = [t for t in instants if t is not None]
        return min(due) if due else None

    def run(self, wakeup: int) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(wakeup, select.POLLIN)
        while self.status is None:
            wake = self.next_wake()
            wait_ms = None if wake is None else max(0, int((wake - time.monotonic()) * 1000) + 1)
            for fd, _ in poller.poll(wait_ms):
                if fd == wakeup:
                    self._signals(wakeup)
                elif not self.worker_gone:
                    for message in self.receive():
                        self._message(message)
                    if self.worker_gone:
                        poller.unregister(self.sock)
            if self.worker_gone or os.getppid() != self.worker_pid:
                self.worker_gone = True
                self.stop("worker_gone")
            self.reap()
            if self.status is not None:
                break
            now = time.monotonic()
            if self.stop_at is not None and now >= self.stop_at:
                self.stop("lease")
            elif self.kill_at is not None and now >= self.kill_at:
                self.stop("grace_over")
            elif self.ended is None and now >= self.timeout_at:
                self.stop("timeout")

    def _signals(self, wakeup: int) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(wakeup, 512):
                if signum == signal.SIGUSR1:  # PR_SET_PDEATHSIG: the worker exited
                    self.worker_gone = True
                elif signum == signal.SIGTERM:  # someone stops us: stop the job like a cancel
                    self.stop("stopped")

    def _message(self, message: dict[str, object]) -> None:
        if "stop_at" in message:
            at = float(message["stop_at"])  # type: ignore[arg-type]
            self.stop_at = at if self.stop_at is None else max(self.stop_at, at)
        if message.get("stop"):
            self.stop("stopped")
        if message.get("kill"):
            self.stop("killed")

    def result(self) -> dict[str, object]:
        code = None if self.status is None else os.waitstatus_to_exitcode(self.status)
        return {"exit_code": code, "ended": self.ended or "exited", "how": self.how}


def _ignore(signum: int, frame: object) -> None:
    """A Python-level handler, so the signal is written to the wakeup fd (the default
    action of SIGCHLD is to ignore it; of SIGUSR1 and SIGTERM, to exit)."""


def main(argv: list[str]) -> int:
    fd, worker_pid = int(argv[1]), int(argv[2])
    # The death signal first, then the check: a worker that died before this line has
    # re-parented us already, and the signal would never come.
    parent_death_signal(signal.SIGUSR1)
    child_subreaper()
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # the job must not hold the worker's line
    guard = _Guard(sock, worker_pid)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    handlers: dict[int, Callable[[int, object], None]] = {
        signal.SIGCHLD: _ignore,
        signal.SIGUSR1: _ignore,
        signal.SIGTERM: _ignore,
    }
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    if os.getppid() != worker_pid:
        return 0
    job = guard.first_message()
    if job is None or not guard.start(job):
        return 0
    try:
        guard.run(read_end)
    finally:
        guard.kill_everything()
    guard.send(guard.result())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
