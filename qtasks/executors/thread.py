"""The thread executor: task functions run in a pool of threads of the worker process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qtasks.errors import TimeLimitExceeded
from qtasks.executors._call import call_in_context, wait_limited
from qtasks.executors.base import Executor, Resolver, TaskCall


class ThreadExecutor(Executor):
    """Runs each call in a :class:`~concurrent.futures.ThreadPoolExecutor` of ``concurrency``
    threads (named ``qtasks-task-N``).

    Right for I/O-bound tasks and code that releases the GIL; code that holds the GIL
    (Qiskit Aer while it simulates) freezes the worker's event loop while it runs.
    An ``async def`` task runs with :func:`asyncio.run` in its thread, on a loop of its own.

    ``time_limit_s`` is soft: :meth:`run` raises :class:`~qtasks.errors.TimeLimitExceeded`
    once the limit passes, but a thread cannot be killed, so the call keeps running in the
    background until it returns on its own and its result is discarded. Its thread is not
    counted against ``concurrency`` any more (the pool is replaced, see :meth:`run`); a call
    that never returns keeps its thread, and the process cannot exit cleanly, for good.
    """

    name = "thread"

    def __init__(self, concurrency: int, resolve: Resolver, app_spec: str | None = None) -> None:
        super().__init__(concurrency, resolve, app_spec)
        self._pool: ThreadPoolExecutor | None = None
        self._handback: _Handback | None = None

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="qtasks-task")

    async def start(self) -> None:
        if self._pool is None:
            self._pool = self._new_pool()

    async def run(self, call: TaskCall, time_limit_s: float | None = None) -> Any:
        fn = self.resolve(call.task_name)
        if self._pool is None:
            await self.start()
        pool = self._pool
        assert pool is not None
        loop = asyncio.get_running_loop()
        if self._handback is None or self._handback.loop is not loop:
            self._handback = _Handback(loop)
        # The pool's threads do not inherit our context: call_in_context sets it in the thread.
        fut = self._handback.submit(pool, call_in_context, fn, call.args, call.kwargs, call.ctx)
        try:
            return await wait_limited(fut, time_limit_s)
        except (TimeLimitExceeded, asyncio.CancelledError):
            self._retire(pool)
            raise

    def _retire(self, pool: ThreadPoolExecutor) -> None:
        """Give later calls a fresh pool: the abandoned call still holds a thread of ``pool``,
        and without this the next call would queue behind it while the worker thinks a slot
        is free."""
        if pool is self._pool:
            self._pool = self._new_pool()
            # Threads of a shut-down pool finish what they run, then exit.
            pool.shutdown(wait=False)

    async def shutdown(self, wait: bool = True) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if wait:
            # Blocking join: off the event loop. Abandoned calls are not waited for.
            await asyncio.to_thread(pool.shutdown, wait=True)
        else:
            pool.shutdown(wait=False, cancel_futures=True)


class _Handback:
    """Hands finished calls back to the event loop in batches.

    ``run_in_executor`` wakes the loop once per finished call (a self-pipe write each) and
    resumes each caller in an iteration of its own. Here the calls that finish while the loop
    is busy share one wake-up and resume together, so the worker's result writes that
    follow go to Redis as one pipeline.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], concurrent.futures.Future[Any]]] = []

    def submit(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> asyncio.Future[Any]:
        waiter: asyncio.Future[Any] = self.loop.create_future()
        work = pool.submit(fn, *args)
        # Cancelled by the caller (time limit, revoke): a call not started yet never starts.
        waiter.add_done_callback(lambda w: work.cancel() if w.cancelled() else None)
        work.add_done_callback(lambda w: self._finished(waiter, w))
        return waiter

    def _finished(
        self, waiter: asyncio.Future[Any], work: concurrent.futures.Future[Any]
    ) -> None:  # in the pool's thread
        with self._lock:
            self._done.append((waiter, work))
            if len(self._done) > 1:
                return  # a wake-up is already on its way
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # on the loop
        with self._lock:
            done, self._done = self._done, []
        for waiter, work in done:
            if waiter.done():
                continue
            if work.cancelled():
                waiter.cancel()
            elif (exc := work.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(work.result())
