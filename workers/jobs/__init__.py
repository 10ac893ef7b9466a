"""Job types and their execution: the part of a worker that does the work of a run.

The worker loop (``workers.worker``) claims a run, builds a :class:`JobContext`, awaits
:func:`execute` and stores :meth:`Outcome.as_json`. The API calls :func:`validate_payload`
before a schedule is stored. ADR 0012 records the decisions; modules:

* ``base`` - :class:`JobContext`, :class:`Outcome`, :class:`InvalidPayload`, text bounds;
* ``app.domain.jobs`` (not here: the API needs it too) - :func:`validate_payload`, the
  catalogue of job types and the shape of every payload;
* ``secretrefs`` - ``{"$secret": NAME}`` resolution and masking;
* ``runner`` - :func:`execute`;
* ``command``, ``http_request``, ``sql``, ``python_call`` - one module per job type.
"""

from __future__ import annotations

from pgsched.app.domain.jobs import JOB_TYPES, MAX_KILL_AFTER_SECONDS, validate_payload
from pgsched.workers.jobs.base import (
    MAX_ERROR_BYTES,
    MAX_OUTPUT_BYTES,
    InvalidPayload,
    JobContext,
    Outcome,
    Status,
)
from pgsched.workers.jobs.command import KILL_GRACE_SECONDS
from pgsched.workers.jobs.runner import execute, max_overrun_seconds
from pgsched.workers.jobs.secretrefs import SECRET_ENV_PREFIX, MissingSecret, env_var, resolve

__all__ = [
    "JOB_TYPES",
    "KILL_GRACE_SECONDS",
    "MAX_ERROR_BYTES",
    "MAX_KILL_AFTER_SECONDS",
    "MAX_OUTPUT_BYTES",
    "SECRET_ENV_PREFIX",
    "InvalidPayload",
    "JobContext",
    "MissingSecret",
    "Outcome",
    "Status",
    "env_var",
    "execute",
    "max_overrun_seconds",
    "resolve",
    "validate_payload",
]
