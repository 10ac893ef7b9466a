"""`python -m pgsched …` is the `pgsched` command."""

from __future__ import annotations

import sys

from pgsched.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
