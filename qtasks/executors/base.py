"""The executor interface: run one task call somewhere (thread, child process, the loop)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import msgspec

from qtasks.context import TaskContext

#: Finds the plain function of a registered task by name (raises TaskNotRegistered).
Resolver = Callable[[str], Callable[..., Any]]


class TaskCall(msgspec.Struct, frozen=True):
    """Plain data for one run: enough to find and call the task anywhere."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    ctx: TaskContext


class Executor(abc.ABC):
    """Runs task calls. Concurrency is bounded by the worker's semaphore, not here.

    ``app_spec`` (``module:attribute``) lets executors in other processes import the app
    and resolve the task by name; in-process executors use ``resolve`` directly.
    """

    name: str = "abstract"

    def __init__(self, concurrency: int, resolve: Resolver, app_spec: str | None = None) -> None:
        self.concurrency = concurrency
        self.resolve = resolve
        self.app_spec = app_spec

    async def start(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Warm up (start threads or child processes)."""

    @abc.abstractmethod
    async def run(self, call: TaskCall, time_limit_s: float | None = None) -> Any:
        """Run the call and return its result, or raise what it raised.

        Past ``time_limit_s`` raise :class:`~qtasks.errors.TimeLimitExceeded`.
        """

    async def shutdown(self, wait: bool = True) -> None:  # noqa: B027 - optional hook
        """Release threads/processes; with ``wait``, let running calls finish first."""
