"""The worker: fetch as many messages as there are free slots, run, store, then settle.

Order of a task's life here: decode -> read its record (already done? revoked? looping
crash?) -> STARTED -> run in the executor while heartbeating -> store the outcome ->
ack (or nak for a retry, or term + dead letter). A result is always stored before the
message is settled, so a crash in between re-runs the task; it never loses it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import structlog

from qtasks.app import QTasks
from qtasks.backends.base import ResultBackend
from qtasks.broker.base import Broker, Delivery, KeepAlive
from qtasks.context import TaskContext
from qtasks.control import Revocations, WorkerInfoSource
from qtasks.control import listen as listen_control
from qtasks.errors import BackendError, BrokerError, DecodeError, Retry
from qtasks.executors import make_executor
from qtasks.executors.base import Executor, TaskCall
from qtasks.message import (
    ErrorInfo,
    State,
    TaskMessage,
    TaskResult,
    decode_message,
    encode_result,
    now_s,
)
from qtasks.metrics import TaskEvents, WorkerMetrics
from qtasks.settlement import Heartbeat, Settlement, error_info, msgspec_replace
from qtasks.task import Task

log = structlog.get_logger("qtasks.worker")

#: Executors whose tasks run in the worker's own process, where a task holding the GIL
#: freezes the event loop and its heartbeats (see WorkerSettings.heartbeat_process).
_IN_PROCESS_EXECUTORS = ("thread", "asyncio")

#: Back-off after a broker error in the fetch loop (server restarting, network blip).
_FETCH_ERROR_BACKOFF_S = 0.5


class Worker:
    """Consumes ``queues`` of ``app`` with ``concurrency`` slots on one executor.

    ``await worker.run()`` serves until :meth:`stop`; then it stops fetching, lets
    running tasks finish for up to ``shutdown_grace_s``, and returns. Unfinished tasks
    are handed back to the broker (nak) for another worker.
    """

    def __init__(
        self,
        app: QTasks,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        executor: str | Executor | None = None,
        app_spec: str | None = None,
        shutdown_grace_s: float | None = None,
        hostname: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ) -> None:
        ws = app.settings.worker
        self.app = app
        self.queues = list(queues or ws.queues)
        self.concurrency = concurrency or ws.concurrency
        self.shutdown_grace_s = (
            ws.shutdown_grace_s if shutdown_grace_s is None else shutdown_grace_s
        )
        self.name = f"{hostname or socket.gethostname()}:{os.getpid()}"
        if isinstance(executor, Executor):
            self.executor = executor
        else:
            self.executor = make_executor(
                executor or ws.executor, self.concurrency, app.resolve, app_spec
            )
        self._free = self.concurrency
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._keepalive: KeepAlive | None = None
        self._settlement: Settlement | None = None
        self.log = log.bind(worker=self.name, executor=self.executor.name)
        self.revocations = Revocations()
        self.metrics_port = ws.metrics_port if metrics_port is None else metrics_port
        """Serve Prometheus metrics on this port; 0: no metrics (events cost nothing)."""
        self.metrics_host = metrics_host or ws.metrics_host
        self.events: TaskEvents = (
            WorkerMetrics(
                executor=self.executor.name,
                concurrency=self.concurrency,
                inflight=lambda: len(self._inflight),
            )
            if self.metrics_port
            else TaskEvents()
        )
        self.started = asyncio.Event()
        """Set once the worker is connected, its executor warm and its consumers bound."""

    @property
    def _out(self) -> Settlement:
        """Stores outcomes, then settles deliveries (set up by :meth:`run`)."""
        assert self._settlement is not None
        return self._settlement

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to drain and return from :meth:`run` (safe from a signal handler)."""
        self._stopping.set()

    async def run(self) -> None:
        clients = await self.app.clients()
        self._broker, self._backend = clients.broker, clients.backend
        self._settlement = Settlement(
            self._backend,
            self._broker,
            self.events,
            result_store_retry_s=self.app.settings.worker.result_store_retry_s,
        )
        await self.executor.start()
        if (
            self.app.settings.worker.heartbeat_process
            and self.executor.name in _IN_PROCESS_EXECUTORS
        ):
            self._keepalive = await self._broker.start_keepalive(self._heartbeat_interval_s())
        await self._start_ops()
        consumers = [
            asyncio.create_task(self._consume(q), name=f"consume-{q}") for q in self.queues
        ]
        self.log.info("worker_started", queues=self.queues, concurrency=self.concurrency)
        self.started.set()
        try:
            await self._stopping.wait()
        finally:
            self.log.info("worker_stopping", inflight=len(self._inflight))
            self._stopping.set()
            self._slot_freed.set()
            # Consumers leave at their next fetch timeout; what they got meanwhile still runs.
            await asyncio.gather(*consumers, return_exceptions=True)
            finished = await self._drain()
            await self.executor.shutdown(wait=finished)
            if self._keepalive is not None:
                await self._keepalive.close()
            if isinstance(self.events, WorkerMetrics):
                self.events.close()
            self.log.info("worker_stopped", clean=finished)

    async def _start_ops(self) -> None:
        """Listen to control messages (revoke, ping) and serve the metrics, when enabled."""
        assert self._broker is not None
        info = WorkerInfoSource(
            self.name,
            self.queues,
            self.concurrency,
            self.executor.name,
            lambda: len(self._inflight),
            self.revocations,
        )
        await listen_control(self._broker, self.revocations, info)
        if isinstance(self.events, WorkerMetrics):
            loop = asyncio.get_running_loop()
            self.events.watch_queues(self.queues, self._broker.queue_stats, loop)
            info.metrics_port = self.events.serve(self.metrics_port, self.metrics_host)
            self.log.info("metrics_serving", host=self.metrics_host, port=info.metrics_port)

    async def _drain(self) -> bool:
        if not self._inflight:
            return True
        _, pending = await asyncio.wait(set(self._inflight), timeout=self.shutdown_grace_s)
        if not pending:
            return True
        self.log.warning("drain_timeout", unfinished=len(pending), grace_s=self.shutdown_grace_s)
        for t in pending:
            t.cancel()  # the handler naks its message so another worker takes it now
        await asyncio.gather(*pending, return_exceptions=True)
        return False

    # -- fetching -------------------------------------------------------------------------------
    async def _consume(self, queue: str) -> None:
        assert self._broker is not None
        fetch_timeout_s = self.app.settings.nats.fetch_timeout_s
        while not self._stopping.is_set():
            if self._free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            # Reserve the free slots before awaiting, so several queues never overbook.
            want = self._free
            self._free -= want
            try:
                deliveries = await self._broker.fetch(queue, want, fetch_timeout_s)
            except BrokerError as e:
                self._free += want
                self.log.warning("fetch_failed", queue=queue, error=str(e))
                await asyncio.sleep(_FETCH_ERROR_BACKOFF_S)
                continue
            except BaseException:
                self._free += want
                raise
            self._free += want - len(deliveries)
            for d in deliveries:
                t = asyncio.create_task(self._handle(d))
                self._inflight.add(t)
                t.add_done_callback(self._on_done)

    def _on_done(self, t: asyncio.Task[None]) -> None:
        self._inflight.discard(t)
        self._free += 1
        self._slot_freed.set()
        if not t.cancelled() and t.exception() is not None:
            self.log.error("handler_crashed", error=repr(t.exception()), exc_info=t.exception())

    # -- one delivery ------------------------------------------------------------------------------
    async def _handle(self, d: Delivery) -> None:
        assert self._backend is not None
        try:
            msg = decode_message(d.data)
        except DecodeError as e:
            self.log.error("message_undecodable", queue=d.queue, error=str(e), size=len(d.data))
            await self._out.reject(d, None, ErrorInfo("DecodeError", str(e)), self.log)
            return
        tlog = self.log.bind(task_id=msg.id, task=msg.task, queue=d.queue, attempt=d.attempt)
        self.events.received(msg.task, d.queue)
        task = self.app.tasks.get(msg.task)
        if d.attempt == 1 and task is not None and _due(msg, now_s()):
            # The common case, a first delivery that runs now: write STARTED only if the task
            # has no record yet, in the same round trip as the read. A record already there
            # (a resent id that finished or was revoked, ...) takes the checks below.
            started = msgspec_replace(
                self._base(d, msg, None, crashes=0), state=State.STARTED, started_at=now_s()
            )
            try:
                prev = await self._backend.set_if_absent(started)
            except (BackendError, DecodeError) as e:
                tlog.warning("backend_unavailable", error=str(e))
                await self._out.settle(d.nak(1.0), tlog)
                return
            if prev is None:
                await self._run(d, msg, task, started, tlog, stored=True)
                return
        else:
            try:
                prev = await self._backend.get(msg.id)
            except (BackendError, DecodeError) as e:
                tlog.warning("backend_unavailable", error=str(e))
                await self._out.settle(d.nak(1.0), tlog)
                return
        if prev is not None and prev.ready:
            # Done before (stored, then a crash before the ack) or revoked: do not run again.
            tlog.info("task_already_final", state=prev.state.value)
            if prev.state is State.REVOKED:
                self.events.event(msg.task, d.queue, "revoked")
            await self._out.settle(d.ack(), tlog)
            return
        base = self._base(d, msg, prev)
        if task is None:
            reason = f"no task named {msg.task!r} on worker {self.name}"
            tlog.error("task_unknown")
            await self._out.reject(d, base, ErrorInfo("TaskNotRegistered", reason), tlog)
            return
        now = now_s()
        if msg.expires is not None and now > msg.expires:
            tlog.info("task_expired")
            self.events.event(msg.task, d.queue, "expired")
            res = msgspec_replace(
                base,
                state=State.REVOKED,
                finished_at=now,
                error=ErrorInfo("TaskExpired", "task expired before it ran"),
            )
            await self._out.finish(d, res, tlog)
            return
        if msg.eta is not None and msg.eta > now + 0.005:
            await self._out.settle(d.nak(msg.eta - now), tlog)  # not yet: come back at the eta
            return
        crashes = int(base.meta.get("crashes", 0)) + (
            1 if prev and prev.state is State.STARTED else 0
        )
        if prev is not None and prev.state is State.STARTED:
            self.events.event(msg.task, d.queue, "redelivered")
            # Its last run was never settled: that worker died, or its loop was frozen past
            # ack_wait (then both runs go on: say so loudly).
            tlog.warning(
                "task_restarted", previous_worker=prev.worker, crashes=crashes,
                previous_started_at=prev.started_at,
            )  # fmt: skip
        limit = self.app.settings.worker.max_redeliveries
        if crashes > limit:
            reason = f"the task was started {crashes} times without finishing (limit {limit})"
            tlog.error("task_crash_loop", crashes=crashes)
            await self._out.reject(d, base, ErrorInfo("WorkerLost", reason), tlog)
            return
        started = msgspec_replace(
            base, state=State.STARTED, started_at=now_s(), meta={**base.meta, "crashes": crashes}
        )
        await self._run(d, msg, task, started, tlog, stored=False)

    def _base(
        self, d: Delivery, msg: TaskMessage, prev: TaskResult | None, **meta: Any
    ) -> TaskResult:
        """The task's record as this delivery starts (PENDING), carrying ``prev``'s counts."""
        return TaskResult(
            id=msg.id,
            state=State.PENDING,
            task=msg.task,
            queue=d.queue,
            sent_at=msg.created_at or None,
            deliveries=d.attempt,
            retries=prev.retries if prev else 0,
            worker=self.name,
            executor=self.executor.name,
            meta={**(prev.meta if prev else {}), **meta},
        )

    async def _run(
        self,
        d: Delivery,
        msg: TaskMessage,
        task: Task[Any, Any],
        started: TaskResult,
        tlog: Any,
        *,
        stored: bool,
    ) -> None:
        """Run the task whose STARTED record is ``started`` (already written when ``stored``)."""
        assert self._backend is not None
        base = started
        heartbeat = Heartbeat(d, self._heartbeat_interval_s(), self.log)
        keepalive = self._keepalive
        if keepalive is not None:
            keepalive.track(d)  # beats on even if this task freezes the loop (holds the GIL)
        try:
            if not stored:
                try:
                    not_revoked = await self._backend.set_unless_revoked(started)
                except BackendError as e:
                    tlog.warning("backend_unavailable", error=str(e))
                    await self._out.settle(d.nak(1.0), tlog)
                    return
                if not not_revoked:
                    await self._skip_revoked(d, msg, tlog)
                    return
            if self.revocations.recently_revoked(msg.id):
                await self._skip_revoked(d, msg, tlog)
                return
            tlog.info("task_started")
            ctx = TaskContext(
                task_id=msg.id,
                task_name=msg.task,
                queue=d.queue,
                attempt=d.attempt,
                retries=base.retries,
                concurrency=self.concurrency,
                executor=self.executor.name,
                worker=self.name,
                headers=msg.headers,
            )
            time_limit_s = task.time_limit_s or self.app.settings.worker.time_limit_s
            if self.events.enabled and msg.created_at and started.started_at:
                self.events.started(msg.task, d.queue, started.started_at - msg.created_at)
            t0 = time.perf_counter()
            try:
                value = await self._execute(
                    msg.id, TaskCall(msg.task, msg.args, msg.kwargs, ctx), time_limit_s
                )
            except asyncio.CancelledError:
                if msg.id in self.revocations.cancelled:
                    # Revoked while running: the executor call is cancelled (the process
                    # executor killed its child); REVOKED is already stored by the revoker.
                    self.revocations.cancelled.discard(msg.id)
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
                    duration_s = time.perf_counter() - t0
                    tlog.info("task_revoked", running=True, duration_s=round(duration_s, 6))
                    self.events.finished(msg.task, d.queue, "revoked", duration_s)
                    await self._out.settle(d.ack(), tlog)
                    return
                # Drain ran out of time: give the message back at once rather than after ack_wait.
                tlog.warning("task_abandoned")
                await self._out.settle(d.nak(0), tlog)
                raise
            except Exception as e:
                duration_s = time.perf_counter() - t0
                err = error_info(e)
                if task.should_retry(e, base.retries):
                    countdown_s = (
                        e.countdown_s
                        if isinstance(e, Retry) and e.countdown_s is not None
                        else task.backoff_s(base.retries)
                    )
                    res = msgspec_replace(
                        started,
                        state=State.RETRY,
                        error=err,
                        retries=base.retries + 1,
                        finished_at=now_s(),
                    )
                    tlog.warning(
                        "task_retry",
                        error=f"{err.type}: {err.message}",
                        countdown_s=round(countdown_s, 3),
                        duration_s=round(duration_s, 6),
                    )
                    self.events.finished(msg.task, d.queue, "retried", duration_s)
                    if await self._out.store(res, tlog):
                        await self._out.settle(d.nak(countdown_s), tlog)
                    else:
                        await self._out.settle(d.nak(1.0), tlog)
                    return
                tlog.error(
                    "task_failed",
                    error=f"{err.type}: {err.message}",
                    duration_s=round(duration_s, 6),
                    exception=err.traceback,  # the one place a task's traceback is logged
                )
                self.events.finished(msg.task, d.queue, "failed", duration_s)
                await self._out.finish(d, Settlement.failed(started, err), tlog)
                return
            duration_s = time.perf_counter() - t0
            res = msgspec_replace(
                started, state=State.SUCCESS, result=value, error=None, finished_at=now_s()
            )
            try:
                encode_result(res)
            except (TypeError, ValueError, OverflowError) as e:
                err = ErrorInfo(
                    "EncodeError",
                    f"result of type {type(value).__name__} cannot be stored (msgpack only): {e}",
                )
                tlog.error("task_failed", error=err.message, duration_s=round(duration_s, 6))
                self.events.finished(msg.task, d.queue, "failed", duration_s)
                await self._out.finish(d, Settlement.failed(started, err), tlog)
                return
            tlog.info("task_succeeded", duration_s=round(duration_s, 6))
            self.events.finished(msg.task, d.queue, "succeeded", duration_s)
            await self._out.finish(d, res, tlog)
        finally:
            heartbeat.stop()
            if keepalive is not None:
                keepalive.untrack(d)

    async def _execute(self, task_id: str, call: TaskCall, time_limit_s: float | None) -> Any:
        """Run ``call`` in the executor, cancellable by a revoke while it runs."""
        running = self.revocations.running
        current = asyncio.current_task()
        if current is not None:
            running[task_id] = current
        try:
            return await self.executor.run(call, time_limit_s)
        finally:
            running.pop(task_id, None)

    async def _skip_revoked(self, d: Delivery, msg: TaskMessage, tlog: Any) -> None:
        """The task was revoked before it started: never run it; its record says REVOKED."""
        tlog.info("task_revoked", running=False)
        self.events.event(msg.task, d.queue, "revoked")
        await self._out.settle(d.ack(), tlog)

    def _broker_ack_wait_s(self) -> float:
        assert self._broker is not None
        return self._broker.ack_wait_s

    def _heartbeat_interval_s(self) -> float:
        return max(0.05, self._broker_ack_wait_s() / 3)


def _due(msg: TaskMessage, now: float) -> bool:
    """Whether the task may run at ``now``: not expired, and its eta (if any) has come."""
    if msg.expires is not None and now > msg.expires:
        return False
    return msg.eta is None or msg.eta <= now + 0.005
