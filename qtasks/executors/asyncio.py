"""The asyncio executor: tasks run on the worker's own event loop.

This module's name matches the stdlib's; ``import asyncio`` below still means the stdlib
(imports are absolute), and so does every other module of the package.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from qtasks.context import reset_current_task, set_current_task
from qtasks.errors import TimeLimitExceeded
from qtasks.executors._call import wait_limited
from qtasks.executors.base import Executor, Resolver, TaskCall


class AsyncioExecutor(Executor):
    """Awaits ``async def`` tasks on the worker's loop, each in an asyncio task of its own.

    A plain (sync) function is called directly on the loop and blocks it until it returns:
    no other task, heartbeat or fetch runs meanwhile (the benchmark shows the cost). Use the
    thread or process executor for blocking code.

    ``time_limit_s``: an async task is cancelled at the limit (it gets ``CancelledError``
    at its current ``await``) and :meth:`run` raises
    :class:`~qtasks.errors.TimeLimitExceeded` without waiting for it to unwind. A sync
    function cannot be interrupted; when it returns past the limit its result is
    discarded and ``TimeLimitExceeded`` is raised.
    """

    name = "asyncio"

    def __init__(self, concurrency: int, resolve: Resolver, app_spec: str | None = None) -> None:
        super().__init__(concurrency, resolve, app_spec)
        # The loop keeps only weak references to tasks; abandoned ones must stay alive here.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._awaited: set[asyncio.Task[Any]] = set()
        """Tasks a :meth:`run` still waits for (the others were abandoned at a time limit)."""

    async def run(self, call: TaskCall, time_limit_s: float | None = None) -> Any:
        fn = self.resolve(call.task_name)
        task = asyncio.create_task(self._invoke(fn, call, time_limit_s), name=call.ctx.task_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._awaited.add(task)
        try:
            return await wait_limited(task, time_limit_s)
        finally:
            self._awaited.discard(task)

    @staticmethod
    async def _invoke(fn: Any, call: TaskCall, time_limit_s: float | None) -> Any:
        # Each asyncio task runs in its own copy of the context, so setting it here is
        # visible to this task (and what it awaits) only.
        token = set_current_task(call.ctx)
        try:
            t0 = time.monotonic()
            value = fn(*call.args, **call.kwargs)
            if inspect.isawaitable(value):
                return await value
            if time_limit_s is not None and time.monotonic() - t0 > time_limit_s:
                raise TimeLimitExceeded(time_limit_s)
            return value
        finally:
            reset_current_task(token)

    async def shutdown(self, wait: bool = True) -> None:
        """With ``wait``, let calls still awaited by :meth:`run` finish; cancel the rest.

        Abandoned calls (past their time limit) are cancelled again, not waited for: one
        that swallows ``CancelledError`` must not hold the worker's shutdown forever.
        """
        if wait and self._awaited:
            await asyncio.gather(*self._awaited, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
