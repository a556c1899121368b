"""What the worker does around a run: keep the delivery alive, then settle it.

A result is always stored before its message is settled (ack, nak for a retry, term for a
dead letter), so a crash in between re-runs the task; it never loses it.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

import msgspec

from qtasks.backends.base import ResultBackend
from qtasks.broker.base import Broker, Delivery
from qtasks.errors import BackendError, BrokerError, TaskError
from qtasks.message import ErrorInfo, State, TaskResult, now_s
from qtasks.metrics import TaskEvents


def error_info(exc: BaseException) -> ErrorInfo:
    """What a task's exception is stored as: type, message and traceback."""
    if isinstance(exc, TaskError):
        return ErrorInfo(exc.exc_type, exc.message, exc.traceback)
    tb = "".join(traceback.format_exception(exc))
    return ErrorInfo(type(exc).__name__, str(exc), tb)


def msgspec_replace(res: TaskResult, **changes: Any) -> TaskResult:
    """A copy of ``res`` with ``changes`` (records are frozen)."""
    return msgspec.structs.replace(res, **changes)


class Settlement:
    """Stores outcomes (retrying through a backend outage for ``result_store_retry_s``) and
    only then settles the delivery."""

    def __init__(
        self,
        backend: ResultBackend,
        broker: Broker,
        events: TaskEvents,
        *,
        result_store_retry_s: float,
    ) -> None:
        self._backend = backend
        self._broker = broker
        self.events = events
        self.result_store_retry_s = result_store_retry_s

    @staticmethod
    def failed(base: TaskResult, err: ErrorInfo) -> TaskResult:
        """``base`` as FAILURE with ``err``, finished now."""
        return msgspec_replace(base, state=State.FAILURE, error=err, finished_at=now_s())

    async def finish(self, d: Delivery, res: TaskResult, tlog: Any) -> None:
        """Store the final result, and only then ack."""
        if await self.store(res, tlog):
            await self.settle(d.ack(), tlog)
        else:
            await self.settle(d.nak(1.0), tlog)  # could not store: run again later

    async def store(self, res: TaskResult, tlog: Any) -> bool:
        """Write the result, retrying through a backend outage for a bounded time."""
        deadline = time.monotonic() + self.result_store_retry_s
        delay_s = 0.1
        while True:
            try:
                if not await self._backend.set_unless_revoked(res):
                    # Revoked meanwhile: REVOKED stays, this outcome is discarded (thread and
                    # asyncio executors cannot stop a run; it finished after the revoke).
                    tlog.info("task_result_discarded", reason="revoked", state=res.state.value)
                    self.events.event(res.task or "", res.queue or "", "revoked")
                return True
            except BackendError as e:
                if time.monotonic() + delay_s > deadline:
                    tlog.error("result_store_failed", error=str(e))
                    return False
                tlog.warning("result_store_retry", error=str(e), delay_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)

    async def settle(self, op: Any, tlog: Any) -> None:
        """Await an ack, nak or term; a failure is logged, not raised."""
        try:
            await op
        except BrokerError as e:
            # The broker redelivers after ack_wait; the stored record makes the rerun harmless.
            tlog.warning("settle_failed", error=str(e))

    async def reject(
        self, d: Delivery, base: TaskResult | None, err: ErrorInfo, tlog: Any
    ) -> None:
        """A message that must never run: store FAILURE (when it has a task id), copy it to
        the dead-letter subject with the reason, then term it."""
        reason = (
            f"{err.type}: {err.message}" if not err.message.startswith(err.type) else err.message
        )
        if base is not None and not await self.store(self.failed(base, err), tlog):
            await self.settle(d.nak(1.0), tlog)
            return
        try:
            await self._broker.dead_letter(d.queue, d.data, reason)
        except BrokerError as e:
            tlog.error("dead_letter_failed", error=str(e))
            await self.settle(d.nak(1.0), tlog)
            return
        tlog.warning("task_dead_lettered", reason=reason)
        self.events.dead_lettered(d.queue, err.type)
        await self.settle(d.term(), tlog)


class Heartbeat:
    """Keeps the ack deadline away while a task runs (only while the loop is free): an
    ``in_progress()`` every ``interval_s``. A timer, not a task per run: most tasks end
    before the first beat, and a timer costs far less to start and cancel."""

    __slots__ = ("_d", "_interval_s", "_log", "_loop", "_sending", "_stopped", "_timer")

    def __init__(self, d: Delivery, interval_s: float, log: Any) -> None:
        self._d = d
        self._interval_s = interval_s
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[None] | None = None
        self._stopped = False
        self._timer = self._loop.call_later(interval_s, self._beat)

    def _beat(self) -> None:
        self._sending = self._loop.create_task(self._send())

    async def _send(self) -> None:
        try:
            await self._d.in_progress()
        except BrokerError as e:
            self._log.warning("heartbeat_failed", error=str(e))
        if not self._stopped:
            self._timer = self._loop.call_later(self._interval_s, self._beat)

    def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        if self._sending is not None:
            self._sending.cancel()
