"""The supervisor of one ``command`` job: a small process between the worker and the job.

The worker does not start a command itself; it starts this module as a script
(``python -I -S procguard.py FD WORKER_PID``, an empty environment) and tells it over a
socket (file descriptor FD) what to run. This process then:

- learns when the worker dies, twice over: ``PR_SET_PDEATHSIG`` (a signal when its parent
  exits) and end-of-file on the socket (the kernel closes the worker's end whatever killed it);
- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever the job double-forks or
  ``setsid``-s away stays below this process, so it can be found and killed;
- starts the job's argv in a session of its own (its own process group), with exactly the
  environment the worker sent; the job's stdout and stderr are this process's, the worker's
  capture pipe;
- enforces the job's timeout itself (SIGTERM to the group, the grace period, SIGKILL), so the
  timeout holds while the worker is stopped, busy or gone;
- bounds the job by the worker's **lease**: the worker sends the instant at which the job must
  stop unless its lease is renewed first (``lease_clock``: CLOCK_BOOTTIME, one clock for every
  process), again after each renewal; when it passes, everything is killed. A worker that is
  SIGSTOPped or cut off from the database past its lease therefore has no job still running
  when another worker takes the run over (ADR 0020);
- when the job ends, however it ends, or the worker dies, SIGKILLs the group and every
  remaining descendant, reaps them all, reports how the job ended, and exits.

The worker's environment (database URL, ``PGSCHED_SECRET_*``) never reaches this process, so
a job reading ``/proc/$PPID/environ`` finds it empty (ADR 0012). ``undumpable`` is for
every long-running pgsched process (app.cli): it keeps same-user processes out of their
``/proc/<pid>/environ`` and ``mem``. ``proc_stat`` and ``children_of`` serve the worker too,
which sweeps what a job left behind when this process died without a result (ADR 0020).

It starts in ~15 ms: only modules built into the interpreter or tiny (no ``subprocess``,
``json``, ``socket``: with ``re`` and ``enum`` they tripled that), and it leaves with
``os._exit``. Messages are ``marshal``-ed dicts behind a 4-byte length, both ways (the two
ends are the same interpreter, ``sys.executable``, and nothing else holds the socket). Worker
to here: the job first (``argv``, ``env``, ``cwd``, ``timeout``, ``grace``, ``stop_at``,
``user``: uid and gid, or None),
then any of ``{"stop_at": t}`` (lease renewed), ``{"stop": True}`` (cancel: SIGTERM, grace,
SIGKILL) and ``{"kill": True}`` (SIGKILL now). Here to the worker: ``{"pid": n}`` once
started, or ``{"spawn_error": text, "filename": name}``; then ``{"exit_code": c, "ended":
why, "how": text}``, ``ended`` one of ``exited``, ``timeout``, ``stopped``, ``killed``,
``lease``, ``worker_gone``.
"""

from __future__ import annotations

# signal.py would import enum (as slow as all the rest); its C module has what we use.
import _signal as signal  # type: ignore[import-not-found]
import ctypes
import marshal
import os
import select
import sys
import time
import warnings  # noqa: F401 - os.execvpe imports it; after a switch to another user it could not

__all__ = [
    "ProcStat",
    "child_subreaper",
    "children_of",
    "decode",
    "encode",
    "lease_clock",
    "main",
    "parent_death_signal",
    "proc_stat",
    "undumpable",
]

# prctl(2) options (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36

# A timeout or a cancel leaves the job the grace period to clean up after SIGTERM; a lease
# that runs out, a second cancel or a dead worker do not.
_GRACEFUL = ("timeout", "stopped")
_HOW = {
    "killed": "killed (SIGKILL) at once",
    "lease": "killed (SIGKILL): the worker's lease was not renewed in time",
    "worker_gone": "killed (SIGKILL): the worker is gone",
}

_libc: ctypes.CDLL | None = None
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def lease_clock() -> float:
    """The clock of lease deadlines: CLOCK_BOOTTIME where there is one. Unlike
    ``time.monotonic`` it keeps counting while the host is suspended, as the database's clock
    does (a lease can expire during a laptop's sleep); one clock for every process."""
    return time.clock_gettime(_BOOTTIME)


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


def encode(message: dict[str, object]) -> bytes:
    body = marshal.dumps(message)
    return len(body).to_bytes(4, "big") + body


def decode(buffer: bytes) -> tuple[list[dict[str, object]], bytes]:
    """The whole messages at the start of ``buffer``, and what is left of it."""
    messages = []
    while len(buffer) >= 4:
        size = int.from_bytes(buffer[:4], "big")
        if len(buffer) < 4 + size:
            break
        # Only the worker and this process hold the socket (close-on-exec, not inherited).
        messages.append(marshal.loads(buffer[4 : 4 + size]))  # noqa: S302
        buffer = buffer[4 + size :]
    return messages, buffer


class ProcStat:
    """What ``/proc/<pid>/stat`` says of a process that decides whether it is a job's."""

    __slots__ = ("ppid", "session", "started", "state")

    def __init__(self, state: str, ppid: int, session: int, started: int) -> None:
        self.state = state  # R, S, D, T (stopped), t (stopped by a tracer), Z (zombie), ...
        self.ppid = ppid
        self.session = session
        self.started = started  # clock ticks after boot


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s state, parent, session and start time; None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:  # noqa: PTH123 - pathlib imports re
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ... starttime(22nd) ..."; comm may hold spaces or
    # parentheses, so the fields are counted from the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return ProcStat(fields[0], int(fields[1]), int(fields[3]), int(fields[19]))


def children_of(pid: int) -> list[int]:
    """The direct children of process ``pid`` (zombies included), whichever of its threads
    is their parent (an orphan is re-parented to any live thread of a subreaper)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")  # noqa: PTH208 - pathlib imports re
    except OSError:
        return []  # gone
    found: list[int] = []
    listed = False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:  # noqa: PTH123 - as above
                found.extend(int(p) for p in f.read().split())
            listed = True
        except OSError:
            pass  # a thread that ended meanwhile, or no CONFIG_PROC_CHILDREN
    if listed:
        return found
    # Kernels without CONFIG_PROC_CHILDREN: scan every process's parent.
    for entry in os.listdir("/proc"):  # noqa: PTH208 - as above
        if entry.isdigit() and (stat := proc_stat(int(entry))) and stat.ppid == pid:
            found.append(int(entry))
    return found


def _children() -> list[int]:
    """This process's direct children (zombies included)."""
    return children_of(os.getpid())


def _signal_group(pgid: int, sig: int) -> None:
    # contextlib.suppress would import collections and functools (~5 ms of our start).
    try:  # noqa: SIM105
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone; PermissionError: a member changed its user (setuid)


def _spawn(
    argv: list[str], env: dict[str, str], cwd: str | None, user: tuple[int, int] | None
) -> int | OSError:
    """Fork and exec the job in a session of its own, as ``user`` (uid, gid) if given; its
    pid, or why it could not start."""
    report_r, report_w = os.pipe()  # close-on-exec: end-of-file means the exec succeeded
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work until exec, then nothing of ours
        phase = "setup"
        try:
            os.close(report_r)
            os.setsid()
            if user is not None:
                phase = "user"
                uid, gid = user
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            # If this supervisor is SIGKILLed (it cannot clean up then), the job's leader at
            # least does not outlive it. (After the user switch, which clears it.)
            parent_death_signal(signal.SIGKILL)
            if os.getppid() != supervisor:
                os._exit(127)  # the supervisor died before that: the signal would never come
            # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            phase = "cwd"
            if cwd is not None:
                os.chdir(cwd)
            phase = "exec"
            os.execvpe(argv[0], argv, env)  # noqa: S606 - an argv list, never a shell
        except BaseException as exc:  # noqa: BLE001 - reported to the worker, never raised here
            who = None if user is None else user[0]
            names = {"cwd": getattr(exc, "filename", None), "user": f"switching to uid {who}"}
            text = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
            os.write(report_w, marshal.dumps((getattr(exc, "errno", 0), text, names.get(phase))))
        finally:
            os._exit(127)
    os.close(report_w)
    chunks = []
    while chunk := os.read(report_r, 4096):
        chunks.append(chunk)
    os.close(report_r)
    if not chunks:
        return pid
    os.waitpid(pid, 0)
    number, text, filename = marshal.loads(b"".join(chunks))  # noqa: S302 - from our child
    return OSError(number, text, filename)


class _Guard:
    def __init__(self, fd: int, worker_pid: int) -> None:
        self.fd = fd
        self.worker_pid = worker_pid
        self.inbox = b""
        self.leader: int | None = None
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
        data = encode(message)
        try:
            os.set_blocking(self.fd, True)
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # a worker that is gone reads nothing

    def receive(self, block: bool) -> list[dict[str, object]]:
        """Messages waiting on the socket; sets ``worker_gone`` at end-of-file."""
        os.set_blocking(self.fd, block)
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.worker_gone = True
            return []
        messages, self.inbox = decode(self.inbox + data)
        return messages

    # -- the job -----------------------------------------------------------------------------

    def start(self, job: dict[str, object]) -> bool:
        argv = [str(a) for a in job["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in job["env"].items()}  # type: ignore[attr-defined]
        cwd = job.get("cwd")
        self.grace = float(job["grace"])  # type: ignore[arg-type]
        stop_at = job.get("stop_at")
        self.stop_at = None if stop_at is None else float(stop_at)  # type: ignore[arg-type]
        user = job.get("user")
        started = _spawn(
            argv,
            env,
            None if cwd is None else str(cwd),
            None if user is None else (int(user[0]), int(user[1])),  # type: ignore[index]
        )
        if isinstance(started, OSError):
            self.send({"spawn_error": started.strerror, "filename": started.filename})
            return False
        self.leader = started
        self.timeout_at = time.monotonic() + float(job["timeout"])  # type: ignore[arg-type]
        self.send({"pid": started})
        return True

    def stop(self, why: str) -> None:
        """Stop the job: SIGTERM and the grace period for a timeout or a cancel, else SIGKILL."""
        if self.leader is None or self.status is not None or self.killed:
            return
        if why in _GRACEFUL:
            if self.ended is None:  # a second graceful request changes nothing
                self.ended = why
                self.how = "terminated (SIGTERM)"
                _signal_group(self.leader, signal.SIGTERM)
                self.kill_at = time.monotonic() + self.grace
            return
        self.killed = True
        self.ended = self.ended or why
        self.how = _HOW.get(why, f"killed (SIGKILL) after a {self.grace:g} s grace")
        _signal_group(self.leader, signal.SIGKILL)
        self.kill_at = None

    def reaped(self, pid: int, status: int) -> None:
        if pid == self.leader:
            self.status = status

    def reap(self) -> None:
        """Collect every exited child: the leader's status, and orphans re-parented here."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped(pid, status)

    def kill_everything(self) -> None:
        """SIGKILL the group and every descendant still below us; reap them all."""
        if self.leader is not None:
            _signal_group(self.leader, signal.SIGKILL)
        while children := _children():
            for pid in children:
                try:  # noqa: SIM105 - no contextlib, as in _signal_group
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            # Reap one; a killed child's own children are re-parented to us meanwhile, and the
            # next round finds them.
            try:
                self.reaped(*os.waitpid(-1, 0))
            except ChildProcessError:
                break
        self.reap()

    # -- the loop ------------------------------------------------------------------------------

    def next_wake(self) -> float | None:
        """When to look again, on ``time.monotonic``'s scale (the lease deadline converted)."""
        if self.killed:
            return None  # SIGCHLD wakes us
        lease = None
        if self.stop_at is not None:
            lease = time.monotonic() + (self.stop_at - lease_clock())
        instants = [self.timeout_at if self.ended is None else None, self.kill_at, lease]
        due = [t for t in instants if t is not None]
        return min(due) if due else None

    def run(self, wakeup: int) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(wakeup, select.POLLIN)
        while True:
            self.reap()
            if self.status is not None:
                return
            now = time.monotonic()
            if self.worker_gone or os.getppid() != self.worker_pid:
                self.worker_gone = True
                self.stop("worker_gone")
            elif self.stop_at is not None and lease_clock() >= self.stop_at:
                self.stop("lease")
            elif self.kill_at is not None and now >= self.kill_at:
                self.stop("grace_over")
            elif self.ended is None and now >= self.timeout_at:
                self.stop("timeout")
            wake = self.next_wake()
            wait_ms = None if wake is None else max(0, int((wake - now) * 1000) + 1)
            for fd, _ in poller.poll(wait_ms):
                if fd == wakeup:
                    self._signals(wakeup)
                elif not self.worker_gone:
                    for message in self.receive(block=False):
                        self.message(message)
                    if self.worker_gone:
                        poller.unregister(self.fd)

    def _signals(self, wakeup: int) -> None:
        try:
            received = os.read(wakeup, 512)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGUSR1:  # PR_SET_PDEATHSIG: the worker exited
                self.worker_gone = True
            elif signum == signal.SIGTERM:  # someone stops us: stop the job like a cancel
                self.stop("stopped")

    def message(self, message: dict[str, object]) -> None:
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


def _wake(signum: int, frame: object) -> None:
    """A Python-level handler, so the signal number is written to the wakeup fd (SIGCHLD is
    ignored by default; SIGUSR1 and SIGTERM would end us before we could clean up)."""


def main(argv: list[str]) -> int:
    fd, worker_pid = int(argv[1]), int(argv[2])
    # The death signal first, then the check: a worker that died before this line has
    # re-parented us already, and the signal would never come.
    parent_death_signal(signal.SIGUSR1)
    child_subreaper()
    os.set_inheritable(fd, False)  # the job must not hold the worker's line
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for signum in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, _wake)
    if os.getppid() != worker_pid:
        return 0
    guard = _Guard(fd, worker_pid)
    pending: list[dict[str, object]] = []
    while not pending and not guard.worker_gone:
        pending = guard.receive(block=True)
    if not pending or not guard.start(pending[0]):
        return 0
    for message in pending[1:]:
        guard.message(message)  # a stop that came with the job
    try:
        guard.run(read_end)
    finally:
        guard.kill_everything()
    guard.send(guard.result())
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv))  # no interpreter teardown: it took ~10 ms and does nothing here
