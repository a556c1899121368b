"""The broker interface: publish bytes to a queue, fetch deliveries, settle them."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from qtasks.errors import BrokerError


class QueueStats(msgspec.Struct, frozen=True):
    """A queue's state as the broker sees it (``qtasks inspect``, the queue gauges)."""

    queue: str
    pending: int = 0
    """Stored, not yet delivered."""
    ack_pending: int = 0
    """Delivered, not yet acknowledged: running, or waiting to be delivered again."""
    redelivered: int = 0
    """Of the unacknowledged ones, delivered more than once."""
    waiting_pulls: int = 0
    """Open fetch requests: worker slots idle on this queue right now."""
    dead_letters: int = 0
    """Messages of this queue in the dead-letter store."""


class DeadLetter(msgspec.Struct, frozen=True):
    """One dead-lettered message, with the reason it will never run."""

    seq: int
    """Its position in the dead-letter store (what ``qtasks dlq replay/drop`` take)."""
    queue: str
    data: bytes
    reason: str
    time_s: float
    """Unix time it was dead-lettered."""


#: Answers a control message; a reply (bytes) goes back to a :meth:`Broker.gather` caller.
ControlHandler = Callable[[bytes], Awaitable[bytes | None]]


class Delivery(abc.ABC):
    """One delivered message. Settle it exactly once with ack, nak or term."""

    data: bytes
    queue: str
    attempt: int
    """How many times the broker has delivered this message (1 on first delivery)."""

    @abc.abstractmethod
    async def ack(self) -> None:
        """Done: remove the message for good."""

    @abc.abstractmethod
    async def nak(self, delay_s: float | None = None) -> None:
        """Not done: deliver again after ``delay_s`` seconds (at once when None)."""

    @abc.abstractmethod
    async def term(self) -> None:
        """Never deliver again (poison message)."""

    @abc.abstractmethod
    async def in_progress(self) -> None:
        """Still working: restart the ack deadline."""


class KeepAlive(abc.ABC):
    """Keeps running deliveries alive from outside the worker's event loop, for tasks that
    may freeze it (code holding the GIL); see :meth:`Broker.start_keepalive`."""

    @abc.abstractmethod
    def track(self, d: Delivery) -> None:
        """``d`` starts running: keep its ack deadline away until :meth:`untrack`."""

    @abc.abstractmethod
    def untrack(self, d: Delivery) -> None:
        """``d`` is done (or given back)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop keeping anything alive."""


class Broker(abc.ABC):
    """A durable work queue. Every worker of a queue shares it; each message goes to one."""

    #: Largest message the broker accepts, bytes (known after connect).
    max_payload_bytes: int = 1024 * 1024
    #: Seconds a delivery may stay unsettled before the broker delivers it again.
    ack_wait_s: float = 30.0

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and provision (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close; unsettled deliveries go back to the queue."""

    @abc.abstractmethod
    async def publish(self, queue: str, data: bytes, *, msg_id: str) -> bool:
        """Store a message durably. Returns False when ``msg_id`` was a duplicate (dropped)."""

    async def publish_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        """Publish ``(queue, data, msg_id)`` items; brokers override to pipeline."""
        return [await self.publish(q, d, msg_id=m) for q, d, m in items]

    @abc.abstractmethod
    async def fetch(self, queue: str, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout_s`` for the first."""

    @abc.abstractmethod
    async def dead_letter(self, queue: str, data: bytes, reason: str) -> None:
        """Keep a copy of a message that will never run, with the reason."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise BrokerError when the broker does not answer."""

    async def start_keepalive(self, interval_s: float) -> KeepAlive | None:
        """Heartbeats that do not need the caller's event loop (None: this broker has none;
        its deliveries are kept alive by ``in_progress()`` only)."""
        return None

    # -- operations (optional: the CLI and the queue metrics use them) ----------------------
    def _unsupported(self, what: str) -> BrokerError:
        return BrokerError(f"{type(self).__name__} does not support {what}")

    async def queue_stats(self, queue: str) -> QueueStats:
        """The state of ``queue`` (pending, ack-pending, ..., dead letters)."""
        raise self._unsupported("queue statistics")

    async def queue_names(self) -> list[str]:
        """Queues that have a consumer or messages, sorted."""
        raise self._unsupported("listing queues")

    async def purge(self, queue: str) -> int:
        """Drop every message of ``queue`` (delivered or not); returns how many."""
        raise self._unsupported("purging")

    async def dead_letter_entries(
        self, queue: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters (of ``queue``, or of all queues), oldest first."""
        raise self._unsupported("listing dead letters")

    async def drop_dead_letter(self, seq: int) -> bool:
        """Delete dead letter ``seq``; False when there is none."""
        raise self._unsupported("dropping dead letters")

    # -- control messages to workers (revoke, ping); not durable ------------------------------
    async def listen_control(self, topic: str, handler: ControlHandler) -> None:
        """Call ``handler`` for every control message on ``topic`` while connected."""
        raise self._unsupported("control messages")

    async def broadcast(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every listener of ``topic`` (fire and forget)."""
        raise self._unsupported("control messages")

    async def gather(self, topic: str, data: bytes, timeout_s: float) -> list[bytes]:
        """Send ``data`` to every listener of ``topic``; the replies within ``timeout_s``."""
        raise self._unsupported("control messages")
