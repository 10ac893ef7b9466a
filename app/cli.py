"""The `pgsched` command.

Every subcommand reads DATABASE_URL (or --database-url); without either, it uses the local
PostgreSQL that `pgsched run` started in the working directory (app.commands.base). Expected
failures (bad input, no database, drift found) end with a one-line reason on stderr and a
non-zero exit code, never a traceback: 1 = the check found a problem (or the operator answered
no), 2 = the command could not do its work. `pgsched status` is a Nagios-style check with exit
codes of its own (app.commands.status).

The groups `schedules`, `runs` and `status` live in app/commands/, registered by `parser()`.

The environment is read once, by `main`, and parsed by app.settings: each command parses the
settings it uses before it starts anything, so a bad value is one line and exit 2.

The long-running commands (run, worker, ticker, api) started while the database is down wait for
it and log that once; a DSN the server refuses (unknown host, role or database, bad password) is
a configuration error, exit 2 (ADR 0022). One whose background task dies (a bug: the heartbeat,
a ticker loop, ...) logs it, stops and exits 70 (EX_SOFTWARE) so that a supervisor such as
systemd or Kubernetes restarts it (ADR 0024).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import psycopg
from alembic.util.exc import CommandError as AlembicError
from sqlalchemy.exc import SQLAlchemyError

import pgsched
from pgsched.app import commands, settings
from pgsched.app.background import Died
from pgsched.app.commands import base, welcome
from pgsched.app.commands.base import CommandError
from pgsched.app.db import outage, replay
from pgsched.app.db.store import Conn
from pgsched.app.settings import SettingsError
from pgsched.otel.config import TelemetryConfigError

if TYPE_CHECKING:
    import uvicorn
    from litestar import Litestar

    from pgsched.app.api.config import ApiSettings
    from pgsched.app.declare.document import Document
    from pgsched.app.maintenance import Retention
    from pgsched.app.service import Service
    from pgsched.workers.worker import WorkerSettings

QUEUE_NAME_MAX = 100
MAX_TOKEN_DAYS = 3650  # ten years: a token meant to outlive that should not expire at all
# A background task died (app.background, ADR 0024): sysexits' EX_SOFTWARE, "internal error".
EXIT_TASK_DIED = 70


def _keep_secrets_in() -> None:
    """Make this process non-dumpable, first thing in every long-running command (run, api,
    ticker, worker): a process of the same user, a `command` job among them, can then read
    neither its `/proc/<pid>/environ` (DATABASE_URL, PGSCHED_SECRET_*) nor its memory (ADRs
    0012, 0020). Root, or CAP_SYS_PTRACE, still can. It ends at exec, so the programs these
    commands start (a job's supervisor, pg_ctl) are not affected."""
    from pgsched.workers.jobs.procguard import undumpable

    undumpable()


def _environ(args: argparse.Namespace) -> Mapping[str, str]:
    """The environment `main` read for this command (app.settings parses it)."""
    environ: Mapping[str, str] = args.environ
    return environ


def _database_url(args: argparse.Namespace) -> str:
    """DATABASE_URL, or the local cluster `pgsched run` started (app.commands.base)."""
    return base.database_url(args)


def migrate(url: str, target: str = "head") -> None:
    """`alembic upgrade <target>` against `url`, with the scripts the package carries.

    Alembic's INFO lines ("Context impl PostgresqlImpl.", each revision it runs) are a tool's
    banner, not the operator's business: its warnings and errors still show."""
    import logging

    from pgsched.app.db import migrations

    quiet = logging.getLogger("alembic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        migrations.upgrade(url, target)
    finally:
        quiet.setLevel(level)


async def _with_conn(url: str, work: Callable[[Conn], Awaitable[int]]) -> int:
    return await base.with_conn(url, work)


async def _wait_for_database(url: str) -> None:
    """Until the database answers (logged once by app.db.outage); DatabaseRefused if the
    server refuses the DSN."""
    await outage.wait_until_available(url)


async def _refuse_bad_dsn(url: str) -> None:
    """One connection attempt: DatabaseRefused if the server refuses the DSN; an outage is
    not an error here (the caller serves, and its pool reconnects)."""
    try:
        conn = await outage.Connection.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        if outage.refused(exc):
            raise outage.DatabaseRefused(
                f"cannot connect to the database: {_first_line(exc)}"
            ) from None
        return
    await conn.close()


def _listen(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything else starts, so a port in use is a
    one-line error and not a half-started service (a registered worker, a traceback)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def _verify(conn: Conn) -> int:
    differences = await replay.verify(conn)
    for difference in differences:
        print(difference)
    print(f"{len(differences)} difference(s) between the projections and the event log")
    return 1 if differences else 0


async def _rebuild(conn: Conn) -> int:
    counts = await replay.rebuild(conn)
    print(f"rebuilt {counts['schedules']} schedule(s) and {counts['runs']} run(s) from events")
    return 0


def _telemetry(
    role: str, env: Mapping[str, str], **overrides: str
) -> contextlib.AbstractContextManager[object]:
    """Logs, traces and metrics for this command's process (app.telemetry, ADR 0016)."""
    from pgsched.app import telemetry

    return telemetry.running(role, {**env, **overrides})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cmd_migrate(args: argparse.Namespace) -> int:
    migrate(_database_url(args), args.revision)
    print(f"migrated to {args.revision}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    return asyncio.run(_with_conn(_database_url(args), _verify))


def cmd_rebuild(args: argparse.Namespace) -> int:
    url = _database_url(args)
    question = "replace the schedule and run tables with the fold of the event log?"
    if not base.confirm(question, yes=args.yes):
        print("nothing rebuilt", file=sys.stderr)
        return 1
    return asyncio.run(_with_conn(url, _rebuild))


def _local_database(data_dir: Path) -> tuple[str, bool]:
    """Start (or reuse) the local cluster under `data_dir`; make sure database pgsched exists.

    Returns the DSN and whether this call started the server (so it stops it on exit).
    """
    from psycopg import sql

    from pgsched.app import localpg

    try:
        started = not localpg.is_running(data_dir)
        server = localpg.start(data_dir)
    except localpg.LocalPostgresError as exc:
        raise CommandError(str(exc)) from None
    with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'pgsched'").fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("pgsched")))
    return server.dsn("pgsched"), started


def cmd_run(args: argparse.Namespace) -> int:
    _keep_secrets_in()
    env = _environ(args)
    url = settings.optional_database_url(env, args.database_url)
    # Every setting is checked before anything starts, a local PostgreSQL included; the API's
    # database is the local one when no URL is given, known once it runs.
    worker = settings.worker(env)
    api = settings.api(env, url or "postgresql://")
    retention = settings.retention(env)
    settings.telemetry(env, "run")
    settings.logs(env)
    # The application's jobs, as `pgsched worker` imports them: before anything starts.
    _import_jobs(settings.job_modules(env), "PGSCHED_IMPORT")
    # A schedules file to apply at start (`--apply`, else PGSCHED_APPLY_FILE), read and
    # checked now: a bad one is one line before anything starts.
    apply_path = args.apply or settings.apply_file(env)
    declared = _declaration(Path(apply_path), env) if apply_path else None
    started_local = False
    local = url is None
    if url is None:
        url, started_local = _local_database(Path(args.data_dir))
        print(f"local PostgreSQL under {args.data_dir} (data kept between runs)")
    try:
        with _telemetry("run", env):
            return _run_service(
                url,
                env,
                worker,
                dataclasses.replace(api, database_url=url),
                retention,
                declared=declared,
                local=local,
            )
    finally:
        if started_local:
            from pgsched.app import localpg

            localpg.stop(Path(args.data_dir))


def _install_builtins(retention: Retention) -> Callable[[Conn], Awaitable[int]]:
    async def install(conn: Conn) -> int:
        from pgsched.app import maintenance

        await maintenance.ensure_builtin_schedule(conn, retention, now=None)
        return 0

    return install


def _api_service(api: ApiSettings) -> tuple[Service, str]:
    """The REST API as one of `pgsched run`'s services: uvicorn in this process and loop."""
    import uvicorn

    from pgsched.app.api import create_app

    sock = _listen(api.host, api.port)
    app = create_app(api)
    watch = _StopOnDeath(app)
    server = watch.server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=api.host,
            port=api.port,
            log_level="warning",
            forwarded_allow_ips=api.trusted_proxies,
            server_header=False,
        )
    )

    async def run_api(stop: asyncio.Event) -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        await task
        if watch.died is not None:  # its sampler died: `serve` stops the process (ADR 0024)
            raise watch.died

    return run_api, f"http://{api.host}:{api.port}"


class _StopOnDeath:
    """Given to an API app as `on_background_death`: when its background task (the telemetry
    sampler) dies, stop its server and remember why, so the command exits non-zero (ADR
    0024). uvicorn has no other way in: the app does not know the server serving it."""

    def __init__(self, app: Litestar) -> None:
        self.died: Died | None = None
        self.server: uvicorn.Server | None = None
        app.state.on_background_death = self

    def __call__(self, death: Died) -> None:
        self.died = self.died or death
        if self.server is not None:
            self.server.should_exit = True


def _run_service(
    url: str,
    env: Mapping[str, str],
    worker_settings: WorkerSettings,
    api_settings: ApiSettings,
    retention: Retention,
    *,
    local: bool,
    declared: Document | None = None,
) -> int:
    from pgsched.app.clock import SystemClock
    from pgsched.app.service import default_loops, health_loop, serve
    from pgsched.workers.worker import Worker

    api, where = _api_service(api_settings)  # binds the port: in use, nothing has started yet
    asyncio.run(_wait_for_database(url))
    migrate(url)
    asyncio.run(_with_conn(url, _install_builtins(retention)))
    asyncio.run(_define_jobs(url))
    if declared is not None:
        asyncio.run(_with_conn(url, _applier(declared, api_settings.schedule_defaults)))
    # The local cluster's DSN holds no password; a given DATABASE_URL may, so it is not echoed.
    print(f"database ready at {url}" if local else "database ready (DATABASE_URL)")
    if local:
        print(f"  psql '{url}'")

    async def _serve() -> None:
        stop = _stop_on_signals()
        clock = SystemClock()
        loops = [*default_loops(clock), health_loop(clock)]
        # Its jobs resolve secrets in `env`; python jobs of pgsched itself (the built-in
        # maintenance) are given `url` by the worker (workers.jobs.python_call).
        worker = Worker(url, clock=clock, settings=worker_settings, environ=env)
        names = [lp.name for lp in loops] + ["worker", f"API on {where}"]
        print("pgsched is running: " + ", ".join(names) + " (Ctrl-C stops)")
        steps = welcome.next_steps(local_dsn=url if local else None, api=where, environ=env)
        print("\n".join(steps), flush=True)
        await serve(url, clock, stop, loops, services={"worker": worker.run, "api": api})

    try:
        asyncio.run(_serve())
    except Died as died:  # logged with its exception where it died
        print(f"pgsched stopped: {died}", file=sys.stderr)
        return EXIT_TASK_DIED
    print("pgsched stopped")
    return 0


def _stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (call it inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker until SIGTERM/SIGINT (graceful); a second signal stops at once."""
    _keep_secrets_in()
    from pgsched.app.clock import SystemClock
    from pgsched.workers.worker import Worker

    env = _environ(args)
    url = _database_url(args)
    worker_settings = settings.worker(env)
    # Given, an option is used as given: `--slots 0` or `--queues ''` is refused, not read as
    # "the default".
    if args.queues is not None:
        queues = settings.queue_list(args.queues, "--queues")
        worker_settings = dataclasses.replace(worker_settings, queues=queues)
    if args.slots is not None:
        slots = settings.slots(str(args.slots), "--slots")
        worker_settings = dataclasses.replace(worker_settings, slots=slots)
    if args.imports is not None:
        modules = tuple(n for m in args.imports for n in settings.module_list(m, "--import"))
        _import_jobs(modules, "--import")
    else:
        _import_jobs(settings.job_modules(env), "PGSCHED_IMPORT")

    async def _work() -> None:
        stop, hard = asyncio.Event(), asyncio.Event()
        await _define_jobs(url)

        def on_signal() -> None:
            (hard if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        # Its jobs resolve secrets in `env`; python jobs of pgsched itself (the built-in
        # maintenance) are given `url` by the worker (workers.jobs.python_call).
        worker = Worker(url, clock=SystemClock(), settings=worker_settings, environ=env)
        await worker.run(stop, hard)

    with _telemetry("worker", env):
        try:
            asyncio.run(_work())
        except Died as died:  # logged with its exception where it died
            print(f"pgsched worker stopped: {died}", file=sys.stderr)
            return EXIT_TASK_DIED
    return 0


def _import_jobs(modules: Sequence[str], source: str) -> None:
    """Import the application's modules, whose `@pgsched.job` functions register (app.jobs).

    The working directory comes first on sys.path, as for `python -m`: `pgsched worker
    --import myapp.jobs` started where the application lives finds `myapp` (the console
    script's own sys.path[0] is its bin directory). Anything a module raises while imported is
    a one-line error naming it (exit 2): a worker that cannot run its jobs should not start."""
    if not modules:
        return
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - whatever the application's import raises
            raise CommandError(
                f"{source}: cannot import {name}: {type(exc).__name__}: {_first_line(exc)}"
            ) from None


async def _define_jobs(url: str) -> None:
    """Create, or bring up to date, the definition of every job registered in this process
    (services.schedules.define_job: an unchanged definition records nothing), once the
    database answers. The worker's role must be allowed to write schedules (ADR 0027)."""
    from pgsched.app import jobs
    from pgsched.app.domain.errors import InvalidDefinition, OperationError
    from pgsched.app.services import schedules

    if not len(jobs.registry):
        return
    await _wait_for_database(url)

    async def define(conn: Conn) -> int:
        for entry in jobs.registry:
            try:
                await schedules.define_job(
                    conn,
                    entry.name,
                    entry.job_type,
                    entry.payload,
                    defaults=entry.definition(),
                    actor="cli",
                )
            except InvalidDefinition as exc:
                raise CommandError(f"job {entry.name}: {exc.field}: {exc.message}") from None
            except (OperationError, ValueError) as exc:
                raise CommandError(f"job {entry.name}: {_first_line(exc)}") from None
            except psycopg.errors.InsufficientPrivilege:
                raise CommandError(
                    f"job {entry.name}: this database role may not define jobs; define them once"
                    " with a role that may write schedules (the owner), then start the worker"
                    " again (ADR 0027)"
                ) from None
        return 0

    await _with_conn(url, define)


def cmd_ticker(args: argparse.Namespace) -> int:
    """Run only the ticker loops (due occurrences become runs) until SIGTERM/SIGINT.

    The loops `pgsched run` runs, in a process of their own: several may run at once (ADR
    0011). It also installs the built-in maintenance schedule, as `pgsched run` does, so a
    deployment of api + ticker + workers keeps its partitions ahead.
    """
    _keep_secrets_in()
    from pgsched.app.clock import SystemClock
    from pgsched.app.service import default_loops, health_loop, serve

    env = _environ(args)
    url = _database_url(args)
    retention = settings.retention(env)

    async def _tick() -> None:
        stop = _stop_on_signals()
        clock = SystemClock()
        loops = [*default_loops(clock), health_loop(clock)]
        names = ", ".join(lp.name for lp in loops)
        print(f"pgsched ticker is running: {names} (SIGTERM stops)", flush=True)
        await serve(url, clock, stop, loops)

    with _telemetry("ticker", env):
        asyncio.run(_wait_for_database(url))  # started while it is down: wait (ADR 0022)
        asyncio.run(_with_conn(url, _install_builtins(retention)))
        try:
            asyncio.run(_tick())
        except Died as died:  # logged with its exception where it died
            print(f"pgsched ticker stopped: {died}", file=sys.stderr)
            return EXIT_TASK_DIED
    print("pgsched ticker stopped", flush=True)
    return 0


def _declaration(path: Path, env: Mapping[str, str]) -> Document:
    """A schedules file, read and checked (app.declare.document): a bad one is one line."""
    from pgsched.app.declare import document

    try:
        return document.load(path, env)
    except document.DeclarationError as exc:
        raise CommandError(f"{path}: {exc}") from None


def _applier(
    declared: Document,
    defaults: Mapping[str, object],
    *,
    prune: bool = False,
    adopt: bool = False,
    dry_run: bool = False,
) -> Callable[[Conn], Awaitable[int]]:
    async def work(conn: Conn) -> int:
        from pgsched.app.declare import document, plan

        try:
            changes = await plan.apply(
                conn, declared, defaults=defaults, prune=prune, adopt=adopt, dry_run=dry_run
            )
        except document.DeclarationError as exc:
            raise CommandError(f"nothing applied: {exc}") from None
        for line in plan.describe(changes, declared, dry_run=dry_run):
            print(line)
        if not dry_run:  # the queues its enabled schedules make runs in
            fallback = str(defaults.get("queue") or "default")
            await base.warn_unserved(
                conn,
                (
                    str(s.get("queue") or fallback)
                    for s in declared.schedules
                    if s.get("enabled", True)
                ),
            )
        return 0

    return work


def cmd_apply(args: argparse.Namespace) -> int:
    """Make the schedules a file declares so, in one transaction (ADR 0031)."""
    env = _environ(args)
    defaults = settings.schedule_defaults(env)
    url = _database_url(args)
    declared = _declaration(Path(args.file), env)
    work = _applier(declared, defaults, prune=args.prune, adopt=args.adopt, dry_run=args.dry_run)
    return asyncio.run(_with_conn(url, work))


def cmd_export(args: argparse.Namespace) -> int:
    """Write the live schedules as a schedules file that `apply` takes unchanged."""
    from pgsched.app.declare import document, plan

    env = _environ(args)
    defaults = settings.schedule_defaults(env)

    async def work(conn: Conn) -> tuple[str, int]:
        if args.manager is None:
            # A file is one manager's: applying an export back changes nothing only then. A
            # file of every schedule would name several managers (refused) or adopt the ones
            # made outside apply (ADR 0031).
            managers = sorted({r["managed_by"] for r in await plan.declared(conn, None)} - {None})
            raise CommandError(
                "export needs --manager NAME, so that applying the file changes nothing "
                f"(managers here: {', '.join(managers) or 'none'})"
            )
        rows = await plan.declared(conn, args.manager)
        try:
            text = document.render(rows, args.format, manager=args.manager, defaults=defaults)
        except document.DeclarationError as exc:
            raise CommandError(str(exc)) from None
        return text, len(rows)

    text, count = asyncio.run(base.with_conn(_database_url(args), work))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"exported {count} schedule(s) to {args.output}", file=sys.stderr)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """Set or clear a queue's global concurrency limit."""
    from pgsched.app.services import runs

    # As the API's queue names (app.api.schemas.QueueName); checked here so that an empty
    # name is refused naming it, not by the table's check constraint.
    if not 1 <= len(args.name) <= QUEUE_NAME_MAX:
        raise CommandError(
            f"the queue name must be 1..{QUEUE_NAME_MAX} characters, got {args.name!r}"
        )
    raw = args.max_running
    if raw == "none":
        limit = None
    else:
        try:
            limit = base.whole(raw, "--max-running", maximum=base.MAX_COUNT)
        except CommandError:
            raise CommandError(
                f"--max-running must be a whole number 1..{base.MAX_COUNT} or 'none', got {raw!r}"
            ) from None

    async def work(conn: Conn) -> int:
        row = await runs.set_queue_limit(conn, args.name, limit, actor=base.actor(), now=None)
        shown = row["max_running"] if row["max_running"] is not None else "unlimited"
        print(f"queue {row['name']}: at most {shown} running")
        await base.warn_unserved(conn, [row["name"]])
        return 0

    return asyncio.run(_with_conn(_database_url(args), work))


def cmd_maintain(args: argparse.Namespace) -> int:
    """One maintenance pass: partitions ahead, retention (the built-in schedule's work)."""
    from pgsched import otel
    from pgsched.app import maintenance

    url = _database_url(args)
    retention = settings.retention(_environ(args))

    async def work(conn: Conn) -> int:
        try:
            with otel.current().tracer.start_as_current_span("maintain"):
                done = await maintenance.maintain(conn, retention, now=None)
        except maintenance.ArchiveError as exc:
            raise CommandError(str(exc)) from None
        for row in done:
            print(f"{row['action']:8} {row['table_name']:14} {row['partition_name']}")
        print(
            f"maintenance done: {retention.months_ahead} months ahead, runs kept "
            f"{retention.run_days} days, events {retention.event_days} days"
        )
        return 0

    with _telemetry("maintenance", _environ(args)):
        return asyncio.run(_with_conn(url, work))


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the REST API with uvicorn until SIGTERM/SIGINT."""
    _keep_secrets_in()
    import uvicorn

    from pgsched.app.api import create_app

    env = _environ(args)
    api = settings.api(env, _database_url(args))
    host = settings.text(args.host, "--host") if args.host is not None else api.host
    port = api.port if args.port is None else settings.port(str(args.port), "--port")
    api = dataclasses.replace(api, host=host, port=port)
    # Bound before anything is printed or started: a port in use, or a host that is no
    # address here, is one line and exit 2, not "pgsched api on …" and uvicorn's traceback.
    sock = _listen(host, port)
    with _telemetry("api", env, PGSCHED_LOG_LEVEL=args.log_level):
        asyncio.run(_refuse_bad_dsn(api.database_url))
        print(f"pgsched api on http://{host}:{port} (OpenAPI at /schema/openapi.json)", flush=True)
        app = create_app(api)
        watch = _StopOnDeath(app)
        server = watch.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level=args.log_level,
                # X-Forwarded-For is believed only from these addresses (uvicorn's default).
                forwarded_allow_ips=api.trusted_proxies,
                server_header=False,
                # Our handler (JSON or text, app.telemetry) formats uvicorn's lines too.
                log_config=None,
            )
        )
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run does
            server.run(sockets=[sock])
    if watch.died is not None:  # logged with its exception where it died
        print(f"pgsched api stopped: {watch.died}", file=sys.stderr)
        return EXIT_TASK_DIED
    return 0 if server.started else 3


def cmd_token_create(args: argparse.Namespace) -> int:
    """Create a token and print it once; only its SHA-256 is stored."""
    from datetime import UTC, datetime, timedelta

    from pgsched.app.services import tokens

    if args.role not in tokens.ROLES:
        raise CommandError(f"--role must be one of {', '.join(tokens.ROLES)}")
    if not args.name.strip():
        raise CommandError("--name must not be empty")
    expires = None
    if args.expires_in_days is not None:
        # NaN compares false with everything, so the range is checked as one positive test.
        if not 0 < args.expires_in_days <= MAX_TOKEN_DAYS:
            raise CommandError(
                f"--expires-in-days must be a number of days in (0, {MAX_TOKEN_DAYS}], "
                f"got {args.expires_in_days}"
            )
        expires = datetime.now(UTC) + timedelta(days=args.expires_in_days)

    async def work(conn: Conn) -> int:
        try:
            row, token = await tokens.create_token(
                conn,
                name=args.name,
                role=args.role,
                actor=base.actor(),
                now=None,
                expires_at=expires,
                meta=base.audit_meta(),
            )
        except tokens.TokenNameTaken as exc:
            raise CommandError(str(exc)) from None
        print(token)
        until = row["expires_at"].isoformat() if row["expires_at"] else "never"
        print(
            f"token {row['name']!r} ({row['role']}, {row['prefix']}…, expires {until}): "
            "shown once, keep it now",
            file=sys.stderr,
        )
        return 0

    return asyncio.run(_with_conn(_database_url(args), work))


def cmd_token_list(args: argparse.Namespace) -> int:
    from pgsched.app.services import tokens

    async def work(conn: Conn) -> int:
        rows = await tokens.list_tokens(conn, now=None)
        print(f"{'NAME':<24} {'ROLE':<9} {'PREFIX':<13} {'STATUS':<8} {'CREATED':<26} LAST USED")
        for r in rows:
            status = "active" if r["active"] else ("revoked" if r["revoked_at"] else "expired")
            used = r["last_used_at"].isoformat(timespec="seconds") if r["last_used_at"] else "-"
            created = r["created_at"].isoformat(timespec="seconds")
            print(
                f"{r['name']:<24} {r['role']:<9} {r['prefix']:<13} {status:<8} {created:<26} {used}"
            )
        return 0

    return asyncio.run(_with_conn(_database_url(args), work))


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from pgsched.app.services import tokens

    async def work(conn: Conn) -> int:
        row = await tokens.revoke_token(
            conn, args.name, actor=base.actor(), now=None, meta=base.audit_meta()
        )
        if row is None:
            raise CommandError(f"no active token named {args.name!r}")
        print(f"revoked token {row['name']!r} ({row['prefix']}…)")
        return 0

    return asyncio.run(_with_conn(_database_url(args), work))


class _Parser(argparse.ArgumentParser):
    """Bad arguments (`--slots abc`, a missing one) are one line and exit 2, like every other
    refused input; argparse's own error() prints the usage first. `--help` still has it.
    Subcommands' parsers are made of this class too (add_subparsers uses the parent's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _declare_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """`apply` and `export`: schedules as code (ADR 0031)."""
    ay = sub.add_parser("apply", help="make the schedules a YAML or TOML file declares so")
    ay.add_argument("file", help="the schedules file (.yaml, .yml or .toml)")
    ay.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ay.add_argument(
        "--prune",
        action="store_true",
        help="delete the schedules of this file's manager that it no longer declares "
        "(the file must name its `manager:`)",
    )
    ay.add_argument(
        "--adopt",
        action="store_true",
        help="take over live schedules of the file's names that were made outside apply "
        "(API, CLI or console; without it they are refused)",
    )
    ay.set_defaults(func=cmd_apply)

    ex = sub.add_parser("export", help="write the live schedules as a schedules file")
    ex.add_argument("--format", choices=["yaml", "toml"], default="yaml")
    ex.add_argument(
        "--manager",
        help="the manager whose schedules to write (required: applying the file back then "
        "changes nothing)",
    )
    ex.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    ex.set_defaults(func=cmd_export)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="pgsched",
        description="pgsched: a job scheduler whose store, queue and history are PostgreSQL. "
        "`pgsched COMMAND --help` describes each command.",
    )
    p.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: $DATABASE_URL, else the local PostgreSQL that "
        f"`pgsched run` started under {base.LOCAL_DATA_DIR})",
    )
    p.add_argument("--version", action="version", version=f"pgsched {pgsched.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("migrate", help="apply the schema migrations (alembic upgrade)")
    m.add_argument("revision", nargs="?", default="head")
    m.set_defaults(func=cmd_migrate)

    v = sub.add_parser("verify", help="fold the event log and compare it with the tables")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("rebuild", help="rebuild the schedule and run tables from the event log")
    r.add_argument("--yes", action="store_true", help="do not ask before replacing the tables")
    r.set_defaults(func=cmd_rebuild)

    run = sub.add_parser(
        "run",
        help="migrate and run the service (starts a local PostgreSQL "
        "when no database URL is given)",
    )
    run.add_argument(
        "--data-dir",
        default=str(base.LOCAL_DATA_DIR),
        help="local PostgreSQL data directory (default: %(default)s)",
    )
    run.add_argument(
        "--apply",
        metavar="FILE",
        help="apply this schedules file at start (default: $PGSCHED_APPLY_FILE)",
    )
    run.set_defaults(func=cmd_run)

    _declare_commands(sub)

    wk = sub.add_parser("worker", help="run a worker (SIGTERM drains, a second signal stops)")
    wk.add_argument("--queues", help="comma-separated queues (default: $PGSCHED_QUEUES or default)")
    wk.add_argument("--slots", type=int, help="jobs at once (default: $PGSCHED_WORKER_SLOTS or 4)")
    wk.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE at start and define the @pgsched.job jobs it registers "
        "(repeatable; default: $PGSCHED_IMPORT, comma-separated)",
    )
    wk.set_defaults(func=cmd_worker)

    ti = sub.add_parser("ticker", help="run only the ticker (due occurrences become runs)")
    ti.set_defaults(func=cmd_ticker)

    qu = sub.add_parser("queue", help="set a queue's global concurrency limit")
    qu.add_argument("name")
    qu.add_argument("--max-running", required=True, help="a number >= 1, or 'none'")
    qu.set_defaults(func=cmd_queue)

    mt = sub.add_parser("maintain", help="one maintenance pass: partitions ahead, retention")
    mt.set_defaults(func=cmd_maintain)

    ap = sub.add_parser("api", help="serve the REST API (uvicorn)")
    ap.add_argument("--host", help="address to bind (default: $PGSCHED_HTTP_HOST or 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (default: $PGSCHED_HTTP_PORT or 8000)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.set_defaults(func=cmd_api)

    tk = sub.add_parser("token", help="create, list or revoke API tokens")
    tks = tk.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tc = tks.add_parser("create", help="create a token and print it (once)")
    tc.add_argument("--name", required=True, help="who uses it; the actor of its writes")
    tc.add_argument("--role", required=True, help="viewer, operator or admin")
    tc.add_argument("--expires-in-days", type=float, help="default: never expires")
    tc.set_defaults(func=cmd_token_create)
    tl = tks.add_parser("list", help="list tokens (never their values)")
    tl.set_defaults(func=cmd_token_list)
    tr = tks.add_parser("revoke", help="revoke a token by name")
    tr.add_argument("name")
    tr.set_defaults(func=cmd_token_revoke)

    commands.register(sub)
    _describe(p)
    return p


def _describe(p: argparse.ArgumentParser) -> None:
    """Give every subcommand's `--help` a description: its one-line help, unless it has one."""
    for action in p._actions:  # argparse keeps the subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                if sub.description is None and choice.help:
                    sub.description = choice.help[0].upper() + choice.help[1:] + "."
                _describe(sub)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`pgsched` with `argv` in `environ` (default: this process's, read once here)."""
    args = parser().parse_args(argv)
    args.environ = settings.environment() if environ is None else environ
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so a reader gone early is caught below, not at exit
    except (CommandError, SettingsError, TelemetryConfigError, outage.DatabaseRefused) as exc:
        print(f"pgsched: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, SQLAlchemyError, AlembicError) as exc:
        print(f"pgsched: database error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`pgsched schedules show x | head`): what it wanted it has. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again, and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
