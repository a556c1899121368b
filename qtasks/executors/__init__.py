"""Executors run task calls: in threads, in child processes, or on the worker's event loop."""

from __future__ import annotations

from qtasks.errors import ConfigError
from qtasks.executors.asyncio import AsyncioExecutor
from qtasks.executors.base import Executor, Resolver, TaskCall
from qtasks.executors.process import ProcessExecutor
from qtasks.executors.thread import ThreadExecutor

EXECUTORS: dict[str, type[Executor]] = {
    "asyncio": AsyncioExecutor,
    "process": ProcessExecutor,
    "thread": ThreadExecutor,
}


def make_executor(
    name: str, concurrency: int, resolve: Resolver, app_spec: str | None = None
) -> Executor:
    """The executor called ``name`` ("thread", "process" or "asyncio").

    ``app_spec`` (``module:attribute``) is required by "process", whose children import it.
    """
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown executor {name!r}; choose one of {', '.join(sorted(EXECUTORS))}"
        ) from None
    return cls(concurrency, resolve, app_spec)


__all__ = [
    "EXECUTORS",
    "AsyncioExecutor",
    "Executor",
    "ProcessExecutor",
    "TaskCall",
    "ThreadExecutor",
    "make_executor",
]
