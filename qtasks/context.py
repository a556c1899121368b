"""The running task's context, readable from inside a task (like Celery's ``self.request``)."""

from __future__ import annotations

import contextvars

import msgspec


class TaskContext(msgspec.Struct, frozen=True):
    """What a running task may know about itself. Plain data, so it crosses into child processes."""

    task_id: str
    task_name: str
    queue: str = "default"
    attempt: int = 1
    """1 on the first run; each retry or redelivery adds one."""
    retries: int = 0
    """How many times this task already asked to be retried."""
    concurrency: int = 1
    """How many tasks the worker runs at once (size thread pools, e.g. Aer's, from it)."""
    executor: str = "thread"
    worker: str = ""
    headers: dict[str, str] = {}


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "qtasks_current_task", default=None
)


def current_task() -> TaskContext | None:
    """The context of the task running in this thread/process, or None outside a worker."""
    return _current.get()


def set_current_task(ctx: TaskContext | None) -> contextvars.Token[TaskContext | None]:
    return _current.set(ctx)


def reset_current_task(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)
