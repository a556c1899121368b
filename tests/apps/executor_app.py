"""Tasks for tests/test_executors.py; child processes import it as
``tests.apps.executor_app:app``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from qtasks import QTasks, Retry, current_task

app = QTasks("exec-test", broker="memory://", backend="memory://")

#: Set by the test process after import; a spawned child imports the module afresh and
#: sees the default (a forked one would see the parent's value).
MARKER = "fresh import"


@app.task(name="exec.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="exec.async_add")
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0.01)
    return x + y


@app.task(name="exec.fail")
def fail() -> None:
    raise ValueError("boom")


class CustomError(Exception):
    """Not a builtin: crosses the process boundary as a TaskError."""


@app.task(name="exec.fail_custom")
def fail_custom() -> None:
    raise CustomError("custom boom")


@app.task(name="exec.raise_timeout")
def raise_timeout() -> None:
    raise TimeoutError("the task's own timeout")


@app.task(name="exec.retry")
def retry() -> None:
    raise Retry(countdown_s=5, reason="later")


@app.task(name="exec.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="exec.async_sleep")
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.task(name="exec.sleep_pid")
def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.task(name="exec.exit")
def exit_hard(code: int = 3) -> None:
    os._exit(code)


@app.task(name="exec.context")
def context() -> list[Any]:
    ctx = current_task()
    assert ctx is not None
    return [ctx.task_id, ctx.concurrency]


@app.task(name="exec.async_context")
async def async_context() -> list[Any]:
    await asyncio.sleep(0)
    ctx = current_task()
    assert ctx is not None
    return [ctx.task_id, ctx.concurrency]


@app.task(name="exec.pid")
def pid() -> int:
    return os.getpid()


@app.task(name="exec.marker")
def marker() -> str:
    return MARKER


@app.task(name="exec.unpicklable")
def unpicklable() -> Any:
    return lambda: None
