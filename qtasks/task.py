"""Task[P, R]: a registered function that can be called locally or sent to workers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from qtasks._loop import run_sync
from qtasks.errors import Retry

if TYPE_CHECKING:
    from qtasks.app import QTasks
    from qtasks.result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A task. ``task(...)`` runs it here; ``task.delay(...)`` sends it to a worker."""

    def __init__(
        self,
        app: QTasks,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str = "default",
        max_retries: int = 0,
        retry_backoff: float | bool = True,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: tuple[type[BaseException], ...] = (),
        time_limit_s: float | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.max_retries = max_retries
        self.retry_backoff_s = float(retry_backoff) if retry_backoff is not False else 0.0
        self.retry_backoff_max_s = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.autoretry_for = autoretry_for
        self.time_limit_s = time_limit_s
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now (no broker, no result stored)."""
        return self.fn(*args, **kwargs)

    # -- sending ---------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send with these arguments; returns at once with a result handle."""
        return run_sync(self.aapply_async(args, kwargs))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Async :meth:`delay`, for callers on an event loop (FastAPI, notebooks)."""
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: float | None = None,
        expires: float | None = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncResult[R]:
        """Send with options: ``countdown`` (s from now), ``eta`` (Unix s), ``expires`` (s from
        now), ``queue``, ``headers``, and a caller-chosen ``task_id`` (resends are dropped)."""
        return run_sync(
            self.aapply_async(
                args,
                kwargs,
                task_id=task_id,
                countdown=countdown,
                eta=eta,
                expires=expires,
                queue=queue,
                headers=headers,
            )
        )

    async def aapply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: float | None = None,
        expires: float | None = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncResult[R]:
        """Async :meth:`apply_async`."""
        msg = self.app.build_message(
            self.name,
            args,
            kwargs,
            task_id=task_id,
            countdown=countdown,
            eta=eta,
            expires=expires,
            queue=queue or self.queue,
            headers=headers,
        )
        return await self.app.asend(msg)

    def map(self, items: Iterable[Any]) -> list[AsyncResult[R]]:
        """Send one task per item (each item is the single argument), publishes pipelined."""
        return run_sync(self.amap(items))

    async def amap(self, items: Iterable[Any]) -> list[AsyncResult[R]]:
        """Async :meth:`map`."""
        msgs = [self.app.build_message(self.name, [x], queue=self.queue) for x in items]
        return await self.app.asend_many(msgs)

    def starmap(self, arg_tuples: Iterable[Iterable[Any]]) -> list[AsyncResult[R]]:
        """Send one task per argument tuple, publishes pipelined."""
        msgs = [self.app.build_message(self.name, a, queue=self.queue) for a in arg_tuples]
        return run_sync(self.app.asend_many(msgs))

    # -- retries ---------------------------------------------------------------------------------
    def retry(self, countdown: float | None = None, exc: BaseException | None = None) -> Retry:
        """Build the exception to ``raise`` from inside the task to run it again later."""
        return Retry(
            countdown_s=countdown, reason=None if exc is None else f"{type(exc).__name__}: {exc}"
        )

    def should_retry(self, exc: BaseException, retries_so_far: int) -> bool:
        """Whether a run that raised ``exc`` gets another attempt."""
        if retries_so_far >= self.max_retries:
            return False
        if isinstance(exc, Retry):
            return True
        return not self.autoretry_for or isinstance(exc, self.autoretry_for)

    def backoff_s(self, retries_so_far: int) -> float:
        """Delay before retry number ``retries_so_far + 1``: exponential, capped, jittered."""
        if self.retry_backoff_s <= 0:
            return 0.0
        delay: float = min(self.retry_backoff_max_s, self.retry_backoff_s * 2**retries_so_far)
        if self.retry_jitter:
            # Half fixed, half random: delays still grow, but retries of many tasks spread out.
            delay = delay / 2 + random.uniform(0, delay / 2)
        return delay
