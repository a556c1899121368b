"""The Redis pub/sub multiplexer behind :class:`~qtasks.backends.redis.RedisBackend`.

One connection per event loop carries every waiter's subscription. A reader task owns it:
it dispatches notifications to the events of the current listeners, resolves subscription
acknowledgements, and reconnects (resubscribing every channel) with bounded backoff when the
connection drops or goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog
from redis.asyncio.client import PubSub

from qtasks.backends.base import Notification
from qtasks.errors import BackendError

log = structlog.get_logger("qtasks.backend")

#: The payload of a notification that carries no record: waiters read the key.
DONE = b"done"
#: Everything redis-py raises for a failed command or connection.
ANY_REDIS_ERROR: tuple[type[Exception], ...] = (rex.RedisError, OSError)
#: The reader reconnects after these delays, doubling up to the cap.
_RECONNECT_MIN_S = 0.05
_RECONNECT_MAX_S = 1.0
#: An idle connection is PINGed this often; no answer by the next tick means it is dead
#: (a half-open TCP connection never raises by itself).
_IDLE_PING_S = 15.0


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


class _OutOfStep(rex.ConnectionError):
    """The pub/sub acknowledgements no longer match the commands we sent: reconnect."""


class _Channel:
    """Waiters on one channel, and whether the server has confirmed the subscription."""

    __slots__ = ("confirmed", "events")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: set[asyncio.Event] = set()
        self.confirmed: asyncio.Future[None] = loop.create_future()

    def wake(self, data: bytes | None = None) -> None:
        """Set every waiter's event; ``data`` other than :data:`DONE` is the final record."""
        record = data if data is not None and data != DONE else None
        for event in self.events:
            if isinstance(event, Notification):
                event.record = record
            event.set()

    def on_subscribed(self) -> None:
        if not self.confirmed.done():
            self.confirmed.set_result(None)
        else:
            # Confirmed before, so this is a resubscription after a reconnect: a notification
            # may have been published in the gap, so every waiter reads the result again.
            self.wake()


#: Called when the server acknowledges one channel of a (UN)SUBSCRIBE.
_OnAck = Callable[[], None] | None


class _PubSubConnection:
    """One pub/sub connection and the acknowledgements it still owes us, in wire order."""

    __slots__ = ("acks", "pubsub")

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self.acks: deque[tuple[str, _OnAck]] = deque()


class Notifier:
    """One event loop's pub/sub connection, multiplexed over every waiter on that loop.

    The server answers the (UN)SUBSCRIBEs of one connection in order, so a FIFO of expected
    acknowledgements, appended under ``_lock`` together with the write, tells which command
    each acknowledgement answers, even when a channel is unsubscribed and subscribed again
    before the first answer arrives.
    """

    def __init__(self, client: aioredis.Redis, *, confirm_timeout_s: float) -> None:
        self._client = client
        self._confirm_timeout_s = confirm_timeout_s
        self._channels: dict[str, _Channel] = {}
        self._lock = asyncio.Lock()
        self._conn: _PubSubConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_error: BaseException | None = None
        self._closed = False
        self._dropping: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def listen(self, name: str) -> AsyncIterator[asyncio.Event]:
        """Subscribe to channel ``name``; the event is set on every message to it.

        Returns only once the server has confirmed the subscription.
        """
        if self._closed:
            raise BackendError("the Redis backend is closed")
        self._start_reader()
        event = Notification()
        ch: _Channel | None = None
        try:
            async with self._lock:
                ch = self._channels.get(name)
                if ch is None:
                    ch = self._channels[name] = _Channel(asyncio.get_running_loop())
                    if self._conn is not None:
                        await self._send(self._conn, "SUBSCRIBE", [(name, ch.on_subscribed)])
                    # else: the reader subscribes every channel when it (re)connects.
                ch.events.add(event)
            await self._wait_confirmed(name, ch)
            yield event
        finally:
            if ch is not None:
                ch.events.discard(event)
                if not ch.events:
                    # In the background: the waiter has its result and need not wait for the
                    # lock and the UNSUBSCRIBE's write (a listener joining meanwhile keeps it).
                    task = asyncio.get_running_loop().create_task(self._drop(name, ch))
                    self._dropping.add(task)
                    task.add_done_callback(self._dropping.discard)

    async def close(self) -> None:
        """Stop the reader and close the connection; pending subscriptions fail."""
        self._closed = True
        if self._dropping:
            await asyncio.gather(*self._dropping, return_exceptions=True)
        for ch in self._channels.values():
            if not ch.confirmed.done():
                ch.confirmed.set_result(None)  # _wait_confirmed sees _closed and raises
            ch.wake()
        task, self._reader = self._reader, None
        while task is not None and not task.done():
            # Repeat: on Python 3.11 an asyncio.wait_for inside redis-py's connect can swallow
            # a cancellation that lands just as its inner future completes (CPython gh-86296).
            task.cancel()
            await asyncio.wait([task], timeout=0.1)
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                await _discard(conn.pubsub)

    # -- listeners --------------------------------------------------------------------------
    async def _wait_confirmed(self, name: str, ch: _Channel) -> None:
        if not ch.confirmed.done():
            try:
                # asyncio.timeout, not wait_for, which can swallow a cancellation on 3.11;
                # shield: one waiter giving up must not cancel the others' confirmation.
                async with asyncio.timeout(self._confirm_timeout_s):
                    await asyncio.shield(ch.confirmed)
            except TimeoutError as e:
                cause = self._last_error
                why = f": {cause}" if cause is not None else ""
                raise BackendError(
                    f"Redis did not confirm the subscription to {name!r} "
                    f"within {self._confirm_timeout_s:g} s{why}"
                ) from (cause or e)
        if self._closed:
            raise BackendError("the Redis backend is closed")

    async def _drop(self, name: str, ch: _Channel) -> None:
        async with self._lock:
            # A new listener may have joined, or replaced the channel, while we waited.
            if ch.events or self._channels.get(name) is not ch:
                return
            del self._channels[name]
            if self._conn is not None:
                await self._send(self._conn, "UNSUBSCRIBE", [(name, None)])

    async def _send(
        self,
        conn: _PubSubConnection,
        command: str,
        acks: Sequence[tuple[str, _OnAck]],
        *,
        raise_errors: bool = False,
    ) -> None:
        """Write a (UN)SUBSCRIBE and expect its acknowledgements; hold ``_lock``."""
        conn.acks.extend(acks)
        names = [name for name, _ in acks]
        try:
            if command == "SUBSCRIBE":
                await conn.pubsub.subscribe(*names)
            else:
                await conn.pubsub.unsubscribe(*names)
        except ANY_REDIS_ERROR as e:
            self._last_error = e
            if raise_errors:
                raise
            # redis-py closed the socket on the failed write, so the reader's read fails too;
            # it reconnects and subscribes every channel still listened to.
            log.debug("redis_pubsub_write_failed", command=command, error=str(e))

    # -- the reader -------------------------------------------------------------------------
    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name="qtasks-redis-pubsub")
            self._reader.add_done_callback(_log_crash)

    async def _run(self) -> None:
        delay_s = _RECONNECT_MIN_S
        down_since: float | None = None
        while True:
            conn = _PubSubConnection(self._client.pubsub())
            try:
                await conn.pubsub.connect()  # type: ignore[no-untyped-call]
                async with self._lock:
                    self._conn = conn
                    acks = [(name, ch.on_subscribed) for name, ch in self._channels.items()]
                    if acks:
                        await self._send(conn, "SUBSCRIBE", acks, raise_errors=True)
                if down_since is not None:
                    down_s = round(time.monotonic() - down_since, 3)
                    log.info("redis_pubsub_restored", down_s=down_s)
                down_since, delay_s, self._last_error = None, _RECONNECT_MIN_S, None
                await self._pump(conn)
            except ANY_REDIS_ERROR as e:
                self._last_error = e
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("redis_pubsub_lost", error=str(e))
                else:
                    log.debug("redis_pubsub_reconnect_failed", error=str(e), retry_in_s=delay_s)
            finally:
                if self._conn is conn:
                    self._conn = None
                # Under the lock: a listener mid-write could otherwise reopen the discarded
                # PubSub (redis-py reconnects on send) and leak a connection nobody reads.
                async with self._lock:
                    await _discard(conn.pubsub)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _RECONNECT_MAX_S)

    async def _pump(self, conn: _PubSubConnection) -> None:
        """Dispatch messages until the connection fails (raises)."""
        ping_sent = False
        while True:
            msg: dict[str, Any] | None = await conn.pubsub.get_message(timeout=_IDLE_PING_S)
            if msg is None:
                if ping_sent:
                    raise rex.ConnectionError(f"no answer to PING within {_IDLE_PING_S:g} s")
                async with self._lock:
                    await conn.pubsub.ping()
                ping_sent = True
                continue
            ping_sent = False
            kind = msg["type"]
            if kind == "message":
                ch = self._channels.get(_text(msg["channel"]))
                if ch is not None:
                    data = msg["data"]
                    ch.wake(data.encode() if isinstance(data, str) else data)
            elif kind in ("subscribe", "unsubscribe"):
                got = _text(msg["channel"])
                if not conn.acks or conn.acks[0][0] != got:
                    expected = conn.acks[0][0] if conn.acks else None
                    raise _OutOfStep(f"{kind} acknowledgement for {got!r}, expected {expected!r}")
                _, on_ack = conn.acks.popleft()
                if on_ack is not None:
                    on_ack()


async def _discard(pubsub: PubSub) -> None:
    with contextlib.suppress(*ANY_REDIS_ERROR):
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # A bug, not an outage (those are retried): the next listener starts a new reader.
        log.error("redis_pubsub_reader_crashed", error=repr(task.exception()))
