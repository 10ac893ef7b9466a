"""Python jobs as first-class: `@pgsched.job` registers a function as a job definition.

    # myapp/jobs.py
    import pgsched

    @pgsched.job("send_welcome", queue="mail", max_attempts=5)
    def send_welcome(user_id: int, run_context: pgsched.RunContext) -> None:
        ...

The decorator returns the function unchanged (still callable, still typed) and records, in the
process-wide `registry`, the job definition it stands for (ADR 0027 section "Python jobs"):
kind `job`, job type `python`, payload `{"target": "myapp.jobs:send_welcome"}`, and the
defaults given (the schedule's defaults for the rest, so that removing an option from the
decorator resets it).

Two processes read the registry:
- the worker: `pgsched worker --import myapp.jobs` (or `PGSCHED_IMPORT`) imports the modules,
  then creates or brings up to date the definition of every registered job
  (`services.schedules.define_job`: idempotent, one event per real change);
- the application: `Client.enqueue("send_welcome", {"kwargs": {...}})` checks, in-process and
  before any statement, that the kwargs bind to the function's signature when the registry knows
  the name (`check_kwargs`); a name it does not know is checked by the worker when it runs.

A target may declare parameters the worker fills in, never the payload (`INJECTED`):
`idempotency_key` (`run_id:attempt`), `database_url` (the worker's database) and `run_context`
(a `RunContext`: the run's id, attempt and key, and `cancelled()`).

Pure: no I/O, no database. It imports only app.domain, so `import pgsched` stays light and both
the client (app) and the worker (workers) may use it (the layers of ADR 0025).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

from pgsched.app.domain import schedule
from pgsched.app.domain.errors import InvalidRequest

__all__ = [
    "DEFINITION_FIELDS",
    "INJECTED",
    "RUN_CONTEXT_PARAMETER",
    "Job",
    "Registry",
    "RunContext",
    "job",
    "registry",
]

P = ParamSpec("P")
R = TypeVar("R")

RUN_CONTEXT_PARAMETER: Final = "run_context"
# What the worker passes to a target that declares a parameter of that name
# (workers.jobs.python_call); app.domain.jobs refuses them as payload kwargs.
INJECTED: Final = frozenset({"idempotency_key", "database_url", RUN_CONTEXT_PARAMETER})
# The definition's fields a decorator may set: what every run of the job starts from.
DEFINITION_FIELDS: Final = (
    "queue",
    "priority",
    "max_attempts",
    "timeout_seconds",
    "retry_delay_seconds",
    "retry_factor",
    "retry_max_delay_seconds",
    "max_concurrency",
)
_PASSABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class RunContext:
    """What a `python` job is told about its attempt, given to a target that declares a
    parameter `run_context`.

    `cancelled()` turns true once the worker asked the job to stop: its timeout passed, an
    operator requested a cancel, the lease was lost or not renewed in time, or the worker is
    shutting down past its grace period. An async target is also cancelled (CancelledError at
    its next await), and `cancelled()` is already true when that arrives; a sync target runs
    on a thread that cannot be stopped, so a long one should look now and then and return.
    The worker renews the attempt's lease itself while the process is alive: a job has no
    heartbeat to send.
    """

    __slots__ = ("_stop", "attempt", "run_id", "timeout_seconds")

    def __init__(self, run_id: int, attempt: int, timeout_seconds: float) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.timeout_seconds = timeout_seconds
        # A threading.Event: read from a sync target's thread, set from the worker's loop.
        self._stop = threading.Event()

    @property
    def idempotency_key(self) -> str:
        """`run_id:attempt`, as passed to a target's `idempotency_key` parameter."""
        return f"{self.run_id}:{self.attempt}"

    def cancelled(self) -> bool:
        """True once the worker asked this attempt to stop."""
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` (a sync target's `time.sleep`), waking early when asked to stop;
        returns `cancelled()`."""
        return self._stop.wait(seconds)

    def stop(self) -> None:
        """Ask the attempt to stop (the worker's side: workers.jobs.python_call)."""
        self._stop.set()

    def __repr__(self) -> str:
        return f"RunContext(run_id={self.run_id}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class Job:
    """One registered job: its name, its function, and the definition it stands for."""

    name: str
    function: Callable[..., Any]
    target: str
    defaults: Mapping[str, object] = field(default_factory=dict)

    @property
    def job_type(self) -> str:
        return "python"

    @property
    def payload(self) -> dict[str, object]:
        return {"target": self.target}

    def definition(self) -> dict[str, object]:
        """Every definition field, the decorator's values over the schedule's defaults: an
        option taken out of the decorator goes back to its default at the next install."""
        return {k: self.defaults.get(k, schedule.DEFAULTS[k]) for k in DEFINITION_FIELDS}

    def check_kwargs(self, kwargs: object) -> None:
        """Refuse, naming the argument, kwargs the function cannot be called with. What the
        worker fills in (`INJECTED`) counts as given when the function declares it."""
        if not isinstance(kwargs, Mapping):
            raise InvalidRequest("payload.kwargs", "must be an object")
        try:
            signature = inspect.signature(self.function)
        except (TypeError, ValueError):
            return  # no signature to check against (some builtins); the worker will tell
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for name in kwargs:
            if not isinstance(name, str) or name in INJECTED:
                continue  # app.domain.jobs refuses these, naming them, before the statement
            param = params.get(name)
            if (param is None and not takes_any) or (
                param is not None and param.kind not in _PASSABLE
            ):
                raise InvalidRequest(
                    f"payload.kwargs.{name}", f"is not a parameter of {self.target}{signature}"
                )
        given = {str(k): v for k, v in kwargs.items()}
        for name in INJECTED:
            param = params.get(name)
            if param is not None and param.kind in _PASSABLE:
                given[name] = None
        for name, param in params.items():
            if param.default is inspect.Parameter.empty and name not in given:
                if param.kind in _PASSABLE:
                    raise InvalidRequest(
                        f"payload.kwargs.{name}",
                        f"is required by {self.target}{signature}",
                    )
                if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                    raise InvalidRequest(
                        "payload.kwargs",
                        f"{self.target} has a positional-only parameter {name!r}: "
                        "a job is called with keyword arguments",
                    )


class Registry:
    """Registered jobs by name. Thread-safe; one per process (`registry`)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, entry: Job) -> None:
        """Register `entry`; a name already taken by another target is a ValueError. The same
        target again (its module reloaded) replaces the entry."""
        with self._lock:
            known = self._jobs.get(entry.name)
            if known is not None and known.target != entry.target:
                raise ValueError(
                    f"job {entry.name!r} is already registered to {known.target}, "
                    f"not {entry.target}: job names are unique"
                )
            self._jobs[entry.name] = entry

    def get(self, name: object) -> Job | None:
        """The job registered as `name` (None: unknown here, or `name` is a definition id)."""
        return self._jobs.get(name) if isinstance(name, str) else None

    def remove(self, name: str) -> None:
        with self._lock:
            self._jobs.pop(name, None)

    def __iter__(self) -> Iterator[Job]:
        with self._lock:
            return iter(sorted(self._jobs.values(), key=lambda j: j.name))

    def __len__(self) -> int:
        return len(self._jobs)

    def check_payload(self, name: object, payload: Mapping[str, object] | None) -> None:
        """For an enqueue to `name`: the run's kwargs (the payload's `kwargs`, or none) bind to
        the registered function. Nothing when the name is not registered in this process."""
        entry = self.get(name)
        if entry is None or not isinstance(payload, Mapping | None):
            return  # not ours to check; a payload that is no object is the service's to refuse
        kwargs = {} if payload is None else payload.get("kwargs", {})
        entry.check_kwargs(kwargs)


registry: Final = Registry()


def _target(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"@pgsched.job needs a function, got {function!r}")
    if "<" in qualname:  # <locals>, <lambda>: no import path reaches it
        raise TypeError(
            f"@pgsched.job: {module}.{qualname} is not reachable by an import path; "
            "define the job at the top level of a module"
        )
    if module == "__main__":
        raise TypeError(
            f"@pgsched.job: {qualname} is defined in __main__, which a worker cannot import; "
            "define it in a module (pgsched worker --import that.module)"
        )
    return f"{module}:{qualname}"


def job(
    name: str,
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    retry_delay_seconds: float | None = None,
    retry_factor: float | None = None,
    retry_max_delay_seconds: float | None = None,
    max_concurrency: int | None = None,
    registry: Registry = registry,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register the decorated function (sync or async) as the job definition `name`.

    The options are the definition's defaults for every run (None: the schedule's default);
    an enqueue may still override queue, priority, max_attempts and timeout_seconds per run.
    The function is returned unchanged. A name registered to another function is a ValueError.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError("@pgsched.job needs the job's name: @pgsched.job('send_welcome')")
    given = {
        "queue": queue,
        "priority": priority,
        "max_attempts": max_attempts,
        "timeout_seconds": timeout_seconds,
        "retry_delay_seconds": retry_delay_seconds,
        "retry_factor": retry_factor,
        "retry_max_delay_seconds": retry_max_delay_seconds,
        "max_concurrency": max_concurrency,
    }
    defaults = {k: v for k, v in given.items() if v is not None}

    def register(function: Callable[P, R]) -> Callable[P, R]:
        registry.add(Job(name, function, _target(function), defaults))
        return function

    return register
