"""The in-memory result backend: RedisBackend's semantics in a dict, for tests and eager mode."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

from qtasks.backends.base import ResultBackend
from qtasks.message import State, decode_result

#: Expired entries nobody reads again are swept at most this often, on a write.
_SWEEP_INTERVAL_S = 60.0


class _Listener:
    """A waiter's event and the loop it waits on (a waker may run on another loop/thread)."""

    __slots__ = ("event", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        """Set the event; call from a coroutine (on any loop)."""
        if asyncio.get_running_loop() is self.loop:
            self.event.set()
        else:
            # asyncio.Event is not thread-safe: set it from its own loop.
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self.event.set)


class MemoryBackend(ResultBackend):
    """Results in a dict, with the same semantics as :class:`RedisBackend`.

    TTLs are honoured (measured with ``time.monotonic``; an expired result reads as None) and
    waiters are woken when a final result is stored. One instance may be shared by event
    loops in several threads (the sync bridge and a caller's loop): a guard lock protects the
    dicts and each waiter is woken on its own loop. Data lives as long as the instance;
    :meth:`close` keeps it, because other loops may still use it.
    """

    def __init__(self, result_ttl_s: float = 86400.0) -> None:
        super().__init__(result_ttl_s)
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[bytes, float]] = {}
        """task id -> (result bytes, expiry as time.monotonic() seconds)"""
        self._listeners: dict[str, set[_Listener]] = {}
        self._next_sweep_s = time.monotonic() + _SWEEP_INTERVAL_S

    async def ping(self) -> None:
        """Always answers."""

    async def _get(self, task_id: str) -> bytes | None:
        now_s = time.monotonic()
        with self._guard:
            entry = self._entries.get(task_id)
            if entry is None:
                return None
            data, expires_s = entry
            if expires_s <= now_s:
                del self._entries[task_id]
                return None
            return data

    async def _set(self, task_id: str, data: bytes, ttl_s: float, *, notify: bool) -> None:
        now_s = time.monotonic()
        with self._guard:
            self._entries[task_id] = (data, now_s + ttl_s)
            if now_s >= self._next_sweep_s:
                self._sweep(now_s)
            listeners = list(self._listeners.get(task_id, ())) if notify else []
        for listener in listeners:
            listener.wake()

    async def _set_unless_revoked(
        self, task_id: str, data: bytes, ttl_s: float, *, notify: bool
    ) -> bool:
        now_s = time.monotonic()
        with self._guard:
            entry = self._entries.get(task_id)
            if entry is not None and entry[1] > now_s and _is_revoked(entry[0]):
                return False
            self._entries[task_id] = (data, now_s + ttl_s)
            listeners = list(self._listeners.get(task_id, ())) if notify else []
        for listener in listeners:
            listener.wake()
        return True

    async def _revoke_swap(
        self, task_id: str, expected: bytes | None, data: bytes, ttl_s: float
    ) -> bool:
        now_s = time.monotonic()
        with self._guard:
            entry = self._entries.get(task_id)
            current = entry[0] if entry is not None and entry[1] > now_s else None
            if current != expected:
                return False
            self._entries[task_id] = (data, now_s + ttl_s)
            listeners = list(self._listeners.get(task_id, ()))
        for listener in listeners:
            listener.wake()
        return True

    async def _delete(self, task_id: str) -> None:
        with self._guard:
            self._entries.pop(task_id, None)

    @contextlib.asynccontextmanager
    async def _listen(self, task_id: str) -> AsyncIterator[asyncio.Event]:
        listener = _Listener()
        with self._guard:
            self._listeners.setdefault(task_id, set()).add(listener)
        try:
            yield listener.event
        finally:
            with self._guard:
                listeners = self._listeners.get(task_id)
                if listeners is not None:
                    listeners.discard(listener)
                    if not listeners:
                        del self._listeners[task_id]

    def _sweep(self, now_s: float) -> None:
        """Drop expired entries; hold ``_guard``."""
        for task_id in [k for k, (_, exp_s) in self._entries.items() if exp_s <= now_s]:
            del self._entries[task_id]
        self._next_sweep_s = now_s + _SWEEP_INTERVAL_S


def _is_revoked(data: bytes) -> bool:
    return decode_result(data).state is State.REVOKED
