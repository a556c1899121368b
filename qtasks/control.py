"""Control messages between callers and workers: revoke a running task, ask who is there.

Both ride on the broker's control topics (core NATS, not stored): a worker that is down
misses them, which is fine: a revoked task's REVOKED record in the backend is what stops
it from running later; the message only stops a run already under way.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import structlog

from qtasks.errors import BrokerError

if TYPE_CHECKING:
    from qtasks.app import QTasks
    from qtasks.broker.base import Broker

log = structlog.get_logger("qtasks.control")

REVOKE = "revoke"
PING = "ping"
#: A revoke that arrives just before its task registers as running is remembered this long.
_RECENT_S = 60.0
_RECENT_MAX = 10_000


class RevokeRequest(msgspec.Struct, frozen=True):
    task_id: str


class WorkerInfo(msgspec.Struct, frozen=True):
    """A worker's answer to a ping (``qtasks inspect``)."""

    name: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    executor: str
    in_flight: int
    running: list[str]
    """Ids of the tasks running in the executor now."""
    started_at: float
    metrics_port: int | None = None


_encoder = msgspec.json.Encoder()
_revoke_decoder = msgspec.json.Decoder(RevokeRequest)
_info_decoder = msgspec.json.Decoder(WorkerInfo)


async def announce_revoke(app: QTasks, task_id: str) -> None:
    """Tell every worker that ``task_id`` is revoked (best effort, logged on failure)."""
    try:
        broker = await app.broker()
        await broker.broadcast(REVOKE, _encoder.encode(RevokeRequest(task_id)))
    except BrokerError as e:
        # The REVOKED record is stored: a run under way finishes, and its result is discarded.
        log.warning("revoke_broadcast_failed", task_id=task_id, error=str(e))


async def ask_workers(app: QTasks, timeout_s: float = 1.0) -> list[WorkerInfo]:
    """Every worker that answers a ping within ``timeout_s``, sorted by name."""
    broker = await app.broker()
    replies = await broker.gather(PING, b"{}", timeout_s)
    out: list[WorkerInfo] = []
    for raw in replies:
        try:
            out.append(_info_decoder.decode(raw))
        except msgspec.DecodeError:
            log.debug("bad_ping_reply", size=len(raw))
    return sorted(out, key=lambda w: w.name)


class Revocations:
    """A worker's view of revocations: which tasks run now (their handler, to cancel), and
    revokes that arrived before their task registered."""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()
        """Tasks whose handler was cancelled by a revoke (not by a shutdown)."""
        self._recent: OrderedDict[str, float] = OrderedDict()

    def recently_revoked(self, task_id: str) -> bool:
        if not self._recent:
            return False
        at = self._recent.get(task_id)
        return at is not None and time.monotonic() - at < _RECENT_S

    def revoke(self, task_id: str) -> bool:
        """Cancel ``task_id`` if it runs here (True), else remember the revoke for a while."""
        handler = self.running.pop(task_id, None)
        if handler is not None and not handler.done():
            self.cancelled.add(task_id)
            handler.cancel()
            return True
        now = time.monotonic()
        self._recent[task_id] = now
        while self._recent and (
            len(self._recent) > _RECENT_MAX or now - next(iter(self._recent.values())) > _RECENT_S
        ):
            self._recent.popitem(last=False)
        return False

    async def on_revoke(self, data: bytes) -> bytes | None:
        try:
            req = _revoke_decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("bad_revoke_message", size=len(data))
            return None
        if self.revoke(req.task_id):
            log.info("task_revoke_received", task_id=req.task_id, running=True)
        return None


async def listen(
    broker: Broker, revocations: Revocations, info: WorkerInfoSource
) -> bool:
    """Subscribe a worker to the control topics; False when the broker has none."""

    async def on_ping(_: bytes) -> bytes:
        return _encoder.encode(info())

    try:
        await broker.listen_control(REVOKE, revocations.on_revoke)
        await broker.listen_control(PING, on_ping)
    except BrokerError as e:
        log.warning("control_unavailable", error=str(e))
        return False
    return True


class WorkerInfoSource:
    """Builds a worker's :class:`WorkerInfo` on demand."""

    def __init__(
        self,
        name: str,
        queues: list[str],
        concurrency: int,
        executor: str,
        in_flight: Callable[[], int],
        revocations: Revocations,
    ) -> None:
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.executor = executor
        self._in_flight = in_flight
        self._revocations = revocations
        self.started_at = time.time()
        self.metrics_port: int | None = None

    def __call__(self) -> WorkerInfo:
        return WorkerInfo(
            name=self.name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            executor=self.executor,
            in_flight=self._in_flight(),
            running=sorted(self._revocations.running),
            started_at=self.started_at,
            metrics_port=self.metrics_port,
        )
