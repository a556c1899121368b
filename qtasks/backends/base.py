"""The result backend interface: public behaviour here, storage in subclasses' ``_get``/``_set``."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time

from qtasks.errors import BackendError, DecodeError, ResultTimeout
from qtasks.message import ErrorInfo, State, TaskResult, decode_result, encode_result, now_s

#: A lost notification (e.g. across a server restart) costs at most this much latency.
SAFETY_RECHECK_S = 2.0


class Notification(asyncio.Event):
    """Set when a task may have reached a final state. ``record`` holds the stored result's
    bytes when the backend sent them along with the notification (saving a read), else None.
    """

    record: bytes | None = None


class ResultBackend(abc.ABC):
    """Stores each task's :class:`TaskResult` under its id, with a TTL, and wakes waiters."""

    def __init__(self, result_ttl_s: float = 86400.0) -> None:
        self.result_ttl_s = result_ttl_s

    # -- public API -------------------------------------------------------------------
    async def connect(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Open connections (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Close connections."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise BackendError when the store does not answer."""

    async def get(self, task_id: str) -> TaskResult | None:
        """The stored result, or None when nothing is known about ``task_id``."""
        data = await self._get(task_id)
        return None if data is None else decode_result(data)

    async def set(self, result: TaskResult, ttl_s: float | None = None) -> None:
        """Store ``result`` (replacing any earlier state) and wake waiters when it is final."""
        await self._set(
            result.id, encode_result(result), ttl_s or self.result_ttl_s, notify=result.ready
        )

    async def set_if_absent(
        self, result: TaskResult, ttl_s: float | None = None
    ) -> TaskResult | None:
        """Store ``result`` only when nothing is stored for its task yet.

        Returns None when it was stored, else the record already there (left unchanged).
        For a non-final ``result`` (no notification): the worker's STARTED on a first
        delivery, which then needs no separate read.
        """
        data = await self._set_if_absent(
            result.id, encode_result(result), ttl_s or self.result_ttl_s
        )
        return None if data is None else decode_result(data)

    async def delete(self, task_id: str) -> None:
        await self._delete(task_id)

    # -- revocation ---------------------------------------------------------------------
    async def set_unless_revoked(self, result: TaskResult, ttl_s: float | None = None) -> bool:
        """Store a worker's ``result`` like :meth:`set`, unless the task has been revoked:
        then nothing is written (the REVOKED record stays) and this returns False.

        Atomic with :meth:`revoke`: whichever comes second sees the first.
        """
        return await self._set_unless_revoked(
            result.id, encode_result(result), ttl_s or self.result_ttl_s, notify=result.ready
        )

    async def revoke(self, task_id: str, reason: str | None = None) -> TaskResult:
        """Mark ``task_id`` REVOKED unless it is already final; wake its waiters.

        Returns the record stored afterwards: the REVOKED one, or the final record that was
        there first (a task that finished is not revoked). Works for a task nobody has
        stored anything for yet (sent, not started), so a later delivery is never run.
        """
        message = reason or f"task {task_id} was revoked"
        for _ in range(20):
            old = await self._get(task_id)
            cur = None if old is None else decode_result(old)
            if cur is not None and cur.ready:
                return cur
            error = ErrorInfo("TaskRevoked", message)
            if cur is None:
                new = TaskResult(id=task_id, state=State.REVOKED, error=error, finished_at=now_s())
            else:
                new = _replace(
                    cur, state=State.REVOKED, result=None, error=error, finished_at=now_s()
                )
            # Compare-and-set: a worker that stored something meanwhile makes us look again.
            if await self._revoke_swap(task_id, old, encode_result(new), self.result_ttl_s):
                return new
        raise BackendError(f"task {task_id} kept changing; it was not revoked")

    async def wait(
        self, task_id: str, timeout_s: float | None, *, running: bool = False
    ) -> TaskResult:
        """Wait until the task is in a final state; raise ResultTimeout after ``timeout_s``.

        A result already final is returned from one read. Otherwise this subscribes and
        reads again before waiting, so a result stored in between is not missed. With
        ``running`` (the caller expects the task unfinished, e.g. it was sent a moment ago)
        it subscribes first and reads once: one round trip less when the guess is right,
        a subscription more when it is wrong.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not running:
            result = await self.get(task_id)
            if result is not None and result.ready:
                return result  # no subscription needed (collecting results of finished tasks)
        async with self._listen(task_id) as changed:
            pushed: TaskResult | None = None
            while True:
                result = pushed if pushed is not None else await self.get(task_id)
                pushed = None
                if result is not None and result.ready:
                    return result
                remaining = SAFETY_RECHECK_S
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ResultTimeout(f"task {task_id} not ready after {timeout_s:g} s")
                    remaining = min(remaining, left)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the event is set (CPython gh-86296).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                if isinstance(changed, Notification) and changed.record is not None:
                    record, changed.record = changed.record, None
                    with contextlib.suppress(DecodeError):  # then read it instead
                        pushed = decode_result(record)
                changed.clear()

    # -- storage, for subclasses ----------------------------------------------------------
    @abc.abstractmethod
    async def _get(self, task_id: str) -> bytes | None: ...

    @abc.abstractmethod
    async def _set(self, task_id: str, data: bytes, ttl_s: float, *, notify: bool) -> None: ...

    async def _set_if_absent(self, task_id: str, data: bytes, ttl_s: float) -> bytes | None:
        """Store ``data`` unless the key exists; return the existing bytes (None if stored).

        This default reads then writes (not atomic); backends override it with one atomic
        operation where they have one.
        """
        existing = await self._get(task_id)
        if existing is None:
            await self._set(task_id, data, ttl_s, notify=False)
        return existing

    async def _set_unless_revoked(
        self, task_id: str, data: bytes, ttl_s: float, *, notify: bool
    ) -> bool:
        """Store ``data`` unless a REVOKED record is there; False when it is.

        This default reads then writes (not atomic); backends override it atomically.
        """
        existing = await self._get(task_id)
        if existing is not None and decode_result(existing).state is State.REVOKED:
            return False
        await self._set(task_id, data, ttl_s, notify=notify)
        return True

    async def _revoke_swap(
        self, task_id: str, expected: bytes | None, data: bytes, ttl_s: float
    ) -> bool:
        """Store the REVOKED record ``data`` (and notify) only if the stored bytes are still
        ``expected`` (None: nothing stored); True when stored. Default not atomic."""
        if await self._get(task_id) != expected:
            return False
        await self._set(task_id, data, ttl_s, notify=True)
        return True

    @abc.abstractmethod
    async def _delete(self, task_id: str) -> None: ...

    @abc.abstractmethod
    def _listen(self, task_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """Context in which the returned event is set whenever ``task_id`` gets a final result.

        A :class:`Notification` may carry the final record's bytes in ``record``.

        The subscription must be active when ``__aenter__`` returns.
        """


def _replace(res: TaskResult, **changes: object) -> TaskResult:
    import msgspec

    return msgspec.structs.replace(res, **changes)
