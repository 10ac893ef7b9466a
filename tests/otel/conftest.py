"""Fixtures for the telemetry tests: an OTLP receiver, this process's telemetry pointed at it,
the API on the test database, and a worker in-process."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from pgsched import otel
from pgsched.app.api import create_app
from pgsched.otel.config import TelemetryConfig
from pgsched.workers.worker import Executor, Worker
from tests.api.conftest import (  # noqa: F401 - fixtures shared with the API tests
    Tokens,
    auth,
    db,
    role_tokens,
    settings_for,
)
from tests.otel.receiver import Receiver, otlp_receiver
from tests.support import worker as support


def promtool() -> str | None:
    """promtool's path, if installed (Debian's prometheus package; scripts/setup test installs
    it). CI sets PGSCHED_REQUIRE_PROMTOOL=1, so there its absence fails instead of silently
    leaving the rule and exposition checks out."""
    path = shutil.which("promtool")
    if path is None and os.environ.get("PGSCHED_REQUIRE_PROMTOOL") == "1":
        pytest.fail(
            "promtool not installed (PGSCHED_REQUIRE_PROMTOOL=1): apt-get install prometheus"
        )
    return path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as r:
        yield r


@pytest.fixture
def telemetry(receiver: Receiver) -> Iterator[otel.Telemetry]:
    config = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            # Exports happen when the test flushes, not on a timer.
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        },
        "run",
        metrics_port=0,
    )
    tel = otel.setup(config)
    try:
        yield tel
    finally:
        otel.shutdown()


@pytest.fixture
async def traced_api(
    dsn: str,
    telemetry: otel.Telemetry,
    role_tokens: Tokens,  # noqa: F811
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The API made after telemetry is set up (its plugin takes the tracer provider then)."""
    app = create_app(settings_for(dsn, metrics_sample_seconds=0.2))
    async with AsyncTestClient(app=app) as client:
        yield client


def running_worker(
    dsn: str,
    environ: dict[str, str] | None = None,
    executor: Executor | None = None,
    **settings: Any,
) -> contextlib.AbstractAsyncContextManager[Worker]:
    """`tests.support.worker.running_worker` with two slots polling every 0.1 s."""
    return support.running_worker(
        dsn, environ=environ, executor=executor, **{"slots": 2, "poll_seconds": 0.1, **settings}
    )
