"""Every exception qtasks raises, under one root.

::

    QTasksError
    ├── ConfigError              bad settings value or file
    ├── DecodeError              bytes that are not a valid message or result
    ├── TaskNotRegistered        a task name no worker knows
    ├── BrokerError              NATS/JetStream failures (connect, publish, fetch)
    │   └── MessageTooLarge      a message above the server's max_payload
    ├── BackendError             Redis failures
    ├── ResultTimeout            get()/aget() ran out of time (also a TimeoutError)
    ├── TaskError                a task failed remotely: remote type, message, traceback
    │   ├── TimeLimitExceeded    a task ran past its time_limit
    │   ├── TaskRevoked          a task was cancelled before it finished
    │   └── ChildProcessDied     the executor's child process died during the call
    └── Retry                    raised by a task to ask for another attempt

NATS and Redis exceptions are mapped to ``BrokerError`` and ``BackendError`` at the
boundary (the broker and backend modules), so callers catch ours only.
"""

from __future__ import annotations

import signal


class QTasksError(Exception):
    """Root of every qtasks exception."""


class ConfigError(QTasksError):
    """A settings file or value is invalid."""


class DecodeError(QTasksError):
    """Bytes could not be decoded into a message or result."""


class TaskNotRegistered(QTasksError):
    """No task with this name is registered in the app."""


class BrokerError(QTasksError):
    """The message broker failed (connection, publish, fetch, ack)."""


class MessageTooLarge(BrokerError):
    """An encoded message is larger than the broker accepts."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"message of {size_bytes} bytes exceeds the broker's limit of {limit_bytes} bytes"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class BackendError(QTasksError):
    """The result backend failed."""


class ResultTimeout(QTasksError, TimeoutError):
    """The result was not ready within the timeout."""


class TaskError(QTasksError):
    """A task raised in the worker; carries the remote exception's details."""

    def __init__(self, exc_type: str, message: str, traceback: str | None = None) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback


class TimeLimitExceeded(TaskError):
    """A task ran longer than its time limit."""

    def __init__(self, time_limit_s: float) -> None:
        super().__init__("TimeLimitExceeded", f"task exceeded its time limit of {time_limit_s:g} s")
        self.time_limit_s = time_limit_s


class TaskRevoked(TaskError):
    """A task was revoked before it finished."""

    def __init__(self, task_id: str) -> None:
        super().__init__("TaskRevoked", f"task {task_id} was revoked")


class ChildProcessDied(TaskError):
    """The child process running a task died before replying (``os._exit``, a crash, OOM kill).

    ``exitcode`` follows :attr:`multiprocessing.Process.exitcode`: negative for a signal,
    None if it could not be read.
    """

    def __init__(
        self, exitcode: int | None, pid: int | None = None, during: str = "the task"
    ) -> None:
        if exitcode is None:
            how = "with an unknown exit code"
        elif exitcode < 0:
            how = f"killed by signal {_signal_name(-exitcode)} (exit code {exitcode})"
        else:
            how = f"with exit code {exitcode}"
        who = "child process" if pid is None else f"child process {pid}"
        super().__init__("ChildProcessDied", f"{who} died during {during}, {how}")
        self.exitcode = exitcode
        self.pid = pid


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class Retry(QTasksError):
    """Raise from inside a task (``raise Retry(countdown_s=5)``) to run it again later."""

    def __init__(self, countdown_s: float | None = None, reason: str | None = None) -> None:
        super().__init__(reason or "retry requested")
        self.countdown_s = countdown_s
        self.reason = reason
