"""qtasks: a Celery-style task framework on NATS JetStream, with results in Redis."""

from qtasks.app import QTasks, load_app
from qtasks.config import Settings, load_settings
from qtasks.context import TaskContext, current_task
from qtasks.errors import (
    BackendError,
    BrokerError,
    ChildProcessDied,
    ConfigError,
    DecodeError,
    MessageTooLarge,
    QTasksError,
    ResultTimeout,
    Retry,
    TaskError,
    TaskNotRegistered,
    TaskRevoked,
    TimeLimitExceeded,
)
from qtasks.message import State, TaskMessage, TaskResult
from qtasks.result import AsyncResult
from qtasks.task import Task

__all__ = [
    "AsyncResult",
    "BackendError",
    "BrokerError",
    "ChildProcessDied",
    "ConfigError",
    "DecodeError",
    "MessageTooLarge",
    "QTasks",
    "QTasksError",
    "ResultTimeout",
    "Retry",
    "Settings",
    "State",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskMessage",
    "TaskNotRegistered",
    "TaskResult",
    "TaskRevoked",
    "TimeLimitExceeded",
    "current_task",
    "load_app",
    "load_settings",
]
