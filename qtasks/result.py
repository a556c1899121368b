"""AsyncResult: a handle on a sent task's state and outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from qtasks._loop import run_sync
from qtasks.errors import TaskError, TaskRevoked, TimeLimitExceeded
from qtasks.message import READY_STATES, State, TaskResult

if TYPE_CHECKING:
    from qtasks.app import QTasks

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and result of task ``task_id``. An unknown id reads as PENDING."""

    def __init__(self, task_id: str, app: QTasks) -> None:
        self.id = task_id
        self.app = app

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
        (or returns it when ``propagate`` is False).
        """
        info = await (await self.app.backend()).wait(self.id, timeout)
        value: R = self._outcome(info, propagate)
        return value

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
