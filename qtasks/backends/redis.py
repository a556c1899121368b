"""The Redis result backend: one key per task with a TTL, and a pub/sub notification.

Layout::

    <prefix>:result:<task_id>   msgpack TaskResult, written with SET ... PX <ttl>
    <prefix>:done:<task_id>     channel; PUBLISHed in the same MULTI as the SET of a final state

Waiters on one event loop share one pub/sub connection (see :class:`_Notifier`).
Every redis-py exception is mapped to :class:`~qtasks.errors.BackendError` here, at the
boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.retry import Retry

from qtasks.backends.base import ResultBackend
from qtasks.config import RedisSettings
from qtasks.errors import BackendError

log = structlog.get_logger("qtasks.backend")

T = TypeVar("T")

#: Worth retrying: the server went away or is restarting (BusyLoadingError is a subclass).
_TRANSIENT: tuple[type[Exception], ...] = (rex.ConnectionError, rex.TimeoutError, OSError)
#: Subclasses of ConnectionError that a retry cannot fix.
_PERMANENT: tuple[type[Exception], ...] = (rex.AuthenticationError, rex.AuthorizationError)
_ANY_REDIS: tuple[type[Exception], ...] = (rex.RedisError, OSError)

#: Connections per event loop (a URL's ``?max_connections=`` overrides it).
_MAX_CONNECTIONS = 50
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 0.5
#: The pub/sub reader reconnects after these delays, doubling up to the cap.
_RECONNECT_MIN_S = 0.05
_RECONNECT_MAX_S = 1.0
#: An idle pub/sub connection is PINGed this often; no answer by the next tick means it is dead
#: (a half-open TCP connection never raises by itself).
_IDLE_PING_S = 15.0
#: Payload of the notification; waiters re-read the key, so only the channel matters.
_DONE = b"done"


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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

    def wake(self) -> None:
        for event in self.events:
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


class _Notifier:
    """One event loop's pub/sub connection, multiplexed over every waiter on that loop.

    A reader task owns the connection: it dispatches notifications to the events of the
    current listeners, resolves subscription acknowledgements, and reconnects (resubscribing
    every channel) with bounded backoff when the connection drops. The server answers the
    (UN)SUBSCRIBEs of one connection in order, so a FIFO of expected acknowledgements,
    appended under ``_lock`` together with the write, tells which command each one answers.
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

    @contextlib.asynccontextmanager
    async def listen(self, name: str) -> AsyncIterator[asyncio.Event]:
        """Subscribe to channel ``name``; the event is set on every message to it.

        Returns only once the server has confirmed the subscription.
        """
        if self._closed:
            raise BackendError("the Redis backend is closed")
        self._start_reader()
        event = asyncio.Event()
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
                    await self._drop(name, ch)

    async def close(self) -> None:
        """Stop the reader and close the connection; pending subscriptions fail."""
        self._closed = True
        for ch in self._channels.values():
            if not ch.confirmed.done():
                ch.confirmed.set_result(None)  # _wait_confirmed sees _closed and raises
            ch.wake()
        task, self._reader = self._reader, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                await _discard(conn.pubsub)

    # -- listeners --------------------------------------------------------------------------
    async def _wait_confirmed(self, name: str, ch: _Channel) -> None:
        if not ch.confirmed.done():
            try:
                # shield: one waiter giving up must not cancel the others' confirmation
                await asyncio.wait_for(asyncio.shield(ch.confirmed), self._confirm_timeout_s)
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
        except _ANY_REDIS as e:
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
            except _ANY_REDIS as e:
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
                    ch.wake()
            elif kind in ("subscribe", "unsubscribe"):
                got = _text(msg["channel"])
                if not conn.acks or conn.acks[0][0] != got:
                    expected = conn.acks[0][0] if conn.acks else None
                    raise _OutOfStep(f"{kind} acknowledgement for {got!r}, expected {expected!r}")
                _, on_ack = conn.acks.popleft()
                if on_ack is not None:
                    on_ack()


async def _discard(pubsub: PubSub) -> None:
    with contextlib.suppress(*_ANY_REDIS):
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # A bug, not an outage (those are retried): the next listener starts a new reader.
        log.error("redis_pubsub_reader_crashed", error=repr(task.exception()))


class _LoopState:
    """The connections of one event loop (asyncio connections cannot cross loops)."""

    def __init__(self, client: aioredis.Redis, confirm_timeout_s: float) -> None:
        self.client = client
        self.notifier = _Notifier(client, confirm_timeout_s=confirm_timeout_s)

    async def close(self) -> None:
        try:
            await self.notifier.close()
        finally:
            with contextlib.suppress(*_ANY_REDIS):
                await self.client.aclose()


class RedisBackend(ResultBackend):
    """Results in Redis with a TTL; waiters are woken through pub/sub.

    ``url`` is a redis-py URL: ``redis://[[user]:password@]host[:port][/db]``, or ``rediss://``
    for TLS; query arguments such as ``?client_name=...`` or ``?socket_timeout=5`` are passed
    to redis-py and override the defaults here. The instance may be used from several event
    loops; each loop gets its own connections, opened on first use.

    Transient failures (connection refused or lost, timeouts) are retried for up to
    ``retry_window_s`` seconds before :class:`~qtasks.errors.BackendError` is raised, so a
    Redis restart does not fail a waiter; :meth:`ping` never retries.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = "qtasks",
        result_ttl_s: float = 86400.0,
        socket_timeout_s: float = 2.0,
        retry_window_s: float = 3.0,
    ) -> None:
        super().__init__(result_ttl_s)
        self.url = url
        self.key_prefix = key_prefix
        self.socket_timeout_s = socket_timeout_s
        self.retry_window_s = retry_window_s
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    @classmethod
    def from_settings(cls, s: RedisSettings) -> Self:
        """A backend configured from the ``[redis]`` settings section."""
        return cls(s.url, key_prefix=s.key_prefix, result_ttl_s=s.result_ttl_s)

    def __repr__(self) -> str:
        return f"RedisBackend({redact_url(self.url)!r}, key_prefix={self.key_prefix!r})"

    def result_key(self, task_id: str) -> str:
        """The key holding ``task_id``'s result."""
        return f"{self.key_prefix}:result:{task_id}"

    def done_channel(self, task_id: str) -> str:
        """The channel notified when ``task_id`` reaches a final state."""
        return f"{self.key_prefix}:done:{task_id}"

    # -- lifecycle --------------------------------------------------------------------------
    async def connect(self) -> None:
        """Set up this loop's client (idempotent). No I/O: connections open on first use,
        so the application may start before Redis does; :meth:`ping` checks reachability."""
        self._state()

    async def close(self) -> None:
        """Close this loop's connections and stop its pub/sub reader."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.close()

    async def ping(self) -> None:
        """Raise :class:`BackendError` unless Redis answers within ``socket_timeout_s``."""
        client = self._state().client
        await self._call(lambda: client.ping(), "PING", retry=False)

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            # Connections of a closed loop cannot be closed any more; just forget them.
            for old in [lp for lp in self._states if lp.is_closed()]:
                del self._states[old]
            # Blocking pool: a burst of waiters queues for a connection instead of failing
            # with "Too many connections" (the pub/sub connection takes one slot).
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=_MAX_CONNECTIONS,
                timeout=self.socket_timeout_s,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=self.socket_timeout_s,
                # Retries are ours (_call and the pub/sub reader): redis-py's would replay
                # subscriptions behind the notifier's back and make ping() slow.
                retry=Retry(NoBackoff(), 0),
            )
            client = aioredis.Redis.from_pool(pool)
            state = self._states[loop] = _LoopState(
                client, confirm_timeout_s=self.retry_window_s + self.socket_timeout_s
            )
        return state

    # -- storage ----------------------------------------------------------------------------
    async def _get(self, task_id: str) -> bytes | None:
        client = self._state().client
        data = await self._call(lambda: client.get(self.result_key(task_id)), "GET")
        # bytes unless the URL asked for decode_responses
        return data.encode() if isinstance(data, str) else data

    async def _set(self, task_id: str, data: bytes, ttl_s: float, *, notify: bool) -> None:
        client = self._state().client
        ttl_ms = max(1, round(ttl_s * 1000))

        async def write() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self.result_key(task_id), data, px=ttl_ms)
                if notify:
                    pipe.publish(self.done_channel(task_id), _DONE)
                await pipe.execute()

        # Safe to repeat: the SET is idempotent and a second notification only costs a re-read.
        await self._call(write, "SET")

    async def _delete(self, task_id: str) -> None:
        client = self._state().client
        await self._call(lambda: client.delete(self.result_key(task_id)), "DEL")

    def _listen(self, task_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        return self._state().notifier.listen(self.done_channel(task_id))

    async def _call(
        self, op: Callable[[], Awaitable[T]], what: str, *, retry: bool = True
    ) -> T:
        """Run ``op``, retrying transient failures for ``retry_window_s``; map errors."""
        deadline = time.monotonic() + (self.retry_window_s if retry else 0.0)
        delay_s = _RETRY_MIN_S
        while True:
            try:
                return await op()
            except _PERMANENT as e:
                raise BackendError(f"Redis {what} failed: {e}") from e
            except _TRANSIENT as e:
                if time.monotonic() + delay_s > deadline:
                    raise BackendError(
                        f"Redis {what} failed ({redact_url(self.url)}): {e}"
                    ) from e
                log.debug("redis_retry", command=what, error=str(e), delay_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
            except rex.RedisError as e:
                raise BackendError(f"Redis {what} failed: {e}") from e
