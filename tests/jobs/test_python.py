"""``python`` jobs calling functions in tests/jobs/sample_jobs.py, sync and async."""

from __future__ import annotations

import asyncio

import pytest

from pgsched.workers.jobs import execute
from tests.jobs import sample_jobs
from tests.jobs.conftest import MakeCtx

MOD = "tests.jobs.sample_jobs"


@pytest.mark.parametrize("function", ["add", "async_add"])
async def test_sync_and_async_functions_with_kwargs(make_ctx: MakeCtx, function: str) -> None:
    payload = {"target": f"{MOD}:{function}", "kwargs": {"a": 2, "b": 40}}
    outcome = await execute("python", payload, make_ctx())
    assert (outcome.status, outcome.output) == ("succeeded", "42")


async def test_dotted_attribute_and_none_result(make_ctx: MakeCtx) -> None:
    payload = {"target": f"{MOD}:Greeter.hello", "kwargs": {"name": "ops"}}
    assert (await execute("python", payload, make_ctx())).output == "'hello ops'"
    none = await execute("python", {"target": f"{MOD}:returns_none"}, make_ctx())
    assert (none.status, none.output) == ("succeeded", None)


@pytest.mark.parametrize(
    ("function", "kwargs", "output"),
    [
        ("with_key", {"value": "v"}, "'v@7:2'"),
        ("async_with_key", {}, "'key=7:2'"),
        ("forwards", {"x": 1}, "['x']"),  # **kwargs alone does not ask for the key
        ("no_args", {}, "'ok'"),
    ],
)
async def test_idempotency_key_only_when_the_function_names_it(
    make_ctx: MakeCtx, function: str, kwargs: dict[str, object], output: str
) -> None:
    payload = {"target": f"{MOD}:{function}", "kwargs": kwargs}
    outcome = await execute("python", payload, make_ctx())
    assert (outcome.status, outcome.output) == ("succeeded", output)


async def test_database_url_only_when_the_function_names_it(make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    given = await execute("python", {"target": f"{MOD}:with_database"}, ctx)
    assert (given.status, given.output) == ("succeeded", repr(ctx.database_url))
    payload = {"target": f"{MOD}:forwards", "kwargs": {"x": 1}}
    assert (await execute("python", payload, ctx)).output == "['x']"


async def test_exception_is_a_retryable_failure_with_its_text(make_ctx: MakeCtx) -> None:
    payload = {"target": f"{MOD}:boom", "kwargs": {"message": "disk\nfull"}}
    outcome = await execute("python", payload, make_ctx())
    assert (outcome.status, outcome.retryable) == ("failed", True)
    assert outcome.error == "ValueError: disk full"
    assert outcome.output is not None
    assert "Traceback" in outcome.output
    assert "sample_jobs.py" in outcome.output


async def test_the_functions_own_timeout_error_is_a_failure(make_ctx: MakeCtx) -> None:
    outcome = await execute("python", {"target": f"{MOD}:own_timeout"}, make_ctx())
    assert outcome.status == "failed"
    assert outcome.error == "TimeoutError: upstream was slow"


async def test_sys_exit_reports_its_code(make_ctx: MakeCtx) -> None:
    failed = await execute("python", {"target": f"{MOD}:exits", "kwargs": {"code": 3}}, make_ctx())
    assert (failed.status, failed.exit_code) == ("failed", 3)
    ok = await execute("python", {"target": f"{MOD}:exits", "kwargs": {"code": 0}}, make_ctx())
    assert (ok.status, ok.exit_code) == ("succeeded", 0)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"target": "tests.jobs.no_such_module:f"}, "cannot import tests.jobs.no_such_module"),
        ({"target": f"{MOD}:missing"}, f"{MOD}:missing: 'missing' not found"),
        ({"target": f"{MOD}:NOT_CALLABLE"}, f"{MOD}:NOT_CALLABLE is not callable"),
        ({"target": f"{MOD}:add", "kwargs": {"a": 1}}, f"kwargs do not match {MOD}:add"),
        ({"target": f"{MOD}:make_coroutine"}, f"{MOD}:make_coroutine returned an awaitable"),
    ],
)
async def test_targets_that_cannot_be_called_are_not_retryable(
    make_ctx: MakeCtx, payload: dict[str, object], error: str
) -> None:
    outcome = await execute("python", payload, make_ctx())
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error is not None
    assert outcome.error.startswith(error)


async def test_async_function_is_cancelled_at_the_timeout(make_ctx: MakeCtx) -> None:
    payload = {"target": f"{MOD}:sleepy", "kwargs": {"seconds": 5}}
    outcome = await execute("python", payload, make_ctx(timeout_seconds=0.2))
    assert (outcome.status, outcome.retryable) == ("timeout", True)
    assert outcome.error == "timed out after 0.2 s"
    assert outcome.duration_ms < 1_000


async def test_sync_function_times_out_but_its_thread_runs_on(make_ctx: MakeCtx) -> None:
    payload = {"target": f"{MOD}:slow_sync", "kwargs": {"seconds": 0.5, "tag": "runs-on"}}
    outcome = await execute("python", payload, make_ctx(timeout_seconds=0.1))
    assert outcome.status == "timeout"
    assert outcome.error == "timed out after 0.1 s; the thread cannot be stopped and runs on"
    assert "runs-on" not in sample_jobs.calls
    for _ in range(100):
        if "runs-on" in sample_jobs.calls:
            break
        await asyncio.sleep(0.02)
    assert "runs-on" in sample_jobs.calls


async def test_cancellation_reraises(make_ctx: MakeCtx) -> None:
    payload = {"target": f"{MOD}:sleepy", "kwargs": {"seconds": 5}}
    task = asyncio.create_task(execute("python", payload, make_ctx()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_secret_kwargs_are_resolved_and_the_result_masked(make_ctx: MakeCtx) -> None:
    secret = 'it\'s a "quoted" secret'  # noqa: S105 - a test value
    ctx = make_ctx(environ={"PGSCHED_SECRET_PW": secret})
    payload = {"target": f"{MOD}:echo", "kwargs": {"value": {"pw": {"$secret": "pw"}}}}
    outcome = await execute("python", payload, ctx)
    # repr escapes the quote; the masker knows repr's spelling too
    assert outcome.output == "{'pw': '***'}"


def test_a_run_queued_under_the_old_builtin_target_loads_the_moved_function() -> None:
    # Runs queued before migration 0018 name the built-in job `app.maintenance:run_builtin`.
    from pgsched.app.maintenance import run_builtin
    from pgsched.workers.jobs.python_call import _load

    assert _load("app.maintenance:run_builtin") is run_builtin
    assert _load("pgsched.app.maintenance:run_builtin") is run_builtin
