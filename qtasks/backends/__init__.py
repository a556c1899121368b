"""Result backends: where task states and results live, and how waiters are woken."""

from qtasks.backends.base import ResultBackend
from qtasks.backends.memory import MemoryBackend
from qtasks.backends.redis import RedisBackend

__all__ = ["MemoryBackend", "RedisBackend", "ResultBackend"]
