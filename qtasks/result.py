"""AsyncResult: a handle on a sent task's state and outcome."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog

from qtasks._loop import run_sync
from qtasks.errors import BackendError, TaskError, TaskRevoked, TimeLimitExceeded
from qtasks.message import READY_STATES, State, TaskResult

if TYPE_CHECKING:
    from qtasks.app import QTasks

R = TypeVar("R")

log = structlog.get_logger("qtasks.result")

#: Pause between attempts to wait again while the backend is unreachable.
_OUTAGE_RETRY_S = 0.25
#: A result asked for this soon after its task was sent (by this handle) is expected to be
#: unfinished: no task completes faster than a broker and a backend round trip, and most
#: take far longer. A wrong guess costs one SUBSCRIBE/UNSUBSCRIBE, not a wrong answer.
_JUST_SENT_S = 0.05


class AsyncResult(Generic[R]):
    """The state and result of task ``task_id``. An unknown id reads as PENDING."""

    def __init__(self, task_id: str, app: QTasks, *, sent_at: float | None = None) -> None:
        self.id = task_id
        self.app = app
        self._sent_at = sent_at
        """When this process sent the task (monotonic seconds), if it did."""

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    @property
    def task_id(self) -> str:
        return self.id

    # -- async ------------------------------------------------------------------------------
    async def ainfo(self) -> TaskResult | None:
        """The stored record (state, result or error, timings), or None if nothing is stored."""
        return await (await self.app.backend()).get(self.id)

    async def astate(self) -> State:
        info = await self.ainfo()
        return State.PENDING if info is None else info.state

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the outcome, at most ``timeout`` seconds (ResultTimeout after that).

        A failed task raises :class:`TaskError` with the remote type, message and traceback
        (or returns it when ``propagate`` is False). A backend outage (a Redis restart) is
        ridden through until ``timeout``; :class:`BackendError` only when it outlasts it.
        """
        info = await self._wait_final(timeout)
        value: R = self._outcome(info, propagate)
        return value

    async def _wait_final(self, timeout_s: float | None) -> TaskResult:
        """The backend's ``wait``, started again after each ``BackendError`` until the deadline:
        the backend itself gives up after a few seconds of outage, a caller's timeout may be
        much longer."""
        backend = await self.app.backend()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Sent a moment ago: most likely still running, so subscribe before the first read.
        running = self._sent_at is not None and time.monotonic() - self._sent_at < _JUST_SENT_S
        outage_since: float | None = None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                info = await backend.wait(self.id, left, running=running)
            except BackendError as e:
                if deadline is not None and time.monotonic() + _OUTAGE_RETRY_S >= deadline:
                    raise
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.debug("result_backend_unavailable", task_id=self.id, error=str(e))
                await asyncio.sleep(_OUTAGE_RETRY_S)
                continue
            if outage_since is not None:
                log.debug(
                    "result_backend_restored",
                    task_id=self.id,
                    down_s=round(time.monotonic() - outage_since, 3),
                )
            return info

    async def arevoke(self, terminate: bool = True, reason: str | None = None) -> State:
        """Cancel the task: it is marked REVOKED unless it already finished.

        Not started yet: it will never run (a worker acks its message without running it).
        Running, with ``terminate``: every worker is told; one running it in the process
        executor kills the child (the slot gets a fresh one), the asyncio executor cancels
        it at its next ``await``; a thread cannot be stopped, so the thread executor lets it
        finish and discards the result. In every case the state stays REVOKED and
        :meth:`get` raises :class:`~qtasks.errors.TaskRevoked`.

        Returns the state afterwards: REVOKED, or SUCCESS/FAILURE if it finished first.
        """
        from qtasks.control import announce_revoke

        info = await (await self.app.backend()).revoke(self.id, reason)
        if info.state is State.REVOKED and terminate:
            await announce_revoke(self.app, self.id)
        return info.state

    # -- sync ---------------------------------------------------------------------------------
    def info(self) -> TaskResult | None:
        return run_sync(self.ainfo())

    @property
    def state(self) -> State:
        """Current state: PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        return run_sync(self.astate())

    @property
    def status(self) -> State:
        return self.state

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Block until the outcome is ready; see :meth:`aget`."""
        return run_sync(self.aget(timeout, propagate))

    def revoke(self, terminate: bool = True, reason: str | None = None) -> State:
        """Cancel the task; see :meth:`arevoke`."""
        return run_sync(self.arevoke(terminate, reason))

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state is State.SUCCESS

    def failed(self) -> bool:
        return self.state is State.FAILURE

    @property
    def result(self) -> Any:
        """The return value, the error (as TaskError) when failed, or None when not ready."""
        info = self.info()
        if info is None or not info.ready:
            return None
        return self._outcome(info, propagate=False)

    # -- helpers -------------------------------------------------------------------------------
    def _outcome(self, info: TaskResult, propagate: bool) -> Any:
        if info.state is State.SUCCESS:
            return info.result
        err = _error_of(info)
        if propagate:
            raise err
        return err


def _error_of(info: TaskResult) -> TaskError:
    if info.state is State.REVOKED:
        return TaskRevoked(info.id)
    e = info.error
    if e is None:
        return TaskError("UnknownError", f"task ended in {info.state.value} without an error")
    if e.type == "TimeLimitExceeded":
        err: TaskError = TimeLimitExceeded.__new__(TimeLimitExceeded)
        TaskError.__init__(err, e.type, e.message, e.traceback)
        return err
    return TaskError(e.type, e.message, e.traceback)
