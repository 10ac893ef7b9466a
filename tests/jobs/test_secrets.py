"""Secret references: resolution, the environment namespace, and masking in outcomes."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from pgsched.workers.jobs import MAX_OUTPUT_BYTES, MissingSecret, Outcome, env_var, execute, resolve
from pgsched.workers.jobs.secretrefs import Masker, secret_names
from tests.jobs.conftest import MakeCtx

SECRET = "S3cr3t-VaLuE-4242"  # noqa: S105 - a test value
ENV = {"PATH": "/usr/bin:/bin", "PGSCHED_SECRET_TOKEN": SECRET, "PGSCHED_SECRET_OTHER": "o-val"}


def test_resolution_walks_nested_objects_and_lists() -> None:
    payload = {
        "argv": ["x", {"$secret": "TOKEN"}],
        "env": {"A": {"$secret": "other"}, "B": "plain"},
        "deep": [[{"k": {"$secret": "TOKEN"}}]],
        "not_a_ref": {"$secret": "TOKEN", "extra": 1},  # two keys: left alone
        "number": 3,
    }
    before = copy.deepcopy(payload)
    resolved, values = resolve(payload, ENV)
    assert resolved == {
        "argv": ["x", SECRET],
        "env": {"A": "o-val", "B": "plain"},
        "deep": [[{"k": SECRET}]],
        "not_a_ref": {"$secret": "TOKEN", "extra": 1},
        "number": 3,
    }
    assert sorted(values) == sorted([SECRET, "o-val", SECRET])
    assert payload == before  # the input is not changed
    assert secret_names(payload) == {"TOKEN", "other"}


def test_names_are_upper_cased_under_the_prefix_only() -> None:
    assert env_var("slack_hook") == "PGSCHED_SECRET_SLACK_HOOK"
    # A payload cannot reach the worker's other variables by name.
    with pytest.raises(MissingSecret, match="secret DATABASE_URL is not set"):
        resolve({"x": {"$secret": "DATABASE_URL"}}, {"DATABASE_URL": "postgresql://x"})


def test_missing_and_empty_secrets() -> None:
    with pytest.raises(MissingSecret) as info:
        resolve([{"$secret": "nope"}], ENV)
    assert (str(info.value), info.value.name) == ("secret nope is not set", "nope")
    with pytest.raises(MissingSecret, match="secret EMPTY is empty"):
        resolve({"$secret": "EMPTY"}, {"PGSCHED_SECRET_EMPTY": ""})


async def test_missing_secret_fails_without_running(make_ctx: MakeCtx, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = {"argv": ["touch", str(marker)], "env": {"T": {"$secret": "NOPE"}}}
    outcome = await execute("command", payload, make_ctx(environ=ENV))
    assert not marker.exists()
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error == "secret NOPE is not set"
    assert outcome.exit_code is None


async def test_secret_in_argv_echoed_by_a_command_is_masked(make_ctx: MakeCtx) -> None:
    payload = {"argv": ["echo", "token:", {"$secret": "TOKEN"}]}
    outcome = await execute("command", payload, make_ctx(environ=ENV))
    assert outcome.output == "token: ***\n"
    assert SECRET not in json.dumps(outcome.as_json())


async def test_secret_in_env_printed_to_stderr_and_error_is_masked(make_ctx: MakeCtx) -> None:
    payload = {
        "argv": ["sh", "-c", 'echo "$TOKEN" >&2; exit 1'],
        "env": {"TOKEN": {"$secret": "TOKEN"}},
    }
    outcome = await execute("command", payload, make_ctx(environ=ENV))
    assert (outcome.status, outcome.output) == ("failed", "***\n")
    assert SECRET not in json.dumps(outcome.as_json())


LONG = "L0ng-" + "0123456789abcdef" * 3 + "-end-of-secret"  # longer than any marker slack


@pytest.mark.parametrize("k", range(1, 64, 9))
async def test_a_secret_cut_by_the_output_limit_is_not_half_shown(
    make_ctx: MakeCtx, k: int
) -> None:
    # One secret straddles the end of the kept head (2 KiB), another the start of the kept
    # tail, k bytes on the dropped side. Masking must see them whole before clipping.
    head, tail = 2_048, MAX_OUTPUT_BYTES - 2_048
    n = len(LONG)
    script = (
        "import os, sys; s = os.environ['T']; "
        f"sys.stdout.write('h' * {head - k} + s + 'm' * 20000 + s + 't' * {tail - n + k})"
    )
    env = {**ENV, "PGSCHED_SECRET_LONG": LONG}
    payload = {"argv": [sys.executable, "-c", script], "env": {"T": {"$secret": "LONG"}}}
    outcome = await execute("command", payload, make_ctx(environ=env))
    assert outcome.output is not None
    assert len(outcome.output.encode()) <= MAX_OUTPUT_BYTES
    assert not any(LONG[i : i + 4] in outcome.output for i in range(n - 3))


def test_masker_spellings_and_longest_first() -> None:
    masker = Masker(["ab", 'x"y\\z', "a b/c"])
    assert masker.mask("ab abc") == "*** ***c"
    assert masker.mask(json.dumps({"v": 'x"y\\z'})) == '{"v": "***"}'
    assert masker.mask(repr('x"y\\z')) == "'***'"
    assert masker.mask("q=a%20b%2Fc") == "q=***"
    assert Masker(["abc", "abcdef"]).mask("abcdef abc") == "*** ***"
    assert Masker([]).mask("unchanged") == "unchanged"
    assert Masker(["x" * 10]).margin == 10


def test_outcome_json_shape() -> None:
    outcome = Outcome("failed", retryable=True, error="e", exit_code=1, duration_ms=1.23456)
    assert outcome.as_json() == {
        "status": "failed",
        "retryable": True,
        "error": "e",
        "exit_code": 1,
        "http_status": None,
        "output": None,
        "duration_ms": 1.235,
    }
