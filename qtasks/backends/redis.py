"""The Redis result backend: one key per task with a TTL, and a pub/sub notification.

Layout::

    <prefix>:result:<task_id>   msgpack TaskResult, written with SET ... PX <ttl>
    <prefix>:done:<task_id>     channel; PUBLISHed by the same script as the SET of a final
                                state, with the record itself when small (else "done")
    <prefix>:revoked:<task_id>  set with the REVOKED record; a worker's later writes are refused

Waiters on one event loop share one pub/sub connection (see :mod:`qtasks.backends._redis_pubsub`).
Every redis-py exception is mapped to :class:`~qtasks.errors.BackendError` here, at the
boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from qtasks.backends._redis_batch import Batcher
from qtasks.backends._redis_pubsub import ANY_REDIS_ERROR, DONE, Notifier
from qtasks.backends.base import ResultBackend
from qtasks.config import RedisSettings
from qtasks.errors import BackendError

log = structlog.get_logger("qtasks.backend")

T = TypeVar("T")

#: Worth retrying: the server went away or is restarting (BusyLoadingError is a subclass).
_TRANSIENT: tuple[type[Exception], ...] = (rex.ConnectionError, rex.TimeoutError, OSError)
#: Subclasses of ConnectionError that a retry cannot fix.
_PERMANENT: tuple[type[Exception], ...] = (rex.AuthenticationError, rex.AuthorizationError)

#: Connections per event loop (a URL's ``?max_connections=`` overrides it).
_MAX_CONNECTIONS = 50
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 0.5
#: A final record up to this size rides along with its notification, so the waiter does not
#: read it back; a larger one is announced with DONE and read.
_PUSH_MAX_BYTES = 16 * 1024


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


#: SET a final result and PUBLISH its notification atomically, in one command.
_SET_AND_PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
"""


#: A worker's write: refused (0) once the task is revoked, else SET (and PUBLISH when final).
_SET_UNLESS_REVOKED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""

#: Revoke: store the REVOKED record and the revoked marker only if the record is still the
#: one the caller read (ARGV[1], '' for none): a compare-and-set, then notify.
_REVOKE_SWAP = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""


def _ttl_ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))


class _LoopState:
    """The connections of one event loop (asyncio connections cannot cross loops)."""

    def __init__(self, client: aioredis.Redis, confirm_timeout_s: float) -> None:
        self.client = client
        self.notifier = Notifier(client, confirm_timeout_s=confirm_timeout_s)
        # The hot commands (a worker's reads and writes, a waiter's read) are pipelined.
        # Their scripts go as EVAL, not EVALSHA: a pipeline cannot reload a script that a
        # restarted or flushed server forgot, and Redis caches the compiled body anyway.
        self.batch = Batcher(client)
        # EVALSHA, loading the script again after a NOSCRIPT (a restarted or flushed server).
        self.revoke_swap = client.register_script(_REVOKE_SWAP)

    async def close(self) -> None:
        try:
            await self.batch.close()
            await self.notifier.close()
        finally:
            with contextlib.suppress(*ANY_REDIS_ERROR):
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

    def revoked_key(self, task_id: str) -> str:
        """The key marking ``task_id`` revoked (a worker's writes are refused while it lives)."""
        return f"{self.key_prefix}:revoked:{task_id}"

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
        batch = self._state().batch
        data = await self._call(lambda: batch.submit("GET", self.result_key(task_id)), "GET")
        # bytes unless the URL asked for decode_responses
        return data.encode() if isinstance(data, str) else data

    async def _set(self, task_id: str, data: bytes, ttl_s: float, *, notify: bool) -> None:
        batch = self._state().batch
        key = self.result_key(task_id)
        ttl_ms = _ttl_ms(ttl_s)
        # Safe to repeat: the SET is idempotent and a second notification only costs a re-read.
        if notify:
            # SET and PUBLISH in one atomic command (a script): one round trip, and a waiter
            # woken by the PUBLISH always finds the result.
            channel = self.done_channel(task_id)
            note = data if len(data) <= _PUSH_MAX_BYTES else DONE
            await self._call(
                lambda: batch.submit("EVAL", _SET_AND_PUBLISH, 1, key, data, ttl_ms, channel, note),
                "SET",
            )
        else:
            await self._call(lambda: batch.submit("SET", key, data, "PX", ttl_ms), "SET")

    async def _set_if_absent(self, task_id: str, data: bytes, ttl_s: float) -> bytes | None:
        batch = self._state().batch
        key = self.result_key(task_id)
        # SET NX GET (Redis >= 7.0): stores only when absent and returns what was there.
        old = await self._call(
            lambda: batch.submit("SET", key, data, "NX", "GET", "PX", _ttl_ms(ttl_s), get=True),
            "SET NX",
        )
        if old is None or isinstance(old, bytes):
            return old
        if isinstance(old, str):  # the URL asked for decode_responses
            return old.encode()
        raise BackendError(f"Redis SET NX GET answered {old!r}")

    async def _delete(self, task_id: str) -> None:
        client = self._state().client
        keys = (self.result_key(task_id), self.revoked_key(task_id))
        await self._call(lambda: client.delete(*keys), "DEL")

    async def _set_unless_revoked(
        self, task_id: str, data: bytes, ttl_s: float, *, notify: bool
    ) -> bool:
        batch = self._state().batch
        keys = (self.result_key(task_id), self.revoked_key(task_id))
        channel, note = (
            (self.done_channel(task_id), data if len(data) <= _PUSH_MAX_BYTES else DONE)
            if notify
            else ("", b"")
        )
        stored = await self._call(
            lambda: batch.submit(
                "EVAL", _SET_UNLESS_REVOKED, 2, *keys, data, _ttl_ms(ttl_s), channel, note
            ),
            "SET",
        )
        return bool(stored)

    async def _revoke_swap(
        self, task_id: str, expected: bytes | None, data: bytes, ttl_s: float
    ) -> bool:
        state = self._state()
        keys = [self.result_key(task_id), self.revoked_key(task_id)]
        note = data if len(data) <= _PUSH_MAX_BYTES else DONE
        args: list[bytes | str | int] = [
            expected or b"", data, _ttl_ms(ttl_s), self.done_channel(task_id), note
        ]
        swapped = await self._call(lambda: state.revoke_swap(keys=keys, args=args), "REVOKE")
        return bool(swapped)

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
