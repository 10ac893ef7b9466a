"""Use cases: one transaction each, the one path a change takes whoever asks (ADR 0025).

The API routes, the CLI and the built-in maintenance job (run by a worker) call these; they
apply app.domain's rules and write through app.db.store. HTTP and argument parsing stay with
the callers. A worker's own transitions (claim, heartbeat, completion, release, rescue) have one
caller, the worker, and one statement each: it calls the store for them (ADR 0025).
"""
