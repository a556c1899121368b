"""Helpers the executors share: call a task function with its context, wait with a limit."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from qtasks.context import TaskContext, reset_current_task, set_current_task
from qtasks.errors import TimeLimitExceeded

T = TypeVar("T")


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def call_in_context(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], ctx: TaskContext
) -> Any:
    """Call ``fn`` with ``ctx`` as the current task, in this thread; no event loop may run here.

    An ``async def`` task (or any awaitable result) is run to completion with
    :func:`asyncio.run`, which copies the current context, so the task sees ``ctx`` too.
    """
    token = set_current_task(ctx)
    try:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(value if inspect.iscoroutine(value) else _await(value))
        return value
    finally:
        reset_current_task(token)


async def wait_limited(fut: asyncio.Future[T], time_limit_s: float | None) -> T:
    """Await ``fut``; past ``time_limit_s`` cancel it and raise :class:`TimeLimitExceeded`.

    Unlike :func:`asyncio.wait_for` this never confuses a ``TimeoutError`` raised *by the
    task* with the limit, and does not wait for the cancelled work to finish.
    """
    if time_limit_s is None:
        return await fut
    try:
        done, _ = await asyncio.wait({fut}, timeout=time_limit_s)
    except asyncio.CancelledError:
        fut.cancel()
        raise
    if not done:
        fut.cancel()
        raise TimeLimitExceeded(time_limit_s)
    return fut.result()
