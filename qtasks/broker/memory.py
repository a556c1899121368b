"""An in-memory broker with the JetStream broker's semantics, for unit tests and eager use.

Same rules: one copy per message id inside the duplicate window, deliveries redelivered
after ``ack_wait_s`` unless settled or kept alive with ``in_progress()``, ``nak(delay)``,
``term()``, and dead letters kept with their reason. One event loop at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from qtasks.broker.base import Broker, ControlHandler, DeadLetter, Delivery, QueueStats
from qtasks.errors import BrokerError, MessageTooLarge


@dataclass
class _Stored:
    seq: int
    queue: str
    data: bytes
    deliveries: int = 0
    not_before: float = 0.0
    """Monotonic time before which it is not delivered (nak delay)."""
    deadline: float | None = None
    """While delivered: monotonic time at which it is redelivered."""
    token: int = 0
    """Changes on every delivery so a stale Delivery cannot settle a newer one."""


@dataclass
class _Queue:
    ready: deque[_Stored] = field(default_factory=deque)
    inflight: dict[int, _Stored] = field(default_factory=dict)


class MemoryDelivery(Delivery):
    def __init__(self, broker: MemoryBroker, stored: _Stored) -> None:
        self._broker = broker
        self._stored = stored
        self._token = stored.token
        self.data = stored.data
        self.queue = stored.queue
        self.attempt = stored.deliveries

    def _live(self) -> bool:
        q = self._broker._queues[self.queue]
        return (
            q.inflight.get(self._stored.seq) is self._stored and self._stored.token == self._token
        )

    async def ack(self) -> None:
        if self._live():
            del self._broker._queues[self.queue].inflight[self._stored.seq]
            self._broker.acked += 1

    async def term(self) -> None:
        await self.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        if self._live():
            self._broker._requeue(self._stored, delay_s or 0.0)

    async def in_progress(self) -> None:
        if self._live():
            self._stored.deadline = time.monotonic() + self._broker.ack_wait_s


class MemoryBroker(Broker):
    def __init__(
        self,
        *,
        ack_wait_s: float = 30.0,
        duplicate_window_s: float = 120.0,
        max_payload_bytes: int = 1024 * 1024,
    ) -> None:
        self.ack_wait_s = ack_wait_s
        self.duplicate_window_s = duplicate_window_s
        self.max_payload_bytes = max_payload_bytes
        self._queues: dict[str, _Queue] = {}
        self._seen: dict[str, float] = {}
        self._seq = itertools.count(1)
        self._changed: asyncio.Event | None = None
        self.dead: list[tuple[str, bytes, str]] = []
        self._dead_entries: list[DeadLetter] = []
        self._dead_seq = itertools.count(1)
        self._control: defaultdict[str, list[ControlHandler]] = defaultdict(list)
        self.acked = 0
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        # Like a closed connection: what was delivered and not settled goes back.
        for q in self._queues.values():
            for stored in list(q.inflight.values()):
                self._requeue(stored, 0.0)
        self._control.clear()  # subscriptions end with the connection
        self.connected = False

    async def ping(self) -> None:
        if not self.connected:
            raise BrokerError("memory broker is closed")

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _queue(self, name: str) -> _Queue:
        return self._queues.setdefault(name, _Queue())

    def _requeue(self, stored: _Stored, delay_s: float) -> None:
        q = self._queue(stored.queue)
        q.inflight.pop(stored.seq, None)
        stored.deadline = None
        stored.not_before = time.monotonic() + delay_s
        q.ready.append(stored)
        self._event().set()

    async def publish(self, queue: str, data: bytes, *, msg_id: str) -> bool:
        if len(data) > self.max_payload_bytes:
            raise MessageTooLarge(len(data), self.max_payload_bytes)
        now = time.monotonic()
        seen = self._seen.get(msg_id)
        if seen is not None and now - seen < self.duplicate_window_s:
            return False
        self._seen[msg_id] = now
        self._queue(queue).ready.append(_Stored(next(self._seq), queue, data))
        self._event().set()
        return True

    def _take(self, queue: str, max_messages: int) -> list[Delivery]:
        q = self._queue(queue)
        now = time.monotonic()
        for stored in [
            s for s in q.inflight.values() if s.deadline is not None and s.deadline <= now
        ]:
            self._requeue(stored, 0.0)  # ack deadline passed: deliver again
        out: list[Delivery] = []
        keep: deque[_Stored] = deque()
        while q.ready and len(out) < max_messages:
            stored = q.ready.popleft()
            if stored.not_before > now:
                keep.append(stored)
                continue
            stored.deliveries += 1
            stored.token += 1
            stored.deadline = now + self.ack_wait_s
            q.inflight[stored.seq] = stored
            out.append(MemoryDelivery(self, stored))
        q.ready.extendleft(reversed(keep))
        return out

    def _next_wakeup_s(self, queue: str) -> float | None:
        q = self._queue(queue)
        times = [s.not_before for s in q.ready] + [
            s.deadline for s in q.inflight.values() if s.deadline is not None
        ]
        return min(times) - time.monotonic() if times else None

    async def fetch(self, queue: str, max_messages: int, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._take(queue, max_messages)
            if got:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wake = self._next_wakeup_s(queue)
            event = self._event()
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    event.wait(), min(left, max(wake, 0.001)) if wake is not None else left
                )

    async def dead_letter(self, queue: str, data: bytes, reason: str) -> None:
        self.dead.append((queue, data, reason))
        self._dead_entries.append(
            DeadLetter(next(self._dead_seq), queue, data, reason, time.time())
        )

    def pending(self, queue: str) -> int:
        """Messages not yet acked (ready or in flight)."""
        q = self._queue(queue)
        return len(q.ready) + len(q.inflight)

    # -- operations -------------------------------------------------------------------------
    async def queue_stats(self, queue: str) -> QueueStats:
        q = self._queue(queue)
        return QueueStats(
            queue,
            pending=len(q.ready),
            ack_pending=len(q.inflight),
            redelivered=sum(1 for s in q.inflight.values() if s.deliveries > 1),
            dead_letters=sum(1 for d in self._dead_entries if d.queue == queue),
        )

    async def queue_names(self) -> list[str]:
        return sorted(set(self._queues) | {d.queue for d in self._dead_entries})

    async def purge(self, queue: str) -> int:
        q = self._queue(queue)
        n = len(q.ready) + len(q.inflight)
        q.ready.clear()
        q.inflight.clear()  # a later ack of one of these finds nothing, as on JetStream
        return n

    async def dead_letter_entries(
        self, queue: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return [d for d in self._dead_entries if queue is None or d.queue == queue][:limit]

    async def drop_dead_letter(self, seq: int) -> bool:
        for i, d in enumerate(self._dead_entries):
            if d.seq == seq:
                del self._dead_entries[i]
                self.dead.remove((d.queue, d.data, d.reason))
                return True
        return False

    async def listen_control(self, topic: str, handler: ControlHandler) -> None:
        self._control[topic].append(handler)

    async def broadcast(self, topic: str, data: bytes) -> None:
        await self.gather(topic, data, 0.0)

    async def gather(self, topic: str, data: bytes, timeout_s: float) -> list[bytes]:
        replies = [await handler(data) for handler in list(self._control.get(topic, ()))]
        return [r for r in replies if r is not None]
