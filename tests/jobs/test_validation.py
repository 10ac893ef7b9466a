"""validate_payload: a table of bad payloads per job type, each naming its field."""

from __future__ import annotations

import pytest

from pgsched.workers.jobs import InvalidPayload, execute, max_overrun_seconds, validate_payload
from tests.jobs.conftest import MakeCtx

REF = {"$secret": "TOKEN"}

BAD: list[tuple[str, dict[str, object], str]] = [
    # job type and payload shape
    ("shell", {}, "job_type"),
    ("noop", {"x": 1}, "payload.x"),
    # command
    ("command", {}, "payload.argv"),
    ("command", {"argv": []}, "payload.argv"),
    ("command", {"argv": "echo hi"}, "payload.argv"),
    ("command", {"argv": [""]}, "payload.argv[0]"),
    ("command", {"argv": [REF]}, "payload.argv[0]"),
    ("command", {"argv": ["echo", 3]}, "payload.argv[1]"),
    ("command", {"argv": ["echo", "a\x00b"]}, "payload.argv[1]"),
    ("command", {"argv": ["echo", {"$secret": "TOKEN", "x": 1}]}, "payload.argv[1]"),
    ("command", {"argv": ["echo", {"$secret": "9bad-name"}]}, "payload.argv[1]"),
    ("command", {"argv": ["true"], "env": ["A=1"]}, "payload.env"),
    ("command", {"argv": ["true"], "env": {"A-B": "1"}}, "payload.env.A-B"),
    ("command", {"argv": ["true"], "env": {"A": 1}}, "payload.env.A"),
    ("command", {"argv": ["true"], "cwd": "relative/dir"}, "payload.cwd"),
    ("command", {"argv": ["true"], "kill_after_seconds": 0}, "payload.kill_after_seconds"),
    ("command", {"argv": ["true"], "kill_after_seconds": 61}, "payload.kill_after_seconds"),
    ("command", {"argv": ["true"], "kill_after_seconds": True}, "payload.kill_after_seconds"),
    ("command", {"argv": ["true"], "shell": True}, "payload.shell"),
    # http
    ("http", {}, "payload.url"),
    ("http", {"url": 5}, "payload.url"),
    ("http", {"url": "ftp://example.com/"}, "payload.url"),
    ("http", {"url": "file:///etc/passwd"}, "payload.url"),
    ("http", {"url": "http://"}, "payload.url"),
    ("http", {"url": "http://user:pw@example.com/"}, "payload.url"),
    ("http", {"url": "https://example.com", "method": "TRACE"}, "payload.method"),
    ("http", {"url": "https://example.com", "method": 1}, "payload.method"),
    ("http", {"url": "https://example.com", "headers": ["a"]}, "payload.headers"),
    (
        "http",
        {"url": "https://example.com", "headers": {"Bad Name": "x"}},
        "payload.headers.Bad Name",
    ),
    (
        "http",
        {"url": "https://example.com", "headers": {"X-A": "a\r\nX-B: b"}},
        "payload.headers.X-A",
    ),
    (
        "http",
        {"url": "https://example.com", "headers": {"Authorization": "Bearer abc"}},
        "payload.headers.Authorization",
    ),
    (
        "http",
        {"url": "https://example.com", "headers": {"cookie": "s=1"}},
        "payload.headers.cookie",
    ),
    (
        "http",
        {"url": "https://example.com", "headers": {"X-API-KEY": "k"}},
        "payload.headers.X-API-KEY",
    ),
    (
        "http",
        {"url": "https://example.com", "headers": {"Proxy-Authorization": "p"}},
        "payload.headers.Proxy-Authorization",
    ),
    ("http", {"url": "https://example.com", "headers": {"Host": "evil"}}, "payload.headers.Host"),
    (
        "http",
        {"url": "https://example.com", "headers": {"X-A": "1", "x-a": "2"}},
        "payload.headers.x-a",
    ),
    ("http", {"url": "https://example.com", "body": 5}, "payload.body"),
    ("http", {"url": "https://example.com", "expected_status": "200"}, "payload.expected_status"),
    ("http", {"url": "https://example.com", "expected_status": 99}, "payload.expected_status"),
    ("http", {"url": "https://example.com", "expected_status": []}, "payload.expected_status"),
    (
        "http",
        {"url": "https://example.com", "expected_status": [200, 700]},
        "payload.expected_status",
    ),
    ("http", {"url": "https://example.com", "max_redirects": -1}, "payload.max_redirects"),
    ("http", {"url": "https://example.com", "max_redirects": 11}, "payload.max_redirects"),
    ("http", {"url": "https://example.com", "expected_staus": 200}, "payload.expected_staus"),
    # sql
    ("sql", {}, "payload.statement"),
    ("sql", {"statement": "  "}, "payload.statement"),
    ("sql", {"statement": REF}, "payload.statement"),
    ("sql", {"statement": "SELECT 1", "dsn": "bad name"}, "payload.dsn"),
    ("sql", {"statement": "SELECT 1", "dsn": REF}, "payload.dsn"),
    ("sql", {"statement": "SELECT %s", "params": {"a": 1}}, "payload.params"),
    ("sql", {"statement": "SELECT %s", "params": [[1]]}, "payload.params[0]"),
    ("sql", {"statement": "VACUUM", "autocommit": "yes"}, "payload.autocommit"),
    # python
    ("python", {}, "payload.target"),
    ("python", {"target": "module.function"}, "payload.target"),
    ("python", {"target": "mod:"}, "payload.target"),
    ("python", {"target": "mod:f; import os"}, "payload.target"),
    ("python", {"target": "mod:f", "kwargs": [1]}, "payload.kwargs"),
    ("python", {"target": "mod:f", "kwargs": {"class": 1}}, "payload.kwargs.class"),
    (
        "python",
        {"target": "mod:f", "kwargs": {"idempotency_key": "k"}},
        "payload.kwargs.idempotency_key",
    ),
    (
        "python",
        {"target": "mod:f", "kwargs": {"database_url": "postgresql://elsewhere"}},
        "payload.kwargs.database_url",
    ),
    ("python", {"target": "mod:f", "kwargs": {"x": {"$secret": ""}}}, "payload.kwargs.x"),
]


@pytest.mark.parametrize(("job_type", "payload", "field"), BAD, ids=[f"{t}-{f}" for t, _, f in BAD])
def test_bad_payloads_name_their_field(
    job_type: str, payload: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidPayload) as info:
        validate_payload(job_type, payload)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert "abc" not in str(info.value)  # literal credentials are not echoed back


def test_literal_authorization_is_refused_but_a_reference_is_accepted() -> None:
    with pytest.raises(InvalidPayload, match="must be a secret reference"):
        validate_payload(
            "http", {"url": "https://x.example", "headers": {"Authorization": "Bearer abc"}}
        )
    ok = validate_payload("http", {"url": "https://x.example", "headers": {"Authorization": REF}})
    assert ok["headers"] == {"Authorization": REF}


@pytest.mark.parametrize(
    ("job_type", "payload", "normalised"),
    [
        ("noop", {}, {}),
        (
            "command",
            {"argv": ["echo", REF], "env": {"A": REF}, "cwd": "/srv/jobs", "kill_after_seconds": 2},
            {"argv": ["echo", REF], "env": {"A": REF}, "cwd": "/srv/jobs", "kill_after_seconds": 2},
        ),
        (
            "http",
            {"url": "https://x.example/h", "method": "post", "expected_status": [204, 200, 204]},
            {"url": "https://x.example/h", "method": "POST", "expected_status": [200, 204]},
        ),
        ("http", {"url": REF, "body": {"k": REF}}, {"url": REF, "body": {"k": REF}}),
        (
            "sql",
            {"statement": "SELECT 1", "dsn": "reporting"},
            {"statement": "SELECT 1", "dsn": "reporting"},
        ),
        (
            "sql",
            {"statement": "SELECT %s", "params": [1, None, REF]},
            {"statement": "SELECT %s", "params": [1, None, REF]},
        ),
        (
            "python",
            {"target": "a.b:C.d", "kwargs": {"x": [REF]}},
            {"target": "a.b:C.d", "kwargs": {"x": [REF]}},
        ),
    ],
)
def test_good_payloads_are_normalised(
    job_type: str, payload: dict[str, object], normalised: dict[str, object]
) -> None:
    assert validate_payload(job_type, payload) == normalised


async def test_execute_refuses_an_invalid_payload_without_retrying(make_ctx: MakeCtx) -> None:
    outcome = await execute("command", {"argv": "rm -rf /"}, make_ctx())
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert outcome.error == "invalid payload: payload.argv: must be a non-empty list of strings"
    unknown = await execute("shell", {}, make_ctx())
    assert unknown.error is not None
    assert unknown.error.startswith("invalid payload: job_type: must be one of")


def test_max_overrun_seconds() -> None:
    assert max_overrun_seconds("command", {"argv": ["true"]}) == 5.0 + 1.0 + 1.0
    assert max_overrun_seconds("command", {"argv": ["true"], "kill_after_seconds": 30}) == 32.0
    assert max_overrun_seconds("sql", {"statement": "SELECT 1"}) == 2.0
    assert max_overrun_seconds("http", {"url": "https://x.example"}) == 1.0


async def test_noop(make_ctx: MakeCtx) -> None:
    outcome = await execute("noop", {}, make_ctx())
    assert (outcome.status, outcome.error, outcome.output) == ("succeeded", None, None)
    assert outcome.duration_ms >= 0
