"""`pgsched status`: the verdict of `GET /health`, as a Nagios-style check.

The components are judged by the code that judges them for `/health` (app.api.routes.system's
`_components`, on the store's `health` read, with the API's thresholds), so a monitoring check
and a load balancer never disagree. Exit 0 OK (healthy), 1 WARNING (degraded), 2 CRITICAL
(unhealthy, or the database does not answer). The first line on stdout is the summary (`OK: …`,
`WARNING: …`, `CRITICAL: …`), one line per component follows. A bad argument or setting is also
exit 2, like every other command: then stdout is empty and stderr has the one line
`pgsched: …`, so a check tells them apart by the first line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from psycopg.rows import dict_row

from pgsched.app.commands import base, output
from pgsched.app.commands.base import CommandError
from pgsched.app.db.store import Conn, reads

if TYPE_CHECKING:
    from pgsched.app.api.config import ApiSettings

CONNECT_TIMEOUT = 5
# A check that hangs is worse than one that fails: a lock held on pgsched.worker (a migration,
# a stuck transaction) would otherwise keep `pgsched status` waiting forever.
STATEMENT_TIMEOUT_MS = 5000
# The components whose state is the overall status, as /health counts them.
COUNTED = ("database", "ticker", "workers", "partitions")
ORDER = {"healthy": 0, "degraded": 1, "unhealthy": 2}
# Nagios plugin return codes.
CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}
LABELS = {"healthy": "OK", "degraded": "WARNING", "unhealthy": "CRITICAL"}


def cmd_status(args: argparse.Namespace) -> int:
    from pgsched.app.api.config import ApiSettings

    try:
        url = base.database_url(args)
    except CommandError as exc:  # no database configured and no local one running: down
        return _unreachable(args, str(exc))
    limits = ApiSettings(database_url=url)  # the API's thresholds, as /health judges

    async def check() -> int:
        try:
            conn = await psycopg.AsyncConnection.connect(
                url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                row_factory=dict_row,
                options=_with_timeout(url),
            )
        except psycopg.Error as exc:  # down, refused, or a DSN that does not parse
            return _unreachable(args, f"cannot connect to the database: {base.first_line(exc)}")
        try:
            return await _report(args, conn, limits)
        except psycopg.Error as exc:  # a timeout, an unmigrated database: it cannot be judged
            return _unreachable(args, base.first_line(exc))
        finally:
            await conn.close()

    return asyncio.run(check())


async def _report(args: argparse.Namespace, conn: Conn, limits: ApiSettings) -> int:
    from pgsched.app.api.routes.system import _components

    row = await reads.health(conn, stale_seconds=limits.worker_stale_seconds, now=None)
    found, details = _components(row, limits)
    components: dict[str, str] = msgspec.structs.asdict(found)
    status = max((components[name] for name in COUNTED), key=ORDER.__getitem__)
    if args.json:
        output.json_out(
            {
                "status": status,
                "timestamp": row["now"],
                "components": components,
                "details": details,
                "metrics": {
                    "active_schedules": row["active_schedules"],
                    "pending_runs": row["pending_runs"],
                    "running_runs": row["running_runs"],
                    "live_workers": row["live_workers"],
                    "overdue_seconds": max(0.0, row["overdue_seconds"] or 0.0),
                    "partition_months_ahead": row["months_ahead"],
                },
            }
        )
        return CODES[status]
    bad = [name for name in COUNTED if components[name] != "healthy"]
    if bad:
        summary = "; ".join(f"{n} {components[n]}: {details.get(n, '')}" for n in bad)
    else:
        summary = ", ".join(details.get(n, "") for n in ("workers", "ticker", "partitions"))
    print(f"{LABELS[status]}: pgsched is {status} - {summary}")
    for name, state in components.items():
        print(f"  {name:<10} {state:<9} {details.get(name, '')}")
    return CODES[status]


def _with_timeout(url: str) -> str:
    """The DSN's own server options, if any, and the statement timeout after them."""
    given = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
    return f"{given} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()


def _unreachable(args: argparse.Namespace, why: str) -> int:
    if args.json:
        down = dict.fromkeys(COUNTED, "unhealthy")
        # As /health without its database: nothing else can be assessed.
        output.json_out({"status": "unhealthy", "components": down, "details": {"database": why}})
    else:
        print(f"CRITICAL: pgsched is unhealthy - database: {why}")
    return CODES["unhealthy"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    desc = (
        "Check the installation's health as GET /health does: exit 0 OK, 1 WARNING, "
        "2 CRITICAL; the first line of stdout says which (a bad argument is also exit 2, "
        "with stdout empty and one line on stderr)."
    )
    p = sub.add_parser("status", help="health check, Nagios-style exit codes", description=desc)
    p.add_argument("--json", action="store_true", help="print the /health body as JSON")
    p.set_defaults(func=cmd_status)
