"""Pure scheduling rules: no I/O, no database, no clock reads."""
