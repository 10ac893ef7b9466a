"""Log lines: JSON for collectors, readable text on a terminal, both with trace and run ids.

The JSON shape is the one collectors expect (`timestamp`, `service`, `level`, `message`, then the
identifiers of what the line is about): here `trace_id`/`span_id` of the current span, and
`run_id`, `schedule`, `queue`, `attempt` while a worker runs a job (set by `otel.runs`). Known
secret values (the worker's `PGSCHED_SECRET_*`) are masked in every line, whatever code wrote
it: a job's error text is masked before it is stored, but a log line can come from anywhere.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, TextIO

from pgsched.otel.config import TelemetryConfigError
from pgsched.otel.spans import current_ids

# What the current task is about (a worker's job task sets it): merged into every log line.
LOG_FIELDS: ContextVar[Mapping[str, object] | None] = ContextVar("pgsched_log_fields", default=None)

# The line per run transition (otel.runs, app.services.runs) and per tick (otel.runs).
RUN_LOGGERS: Final = ("pgsched.runs", "pgsched.ticks")

MASK: Final = "***"
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class Redactor:
    """Replaces known secret values in text. Values shorter than 4 characters are ignored
    (masking "a" everywhere would mangle every line and protect nothing)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Redactor:
        return cls(v for k, v in env.items() if k.startswith("PGSCHED_SECRET_"))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


_redactor = Redactor()


def set_redactor(redactor: Redactor) -> None:
    global _redactor  # noqa: PLW0603 - one per process, like the logging configuration
    _redactor = redactor


def redact(text: str) -> str:
    return _redactor(text)


def _context(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {}
    ids = current_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    fields.update(LOG_FIELDS.get() or {})
    # Extra fields given to the call (`log.info(..., extra={"run_id": 3})`) win.
    fields.update(
        {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    )
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """`2026-11-23 14:00:00,123 INFO pgsched.worker: message  run_id=3 trace_id=…`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _context(record)
        if fields:
            text += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        return redact(text)


def configure_logging(
    service: str,
    *,
    level: str = "INFO",
    fmt: str = "auto",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    run_level: str | None = None,
) -> logging.Handler:
    """Route the root logger to `stream` (stderr) as JSON, or as text on a terminal.

    `fmt` is json, text or auto (text when the stream is a TTY). Replaces handlers an earlier
    call installed, so calling it twice does not double every line. `run_level` is the level of
    the line per run transition and per tick (RUN_LOGGERS; None: `level`'s), which an operator
    turns down apart from the rest.
    """
    stream = stream or sys.stderr
    if fmt not in ("auto", "json", "text"):
        raise TelemetryConfigError(f"PGSCHED_LOG_FORMAT must be auto, json or text, got {fmt!r}")
    as_text = fmt == "text" or (fmt == "auto" and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if as_text else JsonFormatter(service))
    handler.set_name("pgsched")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "pgsched"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in RUN_LOGGERS:
        logging.getLogger(name).setLevel(run_level.upper() if run_level else logging.NOTSET)
    if env is not None:
        set_redactor(Redactor.from_env(env))
    return handler
