"""The `pgsched` command as an operator runs it: bad input is one line on stderr and exit 2."""
