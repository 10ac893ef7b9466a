"""Login roles for tests that must connect as a deployment would: a role of its own, a member
of the given pgsched roles only (SET ROLE from a superuser session cannot show what a process
that logs in as such a role can and cannot do, nor can it test `sql` jobs, which log in)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import connect


def as_user(dsn: str, user: str) -> str:
    """`dsn` with another user and no password (the test server trusts local connections)."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    params["user"] = user
    return make_conninfo("", **params)


@contextlib.asynccontextmanager
async def login_role(dsn: str, *members: str) -> AsyncIterator[str]:
    """A fresh LOGIN role that is a member of `members` only; yields its DSN on `dsn`'s
    database and drops the role afterwards (roles are cluster-wide)."""
    name = f"pgsched_t_{uuid.uuid4().hex[:10]}"
    admin = await connect(dsn)
    try:
        create = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name))
        if members:
            create = sql.SQL("{} IN ROLE {}").format(
                create, sql.SQL(", ").join(sql.Identifier(m) for m in members)
            )
        await admin.execute(create)
        try:
            yield as_user(dsn, name)
        finally:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [name],
            )
            await admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    finally:
        await admin.close()
