"""`pgsched status`: the verdict of `GET /health` (app.domain.health), as a Nagios-style check.

Exit 0 OK (healthy), 1 WARNING (degraded), 2 CRITICAL (unhealthy, or the database does not
answer). The first line on stdout is the summary (`OK: …`, `WARNING: …`, `CRITICAL: …`), one
line per component follows. A bad argument or setting is also exit 2, like every other command:
then stdout is empty and stderr has the one line `pgsched: …`, so a check tells them apart by
the first line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg

from pgsched.app.commands import base, output
from pgsched.app.commands.base import CommandError
from pgsched.app.db.store import Conn, reads
from pgsched.app.domain import health

CONNECT_TIMEOUT = 5
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
                row_factory=psycopg.rows.dict_row,
            )
        except psycopg.OperationalError as exc:
            return _unreachable(args, f"cannot connect to the database: {base.first_line(exc)}")
        try:
            return await _report(
                args, conn, limits.ticker_overdue_seconds, limits.worker_stale_seconds
            )
        finally:
            await conn.close()

    return asyncio.run(check())


async def _report(args: argparse.Namespace, conn: Conn, overdue: float, stale: float) -> int:
    row = await reads.health(conn, stale_seconds=stale, now=None)
    found = health.assess(row, ticker_overdue_seconds=overdue, worker_stale_seconds=stale)
    status = found.status
    if args.json:
        output.json_out(
            {
                "status": status,
                "timestamp": row["now"],
                "components": found.components,
                "details": found.details,
                "metrics": health.metrics(row),
            }
        )
        return CODES[status]
    bad = [n for n, s in found.components.items() if s != "healthy"]
    if bad:
        summary = "; ".join(f"{n} {found.components[n]}: {found.details[n]}" for n in bad)
    else:
        summary = ", ".join(found.details[n] for n in ("workers", "ticker", "partitions"))
    print(f"{LABELS[status]}: pgsched is {status} - {summary}")
    for name, state in found.components.items():
        print(f"  {name:<10} {state:<9} {found.details[name]}")
    return CODES[status]


def _unreachable(args: argparse.Namespace, why: str) -> int:
    if args.json:
        down = dict.fromkeys(("database", "ticker", "workers", "partitions"), "unhealthy")
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
