"""Use cases: one transaction each, the one path a change takes whoever asks (ADR 0025).

The API routes, the CLI, the built-in maintenance job and the workers call these; they apply
app.domain's rules and write through app.db.store. HTTP and argument parsing stay with the
callers.
"""
