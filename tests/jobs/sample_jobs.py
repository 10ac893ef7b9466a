"""Callables for the ``python`` job type's tests, named ``tests.jobs.sample_jobs:NAME``."""

from __future__ import annotations

import asyncio
import sys
import time

NOT_CALLABLE = 42
calls: list[str] = []  # what slow_sync recorded, to show a timed-out thread runs on


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def with_key(value: str, idempotency_key: str) -> str:
    return f"{value}@{idempotency_key}"


async def async_with_key(*, idempotency_key: str) -> str:
    await asyncio.sleep(0)
    return f"key={idempotency_key}"


async def with_database(*, database_url: str) -> str:
    """Declares database_url: the worker passes its own (how run_builtin connects)."""
    return database_url


def forwards(**kwargs: object) -> list[str]:
    """Takes **kwargs but no idempotency_key parameter: the key must not be passed."""
    return sorted(kwargs)


def no_args() -> str:
    return "ok"


def returns_none() -> None:
    return None


def boom(message: str) -> None:
    raise ValueError(message)


def own_timeout() -> None:
    raise TimeoutError("upstream was slow")


def exits(code: int) -> None:
    sys.exit(code)


async def sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


def slow_sync(seconds: float, tag: str) -> str:
    time.sleep(seconds)
    calls.append(tag)
    return "done"


def echo(value: object) -> object:
    return value


class Greeter:
    @staticmethod
    def hello(name: str) -> str:
        return f"hello {name}"


def make_coroutine() -> object:
    """A sync function returning an awaitable: a mistake the job type reports."""
    return sleepy(0)
