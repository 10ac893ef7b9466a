"""What `pgsched run` prints once it serves: what to do next, in the words of this machine.

The first hour's trap: `bash scripts/run` installs pgsched into `.venv`, which is not on the
user's PATH, so the next command (`pgsched token create`) is "command not found". The lines
below name the command as it can be typed here: `pgsched` when the one on PATH is this one,
else its path (relative to the working directory when it lies inside), with the activation
alternative.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from pgsched.app.commands.base import LOCAL_DATA_DIR


def command_path(environ: Mapping[str, str]) -> str:
    """How to type this installation's `pgsched` from the working directory (`environ`'s PATH
    says whether plain `pgsched` is this one)."""
    here = Path(sys.argv[0]) if Path(sys.argv[0]).name == "pgsched" else None
    script = here or Path(sys.executable).with_name("pgsched")
    on_path = shutil.which("pgsched", path=environ.get("PATH", ""))
    if on_path and Path(on_path).absolute() == script.absolute():
        return "pgsched"
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script.absolute())


def next_steps(*, local_dsn: str | None, api: str, environ: Mapping[str, str]) -> list[str]:
    """The lines to print; `local_dsn` is the local cluster's DSN (None: DATABASE_URL's)."""
    cli = command_path(environ)
    lines = ["", "Next, in another shell" + (" in this directory:" if local_dsn else ":")]
    if cli != "pgsched":
        bin_dir = Path(cli).parent
        lines.append(f"  source {bin_dir}/activate   # puts `pgsched` on PATH (or type {cli})")
    if local_dsn is None:
        lines.append("  export DATABASE_URL=…   # the same database as this service")
    else:
        lines.append(
            f"  # no DATABASE_URL needed here: commands find the PostgreSQL under {LOCAL_DATA_DIR}"
        )
    lines += [
        # A fresh name each time the line is typed: token names are unique, and a restart
        # keeps the tokens made before (an empty TOKEN would make the curl below a 401).
        '  TOKEN=$(pgsched token create --name "me-$(date +%s)" --role admin)   # shown once',
        f"  # the console: {api}/ui/ (sign in with the token: echo $TOKEN)",
        "  pgsched status   # health: exit 0 OK, 1 WARNING, 2 CRITICAL",
        "  pgsched schedules list; pgsched runs list --state dead",
        f"  curl -s {api}/health",
        f'  curl -s {api}/schema/openapi.json -H "Authorization: Bearer $TOKEN"',
        "",
    ]
    return lines
