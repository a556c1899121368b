"""The broker interface: publish bytes to a queue, fetch deliveries, settle them."""

from __future__ import annotations

import abc
from collections.abc import Sequence


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
