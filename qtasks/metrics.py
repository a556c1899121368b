"""A worker's Prometheus metrics, served by ``qtasks worker --metrics-port``.

Names follow the Prometheus conventions (base units, ``_total`` counters, ``_seconds``
histograms). A worker records task events through :class:`TaskEvents`; with metrics off it
holds the no-op base class, so the hot path pays one empty method call per event. With
metrics on, every metric object is created once and each task name's label children are
looked up once and cached, so an event costs a dict look-up and an ``inc()``/``observe()``.

Queue depths come from the JetStream consumers and are read when Prometheus scrapes (at most
once a second, see :class:`_QueueCollector`); with several workers on a queue each exports
the same figures, so aggregate them with ``max by (queue)``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from qtasks.broker.base import QueueStats

#: Values of the ``state`` label of ``qtasks_tasks_total``: what happened to a delivery.
TASK_EVENTS = (
    "received",
    "succeeded",
    "failed",
    "retried",
    "redelivered",
    "revoked",
    "expired",
)
#: Run time buckets, seconds: from a no-op to a long simulation.
RUN_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)
#: Queue wait buckets, seconds (sent -> started).
WAIT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)
#: A scrape reads the consumers again only when the last read is older than this.
QUEUE_STATS_MAX_AGE_S = 1.0
#: How long a scrape waits for the worker's event loop to read the consumers.
QUEUE_STATS_TIMEOUT_S = 2.0


class TaskEvents:
    """What a worker reports about its tasks; this base class records nothing."""

    enabled = False

    def received(self, task: str, queue: str) -> None:
        """A delivery arrived (first delivery, retry or redelivery)."""

    def event(self, task: str, queue: str, state: str) -> None:
        """One of :data:`TASK_EVENTS` other than received (a counter increment)."""

    def started(self, task: str, queue: str, wait_s: float | None) -> None:
        """The task starts running; ``wait_s`` is the time since it was sent."""

    def finished(self, task: str, queue: str, state: str, run_s: float) -> None:
        """A run ended: ``state`` is succeeded, failed, retried or revoked."""

    def dead_lettered(self, queue: str, reason: str) -> None:
        """A message went to the dead-letter stream; ``reason`` is the error type."""


class _TaskSeries:
    """The label children of one (task, queue): looked up once, then reused."""

    __slots__ = ("counters", "run", "wait")

    def __init__(self, m: WorkerMetrics, task: str, queue: str) -> None:
        self.counters = {s: m.tasks.labels(task=task, queue=queue, state=s) for s in TASK_EVENTS}
        self.run = m.run_seconds.labels(task=task, executor=m.executor)
        self.wait = m.queue_wait_seconds.labels(task=task, queue=queue)


class WorkerMetrics(TaskEvents):
    """The metrics of one worker, in a registry of its own (so several workers in one process,
    as in tests, never collide). ``inflight`` is read at scrape time, costing nothing per task.
    """

    enabled = True

    def __init__(
        self,
        *,
        executor: str,
        concurrency: int,
        inflight: Callable[[], int],
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.executor = executor
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.tasks = Counter(
            "qtasks_tasks",
            "Task deliveries by what happened to them: received, succeeded, failed, retried, "
            "redelivered (after a crash or lost worker), revoked, expired.",
            ["task", "queue", "state"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "qtasks_task_run_seconds",
            "Time a task ran in its executor, seconds.",
            ["task", "executor"],
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "qtasks_task_queue_wait_seconds",
            "Time from sending a task to a worker starting it, seconds (clocks of two machines).",
            ["task", "queue"],
            buckets=WAIT_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(
            "qtasks_tasks_in_flight", "Deliveries this worker holds now.", registry=r
        )
        self.in_flight.set_function(lambda: float(inflight()))
        self.concurrency = Gauge(
            "qtasks_worker_concurrency", "Tasks this worker runs at once (its slots).", registry=r
        )
        self.concurrency.set(concurrency)
        self.dead_letters = Counter(
            "qtasks_dead_letters",
            "Messages this worker sent to the dead-letter stream, by queue and reason.",
            ["queue", "reason"],
            registry=r,
        )
        self._series: dict[tuple[str, str], _TaskSeries] = {}
        self._server: Any = None

    def _of(self, task: str, queue: str) -> _TaskSeries:
        s = self._series.get((task, queue))
        if s is None:
            s = self._series[(task, queue)] = _TaskSeries(self, task, queue)
        return s

    # -- TaskEvents ---------------------------------------------------------------------------
    def received(self, task: str, queue: str) -> None:
        self._of(task, queue).counters["received"].inc()

    def event(self, task: str, queue: str, state: str) -> None:
        self._of(task, queue).counters[state].inc()

    def started(self, task: str, queue: str, wait_s: float | None) -> None:
        if wait_s is not None:
            self._of(task, queue).wait.observe(max(0.0, wait_s))

    def finished(self, task: str, queue: str, state: str, run_s: float) -> None:
        s = self._of(task, queue)
        s.counters[state].inc()
        s.run.observe(run_s)

    def dead_lettered(self, queue: str, reason: str) -> None:
        self.dead_letters.labels(queue=queue, reason=reason).inc()

    # -- queues and serving -------------------------------------------------------------------
    def watch_queues(
        self,
        queues: Sequence[str],
        read: Callable[[str], Awaitable[QueueStats]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Export the depth of ``queues``, read with ``read`` on ``loop`` at scrape time."""
        self.registry.register(_QueueCollector(list(queues), read, loop))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port
        (useful with port 0)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        server, self._server = self._server, None
        if server is not None:
            # shutdown() waits for serve_forever to return: off the event loop's thread.
            threading.Thread(target=_stop_server, args=(server,), daemon=True).start()


def _stop_server(server: Any) -> None:
    server.shutdown()
    server.server_close()


class _QueueCollector(Collector):
    """Queue depths from the broker, read on the worker's loop when Prometheus scrapes.

    The scrape runs in the HTTP server's thread; it asks the loop for fresh figures and
    waits at most :data:`QUEUE_STATS_TIMEOUT_S`. When the loop is busy (a task holding the
    GIL) or the broker is down, the last figures are exported again and
    ``qtasks_queue_stats_age_seconds`` tells how old they are.
    """

    def __init__(
        self,
        queues: list[str],
        read: Callable[[str], Awaitable[QueueStats]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._queues = queues
        self._read = read
        self._loop = loop
        self._lock = threading.Lock()
        self._stats: dict[str, QueueStats] = {}
        self._read_at = 0.0

    def describe(self) -> Iterable[Metric]:
        return []  # no read at registration

    async def _read_all(self) -> dict[str, QueueStats]:
        got = await asyncio.gather(*(self._read(q) for q in self._queues))
        return {s.queue: s for s in got}

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at < QUEUE_STATS_MAX_AGE_S or self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self._read_all(), self._loop)
        try:
            self._stats = fut.result(QUEUE_STATS_TIMEOUT_S)
            self._read_at = time.monotonic()
        except (concurrent.futures.TimeoutError, Exception):
            fut.cancel()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self._refresh()
            stats, read_at = dict(self._stats), self._read_at
        families = {
            "pending": GaugeMetricFamily(
                "qtasks_queue_pending_messages",
                "Messages waiting in the queue, not yet delivered (JetStream num_pending).",
                labels=["queue"],
            ),
            "ack_pending": GaugeMetricFamily(
                "qtasks_queue_ack_pending_messages",
                "Messages delivered and not yet acknowledged: running, or awaiting redelivery "
                "(JetStream num_ack_pending).",
                labels=["queue"],
            ),
            "redelivered": GaugeMetricFamily(
                "qtasks_queue_redelivered_messages",
                "Unacknowledged messages delivered more than once (JetStream num_redelivered).",
                labels=["queue"],
            ),
            "waiting_pulls": GaugeMetricFamily(
                "qtasks_queue_waiting_pulls",
                "Open pull requests on the queue: idle worker slots (JetStream num_waiting).",
                labels=["queue"],
            ),
            "dead_letters": GaugeMetricFamily(
                "qtasks_queue_dead_letter_messages",
                "Messages of the queue kept in the dead-letter stream.",
                labels=["queue"],
            ),
        }
        for s in stats.values():
            for field, family in families.items():
                family.add_metric([s.queue], float(getattr(s, field)))
        yield from families.values()
        if read_at:
            age = GaugeMetricFamily(
                "qtasks_queue_stats_age_seconds",
                "Age of the queue figures exported (they are read at scrape time).",
            )
            age.add_metric([], time.monotonic() - read_at)
            yield age
