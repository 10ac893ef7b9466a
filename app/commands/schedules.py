"""`pgsched schedules …`: what `/v1/schedules` does, from a terminal.

Each action calls the service the API calls (app.services.schedules), so the checks, the events
and their audit meta are the same; the actor is `cli:<os user>` (app.commands.base). A schedule
is named by its id or its name. `create` takes the API's JSON body (`--file`), options, or both
(options win), checked as the API checks a body (app.api.decoding): a mistake is one line
naming the field, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from pgsched.app.commands import base, output
from pgsched.app.commands.base import CommandError
from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.domain.schedule import LABEL_KEY, MAX_LABEL_VALUE, MAX_PREVIEW
from pgsched.app.services import schedules

PAGE = 500
JOB_TYPES = ("http", "command", "sql", "python", "noop")
_EVENTS_SHOWN = 10
_RUNS_SHOWN = 10


def _timing(row: Mapping[str, Any]) -> str:
    if row["cron"]:
        return str(row["cron"])
    if row["interval_seconds"]:
        return f"every {row['interval_seconds']} s"
    if row["run_at"]:
        return f"once at {output.instant(row['run_at'])}"
    return "- (a job definition: runs are enqueued)"


def _zone(row: Mapping[str, Any]) -> ZoneInfo:
    return ZoneInfo(row["timezone"])


def _state(row: Mapping[str, Any]) -> str:
    return "enabled" if row["enabled"] else "paused"


HEALTH_STATES = ("healthy", "degraded", "unhealthy")


def _health(row: Mapping[str, Any]) -> str:
    """Its health and, when not healthy, why (ADR 0032)."""
    health = str(row["health"] or "healthy")
    return f"{health} ({row['health_reason']})" if row["health_reason"] else health


def _labels(row: Mapping[str, Any]) -> str | None:
    return ",".join(f"{k}={v}" for k, v in sorted((row["labels"] or {}).items())) or None


def _label_filter(given: list[str] | None) -> dict[str, str | None] | None:
    """`--label team:data --label tier` as {team: data, tier: None} (None: any value), as the
    API's `?label=` reads them."""
    if not given:
        return None
    wanted: dict[str, str | None] = {}
    for each in given:
        key, colon, value = each.partition(":")
        if not LABEL_KEY.fullmatch(key) or len(value) > MAX_LABEL_VALUE or "\x00" in value:
            raise CommandError(
                f"--label must be a label key (letters, digits, ._/-) or key:value, got {each!r}"
            )
        wanted[key] = value if colon else None
    return wanted


def _json(row: Row) -> object:
    from pgsched.app.api.schemas import schedule_out

    return schedule_out(row)


def _run(args: argparse.Namespace, work: Callable[[Conn], Any]) -> int:
    code: int = asyncio.run(base.with_conn(base.database_url(args), work))
    return code


# -- list / show ------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    enabled = None if args.state is None else args.state == "enabled"
    labels = _label_filter(args.label)

    async def work(conn: Conn) -> int:
        rows: list[Row] = []
        after = 0
        while len(rows) < args.limit:
            page = await reads.page_schedules(
                conn,
                after_id=after,
                limit=min(PAGE, args.limit - len(rows)),
                queue=args.queue,
                job_type=args.job_type,
                enabled=enabled,
                name=args.name,
                health=args.health,
                owner=args.owner,
                labels=labels,
            )
            rows += page
            if len(page) < PAGE:
                break
            after = page[-1]["id"]
        if args.json:
            output.json_out([_json(r) for r in rows])
            return 0
        if not rows:  # a bare header reads as "something is wrong"; --json keeps []
            print("no schedule matches")
            return 0
        last = {r["id"]: await _last_run_state(conn, r["id"]) for r in rows}
        output.table(
            rows,
            [
                ("ID", lambda r: r["id"]),
                ("NAME", lambda r: r["name"]),
                ("JOB", lambda r: r["job_type"]),
                ("WHEN", _timing),
                ("ZONE", lambda r: r["timezone"]),
                ("QUEUE", lambda r: r["queue"]),
                ("STATE", _state),
                ("HEALTH", _health),
                ("NEXT DUE (ZONE)", lambda r: output.instant(r["next_due_at"], zone=_zone(r))),
                ("NEXT DUE (UTC)", lambda r: output.instant(r["next_due_at"])),
                ("LAST RUN", lambda r: last[r["id"]]),
                ("OWNER", lambda r: r["owner"]),
                ("LABELS", _labels),
            ],
        )
        if len(rows) == args.limit:  # said aside, so the table stays a table
            print(f"(the first {args.limit} by id; more may match: --limit N)", file=sys.stderr)
        return 0

    return _run(args, work)


async def _upstream_names(conn: Conn, row: Mapping[str, Any]) -> list[str]:
    """Its upstreams by name, in the order it lists them (ADR 0033)."""
    ids = [int(u) for u in row["depends_on"] or []]
    found = await store.dependencies.upstream_candidates(conn, ids, [])
    names = {int(c["id"]): str(c["name"]) for c in found}
    return [names.get(i, f"schedule {i}") for i in ids]


async def _last_run_state(conn: Conn, schedule_id: int) -> str | None:
    newest = await reads.page_runs(conn, limit=1, schedule_id=schedule_id)
    return str(newest[0]["state"]) if newest else None


def cmd_show(args: argparse.Namespace) -> int:
    async def work(conn: Conn) -> int:
        with base.operation_errors():
            row = await schedules.live(conn, await base.schedule_id(conn, args.schedule))
        if args.json:
            output.json_out(_json(row))
            return 0
        zone = _zone(row)
        output.fields(
            [
                ("id", row["id"]),
                ("name", row["name"]),
                ("job type", row["job_type"]),
                ("payload", json.dumps(row["payload"], sort_keys=True)),
                ("when", _timing(row)),
                ("time zone", row["timezone"]),
                ("state", _state(row)),
                (
                    "next due",
                    f"{output.instant(row['next_due_at'], zone=zone)} "
                    f"({output.instant(row['next_due_at'])})",
                ),
                ("queue", row["queue"]),
                ("priority", row["priority"]),
                ("max attempts", row["max_attempts"]),
                ("timeout", f"{row['timeout_seconds']} s"),
                ("overlap / missed", f"{row['overlap_policy']} / {row['missed_policy']}"),
                ("health", _health(row)),
                ("health since", row["health_since"]),
                ("health policy", json.dumps(row["health_policy"], sort_keys=True)),
                ("pause after failures", row["pause_after_failures"] or "never (no breaker)"),
                ("depends on", ", ".join(await _upstream_names(conn, row)) or None),
                ("dependency timeout", f"{row['dependency_timeout_seconds']} s"),
                ("description", row["description"]),
                ("owner", row["owner"]),
                ("labels", _labels(row)),
                (
                    "managed by",
                    f"{row['managed_by']} (`pgsched apply` declares it: change it in that file)"
                    if row["managed_by"]
                    else None,
                ),
                ("version", row["version"]),
            ]
        )
        runs = await reads.page_runs(conn, limit=_RUNS_SHOWN, schedule_id=row["id"])
        print(f"\nlatest runs ({len(runs)}):")
        if runs:
            output.table(runs, _RUN_COLUMNS)
        # The ticker's advance of next_due_at is one event per occurrence: noise here. Read
        # newest first, so a history of any length shows its latest, oldest of them on top.
        told = await reads.latest_stream_events(
            conn, "schedule", row["id"], skip=sorted(_ROUTINE), limit=_EVENTS_SHOWN
        )
        print(
            f"\nlatest changes and missed occurrences (the newest {len(told)}; "
            "`GET /v1/events` has all):"
        )
        output.table(
            told[::-1],
            [
                ("AT", lambda e: e["occurred_at"]),
                ("EVENT", lambda e: e["type"]),
                ("ACTOR", lambda e: e["actor"]),
                ("DETAIL", _detail),
            ],
        )
        return 0

    return _run(args, work)


_ROUTINE = frozenset({"schedule.advanced", "schedule.snapshot"})


def _detail(event: Mapping[str, Any]) -> str | None:
    """What a reader wants of an event: why an occurrence did not run, what a backfill did."""
    meta = event["meta"] or {}
    if event["type"] == "schedule.occurrence_missed":
        return f"due {_instant_text(meta.get('due_at'))}: {meta.get('reason')}"
    if event["type"] == "schedule.backfilled":
        return (
            f"[{_instant_text(meta.get('from'))}, {_instant_text(meta.get('to'))}): "
            f"{meta.get('requested')} occurrence(s), "
            f"{meta.get('created')} new run(s)"
        )
    return None


def _instant_text(value: object) -> str:
    """An instant as an event's JSON holds it, printed as the tables print instants."""
    try:
        return output.instant(datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value)


_RUN_COLUMNS: list[output.Column] = [
    ("RUN", lambda r: r["id"]),
    ("STATE", lambda r: r["state"]),
    ("DUE (UTC)", lambda r: r["due_at"]),
    ("ORIGIN", lambda r: r["origin"]),
    ("ATTEMPT", lambda r: f"{r['attempt']}/{r['max_attempts']}"),
    ("FINISHED", lambda r: r["finished_at"]),
]


# -- create -------------------------------------------------------------------------------------


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """The API's JSON body: --file's (or stdin's with `-`), with the options over it."""
    body: dict[str, Any] = {}
    if args.file is not None:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except OSError as exc:
            raise CommandError(f"--file: cannot read {args.file}: {exc.strerror}") from None
        loaded = _json_arg(text, "--file")
        if not isinstance(loaded, dict):
            raise CommandError("--file must hold a JSON object (the body POST /v1/schedules takes)")
        body = loaded
    options = {
        "name": args.name,
        "job_type": args.job_type,
        "cron": args.cron,
        "interval_seconds": args.interval,
        "timezone": args.timezone,
        "queue": args.queue,
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        "timeout_seconds": args.timeout,
    }
    body |= {k: v for k, v in options.items() if v is not None}
    if args.payload is not None:
        body["payload"] = _json_arg(args.payload, "--payload")
    if args.run_at is not None:
        body["run_at"] = args.run_at
    if args.paused:
        body["enabled"] = False
    for key, value in (
        ("owner", args.owner),
        ("description", args.description),
        ("pause_after_failures", args.pause_after_failures),
    ):
        if value is not None:
            body[key] = value
    if args.depends_on:
        body["depends_on"] = args.depends_on
    if args.label:
        labels = _label_filter(args.label) or {}
        missing = [k for k, v in labels.items() if v is None]
        if missing:
            raise CommandError(f"--label needs KEY:VALUE to set a label, got {missing[0]!r}")
        body["labels"] = {**body.get("labels", {}), **labels}
    return body


def _json_arg(text: str, name: str) -> object:
    """Strict JSON, as the API decodes a body: Python's json also reads NaN and Infinity (and
    1e999 as infinity), which PostgreSQL's json refuses only later, in the driver's words."""
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{name} is not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:
        raise CommandError(f"{name} is not JSON: {exc}") from None


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _checked(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the API would take it, or one line naming the field."""
    import msgspec
    from litestar.exceptions import ValidationException

    from pgsched.app.api import decoding, definition
    from pgsched.app.api.schemas import ScheduleCreate

    if isinstance(body.get("run_at"), str):
        try:  # JSON has no instants: as the API's decoder, from RFC 3339 text
            body["run_at"] = datetime.fromisoformat(body["run_at"])
        except ValueError:
            raise CommandError(f"run_at: not an instant, got {body['run_at']!r}") from None
    try:
        data = decoding.check_body(body, ScheduleCreate)
    except ValidationException as exc:
        raise CommandError(str(exc.detail)) from None
    except msgspec.ValidationError as exc:
        raise CommandError(str(exc)) from None
    if not isinstance(data, ScheduleCreate):  # check_body converts to the type it is given
        raise TypeError(type(data))
    return definition.create_fields(data)


def cmd_create(args: argparse.Namespace) -> int:
    fields = _checked(_body(args))

    async def work(conn: Conn) -> int:
        with base.operation_errors():
            row = await schedules.create(
                conn, fields, actor=base.actor(), now=None, meta=base.audit_meta()
            )
        if args.json:
            output.json_out(_json(row))
        else:
            due = output.instant(row["next_due_at"])
            print(f"created schedule {row['id']} {row['name']!r} ({_state(row)}; next due {due})")
        return 0

    return _run(args, work)


# -- pause / resume / delete / trigger ------------------------------------------------------------


def _change(verb: str, act: Callable[..., Any]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def work(conn: Conn) -> int:
            with base.operation_errors():
                sid = await base.schedule_id(conn, args.schedule)
                if verb == "deleted":
                    row = await schedules.live(conn, sid)
                    if not base.confirm(f"delete schedule {sid} {row['name']!r}?", yes=args.yes):
                        print("nothing deleted", file=sys.stderr)
                        return 1
                    was = None
                else:
                    was = _state(await schedules.live(conn, sid))
                row = await act(conn, sid, actor=base.actor(), now=None, meta=base.audit_meta())
            if args.json:
                output.json_out(_json(row))
            elif verb != "deleted" and was == _state(row):
                # Pausing a paused one (resuming an enabled one) is a no-op, no event: say so.
                print(f"schedule {row['id']} {row['name']!r} already {_state(row)}")
            else:
                print(f"schedule {row['id']} {row['name']!r} {verb} ({_state(row)})")
            return 0

        return _run(args, work)

    return command


def cmd_trigger(args: argparse.Namespace) -> int:
    async def work(conn: Conn) -> int:
        with base.operation_errors():
            sid = await base.schedule_id(conn, args.schedule)
            run, created = await schedules.trigger(
                conn,
                sid,
                actor=base.actor(),
                now=None,
                idempotency_key=args.idempotency_key,
                meta=base.audit_meta(),
            )
        if args.json:
            from pgsched.app.api.schemas import run_out

            output.json_out(run_out(await reads.run_detail(conn, run["id"]) or run))
        else:
            how = "created" if created else "already made by this idempotency key"
            print(f"run {run['id']} of schedule {sid}: {how} ({run['state']})")
        await base.warn_unserved(conn, [run["queue"]])
        return 0

    return _run(args, work)


# -- backfill / preview -------------------------------------------------------------------------


def cmd_backfill(args: argparse.Namespace) -> int:
    start = base.when(args.from_, "--from")
    end = base.when(args.to, "--to")

    async def work(conn: Conn) -> int:
        now = await store.db_now(conn, None)
        begin, until = base.at(start, now, "--from"), base.at(end, now, "--to")
        with base.operation_errors():
            sid = await base.schedule_id(conn, args.schedule)
            try:
                done = await schedules.backfill(
                    conn, sid, begin, until, actor=base.actor(), now=None, meta=base.audit_meta()
                )
            except store.PartitionMissing:
                raise CommandError(
                    "--from: [from, to) reaches a month the database keeps no runs for (before "
                    "its oldest monthly partition); backfill a later range"
                ) from None
        if args.json:
            output.json_out(
                {
                    "schedule_id": sid,
                    "requested": done.requested,
                    "created": done.created,
                    "reason": done.reason,
                }
            )
            return 0
        span = f"[{output.instant(begin)}, {output.instant(until)})"
        # The service says why nothing was made (app.domain.schedule.backfill_empty_reason).
        why = f": {done.reason}" if done.reason else ""
        if not done.requested:
            print(f"no occurrence of schedule {sid} falls in {span}: nothing to backfill{why}")
        else:
            print(
                f"{done.requested} occurrence(s) of schedule {sid} in {span}: "
                f"{len(done.created)} new run(s), "
                f"{done.requested - len(done.created)} already had one{why}"
            )
        return 0

    return _run(args, work)


def cmd_preview(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= MAX_PREVIEW:
        raise CommandError(f"--count must be 1..{MAX_PREVIEW}, got {args.count}")

    async def work(conn: Conn) -> int:
        with base.operation_errors():
            sid = await base.schedule_id(conn, args.schedule)
            row = await schedules.live(conn, sid)
            after, due = await schedules.preview(conn, sid, args.count, now=None)
        if args.json:
            output.json_out({"schedule_id": sid, "after": after, "due": due})
            return 0
        zone = _zone(row)
        print(f"next {len(due)} due time(s) of schedule {sid} {row['name']!r} (before jitter):")
        output.table(
            [{"at": t} for t in due],
            [
                (f"IN {row['timezone']}", lambda r: output.instant(r["at"], zone=zone)),
                ("UTC", lambda r: output.instant(r["at"], zone=UTC)),
            ],
        )
        return 0

    return _run(args, work)


# -- the parser ---------------------------------------------------------------------------------


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (the API's shape)")


def _schedule_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "schedule", metavar="SCHEDULE", help="its id or its name (id:N or name:X says which)"
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `schedules` and its actions to the `pgsched` parser's subcommands."""
    add = base.actions(
        sub,
        "schedules",
        "list, show and operate schedules",
        "List, inspect and operate schedules (as /v1/schedules does).",
    )

    ls = add("list", "list live schedules with their next due time and last run")
    ls.add_argument("--queue")
    ls.add_argument("--job-type", choices=JOB_TYPES)
    ls.add_argument("--state", choices=["enabled", "paused"])
    ls.add_argument("--name", help="exactly this name")
    ls.add_argument("--health", choices=HEALTH_STATES)
    ls.add_argument("--owner", help="exactly this owner")
    ls.add_argument(
        "--label",
        action="append",
        metavar="KEY[:VALUE]",
        help="has this label (with this value); repeat for all of several",
    )
    ls.add_argument(
        "--limit", type=base.positive, default=100, help="at most (default: %(default)s)"
    )
    _json_flag(ls)
    ls.set_defaults(func=cmd_list)

    sh = add("show", "one schedule: its definition, latest runs and events (missed, skipped)")
    _schedule_arg(sh)
    _json_flag(sh)
    sh.set_defaults(func=cmd_show)

    _create_parser(add("create", "create a schedule from options and/or the API's JSON body"))

    for name, verb, act, summary in (
        ("pause", "paused", schedules.pause, "stop making runs (a paused one stays so)"),
        ("resume", "resumed", schedules.resume, "make runs again; missed ones follow its policy"),
        ("delete", "deleted", schedules.delete, "delete (soft: history stays, name is free)"),
    ):
        p = add(name, summary)
        _schedule_arg(p)
        if name == "delete":
            p.add_argument("--yes", action="store_true", help="do not ask")
        _json_flag(p)
        p.set_defaults(func=_change(verb, act))

    tr = add("trigger", "run it now, whatever its pause or overlap policy")
    _schedule_arg(tr)
    tr.add_argument("--idempotency-key", help="the same key again returns the same run")
    _json_flag(tr)
    tr.set_defaults(func=cmd_trigger)

    bf = add("backfill", "make the runs of past occurrences in [--from, --to) that have none")
    _schedule_arg(bf)
    bf.add_argument(
        "--from", dest="from_", required=True, metavar="WHEN", help="an instant, or 2h, 7d ago"
    )
    bf.add_argument("--to", required=True, metavar="WHEN", help="an instant or 0s (now)")
    _json_flag(bf)
    bf.set_defaults(func=cmd_backfill)

    pv = add("preview", "its next due times, in its zone and in UTC")
    _schedule_arg(pv)
    pv.add_argument("--count", type=int, default=10, help="how many (default: %(default)s)")
    _json_flag(pv)
    pv.set_defaults(func=cmd_preview)


def _create_parser(cr: argparse.ArgumentParser) -> None:
    cr.add_argument("name", nargs="?", help="its name (or the body's `name`)")
    cr.add_argument(
        "--file", metavar="FILE", help="a JSON body as POST /v1/schedules takes (- = stdin)"
    )
    cr.add_argument("--job-type", choices=JOB_TYPES, help="what the runs do")
    cr.add_argument("--payload", metavar="JSON", help="the job's payload, a JSON object")
    when = cr.add_mutually_exclusive_group()
    when.add_argument("--cron", help="a cron expression, in --timezone")
    when.add_argument("--interval", type=int, metavar="SECONDS", help="every SECONDS")
    when.add_argument("--run-at", metavar="INSTANT", help="once, at INSTANT (with a time zone)")
    cr.add_argument("--timezone", help="IANA zone of the cron expression (default UTC)")
    cr.add_argument("--queue")
    cr.add_argument("--priority", type=int)
    cr.add_argument("--max-attempts", type=int)
    cr.add_argument("--timeout", type=float, metavar="SECONDS")
    cr.add_argument("--paused", action="store_true", help="create it paused")
    cr.add_argument(
        "--depends-on",
        action="append",
        metavar="SCHEDULE",
        help="an upstream, by name: runs wait for its runs of the period (repeat for several)",
    )
    cr.add_argument("--owner", help="who keeps it")
    cr.add_argument("--description", help="what it is for")
    cr.add_argument("--label", action="append", metavar="KEY:VALUE", help="a label (repeatable)")
    cr.add_argument(
        "--pause-after-failures",
        type=int,
        metavar="N",
        help="pause it after N dead runs in a row (the circuit breaker)",
    )
    _json_flag(cr)
    cr.set_defaults(func=cmd_create)
