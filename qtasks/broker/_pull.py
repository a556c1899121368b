"""Pull requests for one queue's durable consumer, with at most one request open at a time.

nats-py's ``PullSubscription.fetch()`` sends a no-wait probe and then, when the queue is
empty, a second, waiting request, and the server answers most probes with a status
message. Under a steady flow of short tasks that is two requests and a status message for
every one or two tasks: measured, about a sixth of the worker's CPU per no-op task. Here one
request waits on the server (``expires``) until messages come; the next one is sent only
when it has delivered its whole batch or is over (408 expired, 409, ...).

A request asks for as many messages as the caller has free slots, so what it delivers never
exceeds them. Messages it delivers after :meth:`Puller.fetch` returned stay in order for the
next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from qtasks.errors import BrokerError

#: JetStream's API subject prefix (the default; qtasks uses no JetStream domain).
_API_PREFIX = "$JS.API"
#: A request is given up this long after it should have expired. The server answers every
#: request (messages, or a 408 when it expires), except when the consumer or its stream is
#: gone (it restarted without its storage, someone deleted it) or the connection dropped:
#: then fetch raises, and the broker binds again, creating the consumer when it is missing.
_LOST_REQUEST_GRACE_S = 0.5
#: Shortest ``expires`` worth asking for (the server rejects tiny ones).
_MIN_EXPIRES_S = 0.01


class Puller:
    """Fetches from the durable consumer ``durable`` of ``stream`` over ``nc``."""

    def __init__(self, nc: NATSClient, stream: str, durable: str) -> None:
        self._nc = nc
        self._subject = f"{_API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._ready: deque[Msg] = deque()
        self._changed = asyncio.Event()
        self._open = 0
        """Messages the open request may still deliver (0: none open)."""
        self._open_until = 0.0
        """When the open request is given up for lost (monotonic seconds)."""
        self._answered = False
        """Whether anything came since the open request was sent."""
        self._error: str | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop listening; messages delivered but not fetched go back to the stream at once
        (nak) rather than after ``ack_wait``."""
        sub, self._sub = self._sub, None
        left, self._ready = list(self._ready), deque()
        with contextlib.suppress(Exception):  # the connection may be gone already
            for msg in left:
                await msg.nak()
            if sub is not None:
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        self._answered = True
        if not status:  # a task
            self._ready.append(msg)
            self._open = max(0, self._open - 1)
        elif status == "100":  # an idle heartbeat (not asked for)
            return
        elif status in ("404", "408"):  # nothing there / the request expired: it is over
            self._open = 0
        else:
            # 409 (leadership change, too many waiting requests, consumer deleted, ...) or
            # 503 (no responders: the consumer or its stream is gone): the request is over.
            self._open = 0
            description = (msg.headers or {}).get("Description", "")
            if status != "409" or "deleted" in description.lower():
                self._error = f"{status} {description}".strip()
        self._changed.set()

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Msg]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first one;
        ``[]`` when none came. Raises :class:`BrokerError` when the consumer is gone."""
        deadline = time.monotonic() + timeout_s
        while True:
            # Cleared before anything here awaits: a message arriving meanwhile sets it again.
            self._changed.clear()
            if self._ready:
                count = min(max_messages, len(self._ready))
                return [self._ready.popleft() for _ in range(count)]
            if self._error is not None:
                error, self._error = self._error, None
                raise BrokerError(f"pull request failed: {error}")
            now = time.monotonic()
            left_s = deadline - now
            if left_s <= 0:
                return []
            if self._open > 0 and now > self._open_until and not self._answered:
                self._open = 0
                raise BrokerError("no answer to a pull request: the consumer may be gone")
            if self._open <= 0 or now > self._open_until:
                expires_s = max(_MIN_EXPIRES_S, left_s)
                request = b'{"batch":%d,"expires":%d}' % (max_messages, int(expires_s * 1e9))
                await self._nc.publish(self._subject, request, reply=self._inbox)
                self._open = max_messages
                self._answered = False
                self._open_until = now + expires_s + _LOST_REQUEST_GRACE_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(deadline, self._open_until) - time.monotonic()):
                    await self._changed.wait()
