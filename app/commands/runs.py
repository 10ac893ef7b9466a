"""`pgsched runs …`: find runs, read one's history, retry or cancel them, one or many.

Retry and cancel call the services the API calls (app.services.runs), one run per
transaction, so each change is the same event with the same kind of audit meta. The bulk forms
(`runs retry --state dead --queue reports`) act on every run the filters match: they count
them, ask before acting (`--yes` skips; with no terminal and no --yes they refuse), then print
how many changed. A run that changed meanwhile (retried by someone else, finished) is counted
as skipped, not as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, get_args

from pgsched.app.commands import base, output
from pgsched.app.commands.base import CommandError
from pgsched.app.db import store
from pgsched.app.db.store import Conn, Row, reads
from pgsched.app.domain.errors import NotFound
from pgsched.app.services import runs

RETRYABLE = ("dead", "cancelled")
CANCELLABLE = ("waiting", "blocked", "running")
PAGE = 500
_ERROR_WIDTH = 60


def _run(args: argparse.Namespace, work: Callable[[Conn], Any]) -> int:
    code: int = asyncio.run(base.with_conn(base.database_url(args), work))
    return code


def _error(row: Mapping[str, Any]) -> str | None:
    outcome = row["outcome"] or {}
    text = outcome.get("error") or (outcome.get("status") if row["state"] == "dead" else None)
    if not text:
        return None
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line[:_ERROR_WIDTH] + ("…" if len(line) > _ERROR_WIDTH else "")


COLUMNS: list[output.Column] = [
    ("RUN", lambda r: r["id"]),
    ("SCHEDULE", lambda r: r["schedule_name"] or r["schedule_id"]),
    ("STATE", lambda r: r["state"] + (" (cancel asked)" if r["cancel_requested"] else "")),
    ("QUEUE", lambda r: r["queue"]),
    ("DUE (UTC)", lambda r: r["due_at"]),
    ("ATTEMPT", lambda r: f"{r['attempt']}/{r['max_attempts']}"),
    ("ORIGIN", lambda r: r["origin"]),
    ("FINISHED", lambda r: r["finished_at"]),
    ("ERROR", _error),
]


def _waits(row: Mapping[str, Any]) -> str | None:
    """The upstream occurrences a blocked (or once blocked) run waits for (ADR 0033)."""
    waits = row["waits_for"] or []
    return ", ".join(f"schedule {w['schedule_id']} due {w['due_at']}" for w in waits) or None


def run_states() -> tuple[str, ...]:
    """The run states the API knows (its filter takes the same list); imported when needed, so
    that `pgsched --help` does not load the API."""
    from pgsched.app.api.schemas import RunState

    return get_args(RunState)


def _states(
    given: Sequence[str] | None, allowed: Sequence[str] | None, verb: str
) -> list[str] | None:
    """The --state values, each one a run state (and, for retry/cancel, one it applies to)."""
    if not given:
        return None
    known = run_states()
    states = [s.strip() for raw in given for s in raw.split(",")]
    if "" in states:  # `--state "$UNSET"` must not widen a filter to every state
        raise CommandError(f"--state must be one of {', '.join(known)}, got an empty value")
    for state in states:
        if state not in known:
            raise CommandError(f"--state must be one of {', '.join(known)}, got {state!r}")
        if allowed is None:
            continue
        if state not in allowed:
            raise CommandError(
                f"--state: only {' or '.join(allowed)} runs can be {verb}, got {state!r}"
            )
    return states


async def _matching(
    conn: Conn, args: argparse.Namespace, states: list[str] | None, limit: int | None
) -> list[Row]:
    """Runs that match the filters, newest occurrence first (keyset pages)."""
    now = await store.db_now(conn, None)
    since = base.at(base.when(args.since, "--since"), now, "--since") if args.since else None
    until = base.at(base.when(args.until, "--until"), now, "--until") if args.until else None
    schedule_id = await base.schedule_id(conn, args.schedule) if args.schedule else None
    found: list[Row] = []
    before: tuple[datetime, int] | None = None
    while limit is None or len(found) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(found))
        page = await reads.page_runs(
            conn,
            limit=size,
            before=before,
            states=states,
            schedule_id=schedule_id,
            queue=args.queue,
            since=since,
            until=until,
        )
        found += page
        if len(page) < size:
            break
        before = (page[-1]["due_at"], page[-1]["id"])
    return found


def _run_json(row: Row) -> object:
    from pgsched.app.api.schemas import run_out

    return run_out(row)


def cmd_list(args: argparse.Namespace) -> int:
    states = _states(args.state, None, "listed")

    async def work(conn: Conn) -> int:
        rows = await _matching(conn, args, states, args.limit)
        if args.json:
            output.json_out([_run_json(r) for r in rows])
            return 0
        if not rows:  # a bare header reads as "something is wrong"; --json keeps []
            print("no run matches")
            return 0
        output.table(rows, COLUMNS)
        if len(rows) == args.limit:  # said aside, so the table stays a table
            print(f"(the newest {args.limit}; more may match: --limit N)", file=sys.stderr)
        return 0

    return _run(args, work)


def cmd_show(args: argparse.Namespace) -> int:
    from pgsched.app.api.routes.runs import attempts_of
    from pgsched.app.api.schemas import RunDetail, run_out

    async def work(conn: Conn) -> int:
        row = await reads.run_detail(conn, args.run)
        if row is None:
            raise CommandError(f"run {args.run} does not exist")
        events = await reads.stream_events(conn, "run", args.run, limit=100_000)
        attempts = attempts_of(events)
        if args.json:
            run = run_out(row)
            fields = {f: getattr(run, f) for f in run.__struct_fields__}
            output.json_out(
                {
                    "run": RunDetail(**fields, attempts=attempts),
                    "events": [_event(e) for e in events],
                }
            )
            return 0
        output.fields(
            [
                ("run", row["id"]),
                ("schedule", f"{row['schedule_id']} {row['schedule_name'] or ''}".strip()),
                ("state", row["state"] + (" (cancel asked)" if row["cancel_requested"] else "")),
                ("origin", row["origin"]),
                ("queue / priority", f"{row['queue']} / {row['priority']}"),
                ("due", row["due_at"]),
                ("attempt", f"{row['attempt']} of {row['max_attempts']}"),
                (
                    "started / finished",
                    f"{output.cell(row['started_at'])} / {output.cell(row['finished_at'])}",
                ),
                ("outcome", json.dumps(row["outcome"], sort_keys=True) if row["outcome"] else None),
                ("waits for", _waits(row)),
                ("waits until", row["wait_until"]),
                ("trace", _trace(events)),
            ]
        )
        print(f"\nattempts ({len(attempts)}):")
        if attempts:
            output.table(
                [{"a": a} for a in attempts],
                [
                    ("#", lambda r: r["a"].attempt),
                    ("WORKER", lambda r: r["a"].worker_id),
                    ("STARTED", lambda r: r["a"].started_at),
                    ("ENDED", lambda r: r["a"].ended_at),
                    ("RESULT", lambda r: r["a"].result),
                ],
            )
        print(f"\nevents ({len(events)}):")
        output.table(
            events,
            [
                ("AT", lambda e: e["occurred_at"]),
                ("EVENT", lambda e: e["type"]),
                ("ACTOR", lambda e: e["actor"]),
            ],
        )
        return 0

    return _run(args, work)


def _event(row: Row) -> dict[str, object]:
    # The lease token is the worker's proof of ownership, not the reader's business.
    data = {k: v for k, v in (row["data"] or {}).items() if k != "lease_token"}
    keep = ("id", "occurred_at", "type", "actor", "meta", "trace_id")
    return {**{k: row[k] for k in keep}, "data": data}


def _trace(events: Sequence[Row]) -> str | None:
    traced = [e["trace_id"] for e in events if e["trace_id"]]
    return str(traced[0]) if traced else None


# -- retry / cancel -----------------------------------------------------------------------------


def _bulk(verb: str, allowed: tuple[str, ...]) -> Callable[[argparse.Namespace], int]:
    """`runs retry` / `runs cancel`: the runs named, or every run the filters match."""

    def command(args: argparse.Namespace) -> int:
        states = _states(args.state, allowed, verb)
        # From the parsed values: an empty --queue or --since filters nothing, so it is none.
        filtered = any((states, args.queue, args.schedule, args.since, args.until))
        if args.runs and filtered:
            raise CommandError("give run ids or filters (--state, --queue, ...), not both")
        if not args.runs and not filtered:
            raise CommandError(
                f"name the runs to be {verb} (ids), or filter them (--state, --queue, "
                "--schedule, --since, --until)"
            )

        async def work(conn: Conn) -> int:
            if args.runs:
                ids = list(args.runs)
                if len(ids) == 1 and await reads.run_detail(conn, ids[0]) is None:
                    # One unknown id is a bad argument: one line, exit 2, like every other.
                    raise CommandError(f"run {ids[0]} does not exist")
            else:
                rows = await _matching(conn, args, states or list(allowed), None)
                ids = [r["id"] for r in rows]
                if not ids:
                    print(f"no run matches: nothing {verb}")
                    return 0
                if not base.confirm(
                    f"{'retry' if verb == 'retried' else 'cancel'} {len(ids)} run(s)?", yes=args.yes
                ):
                    print(f"nothing {verb}", file=sys.stderr)
                    return 1
            done, skipped = await _apply(conn, verb, ids, quiet=args.json or len(ids) > 1)
            if args.json:
                output.json_out({verb: done, "skipped": skipped})
            else:
                extra = f" ({len(skipped)} skipped: {_skip_reason(verb)})" if skipped else ""
                print(f"{verb} {len(done)} run(s){extra}")
            # One run named and refused: the operator asked for exactly that.
            return 1 if args.runs and len(ids) == 1 and skipped else 0

        return _run(args, work)

    return command


def _skip_reason(verb: str) -> str:
    allowed = RETRYABLE if verb == "retried" else CANCELLABLE
    return f"not {' or '.join(allowed)}, or gone"


async def _apply(
    conn: Conn, verb: str, ids: Sequence[int], *, quiet: bool
) -> tuple[list[int], list[int]]:
    done: list[int] = []
    skipped: list[int] = []
    for run_id in ids:
        try:
            if verb == "retried":
                changed = await runs.retry(
                    conn, run_id, actor=base.actor(), now=None, meta=base.audit_meta()
                )
                reason = None if changed else await _why_not(conn, run_id, RETRYABLE)
            else:
                before, changed = await runs.cancel(
                    conn, run_id, actor=base.actor(), now=None, meta=base.audit_meta()
                )
                state = "being cancelled" if before["cancel_requested"] else before["state"]
                reason = None if changed else f"run {run_id} is {state}"
        except NotFound:
            changed, reason = None, f"run {run_id} does not exist"
        if changed is None:
            skipped.append(run_id)
            if not quiet:
                print(f"{reason}: not {verb}", file=sys.stderr)
        else:
            done.append(run_id)
    return done, skipped


async def _why_not(conn: Conn, run_id: int, allowed: tuple[str, ...]) -> str:
    row = await reads.run_detail(conn, run_id)
    return f"run {run_id} does not exist" if row is None else f"run {run_id} is {row['state']}"


# -- the parser ---------------------------------------------------------------------------------


def _filters(p: argparse.ArgumentParser, states: Sequence[str] | None = None) -> None:
    which = f"{', '.join(states)}; default: any of them" if states else "waiting, dead, ..."
    p.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help=f"run state ({which}; repeatable, or comma-separated)",
    )
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--schedule", metavar="SCHEDULE", help="only this schedule (id or name)")
    p.add_argument("--since", metavar="WHEN", help="due at or after: an instant, or 2h, 7d ago")
    p.add_argument("--until", metavar="WHEN", help="due before: an instant, or 30m ago")


def _run_id(raw: str) -> int:
    try:
        return base.whole(raw, "a run id")
    except CommandError:
        raise argparse.ArgumentTypeError(
            f"a run id is a whole number 1..{base.MAX_ID}, got {raw!r}"
        ) from None


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `runs` and its actions to the `pgsched` parser's subcommands."""
    add = base.actions(
        sub,
        "runs",
        "list, show, retry and cancel runs",
        "Find runs, read one's attempts and events, retry or cancel one or many.",
    )

    ls = add("list", "runs matching the filters, newest occurrence first")
    _filters(ls)
    ls.add_argument(
        "--limit", type=base.positive, default=50, help="at most (default: %(default)s)"
    )
    ls.add_argument("--json", action="store_true", help="print JSON (the API's shape)")
    ls.set_defaults(func=cmd_list)

    sh = add("show", "one run: its attempts, outcome, worker, trace id and every event")
    sh.add_argument("run", type=_run_id, metavar="RUN", help="the run's id")
    sh.add_argument("--json", action="store_true", help="print JSON")
    sh.set_defaults(func=cmd_show)

    for name, verb, allowed, summary in (
        ("retry", "retried", RETRYABLE, "send dead or cancelled runs back to waiting"),
        ("cancel", "cancelled", CANCELLABLE, "cancel waiting runs; ask running ones to stop"),
    ):
        p = add(name, f"{summary}: the RUN ids given, or every run the filters match")
        p.add_argument("runs", nargs="*", type=_run_id, metavar="RUN", help="run ids")
        _filters(p, allowed)
        p.add_argument("--yes", action="store_true", help="do not ask before a bulk change")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_bulk(verb, allowed))
