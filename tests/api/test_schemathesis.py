"""Property-based conformance: schemathesis drives every operation of the live OpenAPI document.

The app runs under uvicorn (a real socket); the schema is fetched from it with an admin token.
Every operation gets generated requests (its documented examples first), and every operation
with an id in its path also gets requests aimed at rows that exist, so PATCH, trigger, retry and
friends are exercised past their 404. Checks: no 5xx, status codes, content types, headers and
bodies as documented. Hypothesis is derandomized with a fixed budget, so the run is repeatable
and bounded; the number of requests is printed.

The SSE tail (`GET /v1/events/stream`) is left out: it is endless by design (its own tests read
it with a bound, tests/api/test_events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import formats
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pgsched.app.api import create_app
from pgsched.app.db import store
from pgsched.app.services import schedules, tokens
from tests.api.conftest import serve, settings_for
from tests.conftest import connect
from tests.factories import make_schedule

EXAMPLES_PER_STRATEGY = 25

# The default date-time strategy stays in ordinary years and offsets, so it never reached the
# instants that overflowed (ADR 0014, "Bounded input"). This one mixes in the calendar's edges
# with offsets up to +-23:59, for every date-time in bodies and query parameters.
EDGE_DATE_TIMES = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00-14:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59.999999+14:00",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "8999-12-31T23:59:59.999999Z",
            "9000-01-01T00:00:00Z",
        ]
    ),
    st.builds(
        lambda at, minutes: (
            f"{at.isoformat()}{'+' if minutes >= 0 else '-'}"
            f"{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        ),
        st.datetimes(
            min_value=datetime(1, 1, 1),  # noqa: DTZ001 (wall time; the offset is appended)
            max_value=datetime(9999, 12, 31),  # noqa: DTZ001
        ),
        st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    ),
)


@contextlib.contextmanager
def _date_times(strategy: Any) -> Iterator[None]:
    """Generate `format: date-time` strings from `strategy`, then restore the default."""
    default = formats.STRING_FORMATS.get("date-time")
    schemathesis.openapi.format("date-time", strategy)
    try:
        yield
    finally:
        if default is not None:
            schemathesis.openapi.format("date-time", default)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


async def _seed(dsn: str) -> tuple[str, dict[str, int]]:
    """An admin token, two schedules, and runs in several states."""
    conn = await connect(dsn)
    try:
        _, token = await tokens.create_token(conn, name="fuzzer", role="admin", actor="t", now=None)
        first = await make_schedule(conn)
        second = await make_schedule(conn, kind="cron", interval_seconds=None, cron="*/5 * * * *")
        waiting, _ = await schedules.trigger(conn, first["id"], actor="t", now=None)
        cancelled, _ = await schedules.trigger(conn, second["id"], actor="t", now=None)
        await store.cancel_run(conn, cancelled["id"], actor="t", now=None)
        return token, {
            "schedule_id": first["id"],
            "other_schedule_id": second["id"],
            "run_id": waiting["id"],
            "cancelled_run_id": cancelled["id"],
        }
    finally:
        await conn.close()


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)
# A valid name holds no control characters (app.domain.schedule.CONTROL); any other text is fair.
_NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
_WHEN = st.one_of(
    st.fixed_dictionaries({"interval_seconds": st.integers(1, 2**31 - 1)}),
    st.fixed_dictionaries({"cron": st.sampled_from(["* * * * *", "0 9 * * MON-FRI", "@daily"])}),
)
_OPTIONAL = {
    "queue": _TEXT,
    "priority": st.integers(-32768, 32767),
    "timezone": st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    "max_attempts": st.integers(1, 100),
    "retry_backoff": st.fixed_dictionaries(
        {},
        optional={
            "delay_seconds": st.floats(0, 3600),
            "factor": st.floats(1, 10),
            "max_delay_seconds": st.floats(0, 86400),
        },
    ),
    "timeout_seconds": st.floats(0.001, 86400),
    "overlap_policy": st.sampled_from(["allow", "skip", "queue"]),
    "missed_policy": st.sampled_from(["skip", "latest", "all"]),
    "missed_cap": st.integers(1, 10_000),
    "grace_seconds": st.integers(0, 2**31 - 1),
    "max_concurrency": st.one_of(st.none(), st.integers(1, 2**31 - 1)),
    "enabled": st.booleans(),
    "jitter_seconds": st.integers(0, 3600),
}
# Valid definitions (random data almost never is one), so creations and updates succeed and
# their responses get checked too.
VALID_CREATE = st.builds(
    lambda name, when, rest: {"name": name, "job_type": "noop", **when, **rest},
    _NAME,
    _WHEN,
    st.fixed_dictionaries({}, optional=_OPTIONAL),
)
VALID_PATCH = st.builds(
    lambda when, rest: {**when, **rest},
    st.one_of(st.just({}), _WHEN),
    st.fixed_dictionaries({}, optional=_OPTIONAL),
)


def _valid_bodies(operation: Any, ids: dict[str, int]) -> list[Any]:
    key = (operation.method.upper(), operation.path)
    if key == ("POST", "/v1/schedules"):
        return [VALID_CREATE.flatmap(lambda body: operation.as_strategy(body=body))]
    if key == ("PATCH", "/v1/schedules/{schedule_id}"):
        fixed = {"schedule_id": ids["schedule_id"]}
        return [
            VALID_PATCH.flatmap(
                lambda body: operation.as_strategy(
                    body=body, path_parameters=fixed, headers={"If-Match": "*"}
                )
            )
        ]
    return []


def _fixed(operation: Any, ids: dict[str, int]) -> list[dict[str, int]]:
    names = {p.name for p in operation.path_parameters}
    if "schedule_id" in names:
        return [{"schedule_id": ids["schedule_id"]}, {"schedule_id": ids["other_schedule_id"]}]
    if "run_id" in names:
        return [{"run_id": ids["run_id"]}, {"run_id": ids["cancelled_run_id"]}]
    return []


def _exercise(strategy: Any, label: str, call: Callable[[Any, str], None]) -> Callable[[], None]:
    @settings(
        max_examples=EXAMPLES_PER_STRATEGY,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def exercise(case: Any) -> None:
        call(case, label)

    return exercise


def test_the_live_openapi_holds_under_schemathesis(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token, ids = asyncio.run(_seed(dsn))
    headers = {"Authorization": f"Bearer {token}"}
    requests = 0
    statuses: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    started = time.monotonic()
    with _date_times(EDGE_DATE_TIMES), serve(create_app(settings_for(dsn))) as server:
        schema = schemathesis.openapi.from_url(
            f"{server.url}/schema/openapi.json", headers=headers, timeout=10
        )
        operations = [result.ok() for result in schema.get_all_operations()]

        def call(case: Any, label: str) -> None:
            nonlocal requests
            requests += 1
            try:
                response = case.call_and_validate(
                    base_url=server.url, headers=headers, checks=CHECKS, timeout=10
                )
            except Exception as exc:  # every failure is reported together below
                failures.append(f"{label}: {exc}")
                return
            counts = statuses.setdefault(label, {})
            counts[response.status_code] = counts.get(response.status_code, 0) + 1

        # Deletion last, so the other operations still find the schedules it removes.
        operations.sort(key=lambda op: op.method.upper() == "DELETE")
        for operation in operations:
            if operation.path.endswith("/stream"):
                continue
            strategies = [
                operation.as_strategy(),
                *(operation.as_strategy(path_parameters=f) for f in _fixed(operation, ids)),
                *_valid_bodies(operation, ids),
            ]
            for strategy in strategies:
                _exercise(strategy, operation.label, call)()
    elapsed = time.monotonic() - started
    with capsys.disabled():  # shown on every run, not only with -s
        print(f"\nschemathesis: {requests} requests in {elapsed:.1f} s, {len(failures)} failure(s)")
        for label, counts in statuses.items():
            print(f"  {label}: {dict(sorted(counts.items()))}")
    assert not failures, "\n\n".join(failures[:10])
    # The run reached beyond the error paths: creations, updates and triggers succeeded.
    assert statuses["POST /v1/schedules"].get(201, 0) > 10, statuses["POST /v1/schedules"]
    assert statuses["PATCH /v1/schedules/{schedule_id}"].get(200, 0) > 10
    assert statuses["POST /v1/schedules/{schedule_id}/trigger"].get(201)
    assert requests > 500
    assert elapsed < 60
