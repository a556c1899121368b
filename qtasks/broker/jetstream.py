"""The NATS JetStream broker: one work-queue stream, one durable pull consumer per queue.

Every NATS exception is mapped to :class:`BrokerError` here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from qtasks.broker._pull import Puller
from qtasks.broker.base import Broker, Delivery, KeepAlive
from qtasks.broker.jetstream_ops import JetStreamOps
from qtasks.config import NatsSettings
from qtasks.errors import BrokerError, MessageTooLarge

log = structlog.get_logger("qtasks.broker")

_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
#: Publishes in flight at once in publish_many (bounded so a huge batch cannot flood memory).
_PIPELINE_WINDOW = 512


def redact(url: str) -> str:
    """``url`` without passwords or tokens, for logs and errors."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def durable_name(stream: str, queue: str) -> str:
    """The durable consumer of ``queue`` (names may not contain '.', '*', '>' or spaces)."""
    return _NAME_RE.sub("_", f"{stream}_{queue}")


class JetStreamDelivery(Delivery):
    __slots__ = ("_msg", "attempt", "data", "queue", "reply")

    def __init__(self, msg: Msg, queue: str) -> None:
        self._msg = msg
        self.data = msg.data
        self.queue = queue
        self.reply = msg.reply
        """The subject its acknowledgements go to (any connection may send them)."""
        self.attempt = msg.metadata.num_delivered or 1

    async def ack(self) -> None:
        await _guard(self._msg.ack(), "ack")

    async def nak(self, delay_s: float | None = None) -> None:
        await _guard(self._msg.nak(delay=delay_s if delay_s and delay_s > 0 else None), "nak")

    async def term(self) -> None:
        await _guard(self._msg.term(), "term")

    async def in_progress(self) -> None:
        await _guard(self._msg.in_progress(), "in_progress")


async def _guard(coro: Any, what: str) -> Any:
    try:
        return await coro
    except nats.errors.MaxPayloadError as e:
        raise BrokerError(f"{what}: {e}") from e
    except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
        raise BrokerError(f"{what} failed: {type(e).__name__}: {e}") from e


class JetStreamBroker(JetStreamOps, Broker):
    """Tasks of queue ``q`` are stored on ``<prefix>.q`` in one work-queue stream (file storage,
    duplicate window for ``Nats-Msg-Id``); dead letters go to a separate limits stream."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        settings: NatsSettings | None = None,
        *,
        name: str = "qtasks",
    ) -> None:
        self.url = url
        self.s = settings or NatsSettings(url=url)
        self.ack_wait_s = self.s.ack_wait_s
        self._client_name = name
        self._nc: NATSClient | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[str, Puller] = {}
        self._provisioned: set[str] = set()
        self._lock = asyncio.Lock()
        self._closing = False
        self._stale = False
        """Set after a fetch failed: provision the streams again before binding again."""
        self._auth_failed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            return
        self._closing = False
        self._auth_failed = asyncio.Event()
        nc = NATSClient()
        connecting = asyncio.create_task(
            nc.connect(
                self.url.split(","),
                name=self._client_name,
                connect_timeout=self.s.connect_timeout_s,  # type: ignore[arg-type] # float works
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # ride through server restarts, forever
                reconnect_time_wait=0.5,  # type: ignore[arg-type] # nats-py's hint says int
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
            )
        )
        # With endless reconnects nats-py retries a refused login forever: fail fast instead.
        refused = asyncio.create_task(self._auth_failed.wait())
        try:
            await asyncio.wait(
                {connecting, refused},
                timeout=self.s.connect_timeout_s * 3,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            refused.cancel()
        if not connecting.done() or self._auth_failed.is_set():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
            with contextlib.suppress(Exception):
                await nc.close()
            why = "authorization violation" if self._auth_failed.is_set() else "timed out"
            raise BrokerError(f"cannot connect to NATS at {redact(self.url)}: {why}")
        try:
            connecting.result()
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise BrokerError(
                f"cannot connect to NATS at {redact(self.url)}: {type(e).__name__}: {e}"
            ) from e
        self._nc = nc
        self._js = self._nc.jetstream()
        self.max_payload_bytes = self._nc.max_payload
        await self._provision_streams()

    async def close(self) -> None:
        self._closing = True
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            await sub.stop()  # hands back what was delivered but not fetched
        nc, self._nc, self._js = self._nc, None, None
        self._provisioned.clear()
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception as e:
                log.debug("nats_close_failed", error=str(e))

    async def ping(self) -> None:
        nc = self._require()
        try:
            await nc.flush(timeout=2)
            await self._js_ctx().account_info()
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as e:
            raise BrokerError(f"NATS JetStream does not answer: {type(e).__name__}: {e}") from e

    async def _on_error(self, e: Exception) -> None:
        if isinstance(e, nats.errors.AuthorizationError) or "Authorization Violation" in str(e):
            self._auth_failed.set()
        log.warning("nats_error", error=f"{type(e).__name__}: {e}")

    async def _on_disconnect(self) -> None:
        if not self._closing:  # nats-py reports its own close as a disconnect too
            log.warning("nats_disconnected", url=redact(self.url))

    async def _on_reconnect(self) -> None:
        log.info("nats_reconnected", url=redact(self.url))

    def _require(self) -> NATSClient:
        if self._nc is None:
            raise BrokerError("broker is not connected")
        return self._nc

    def _js_ctx(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerError("broker is not connected")
        return self._js

    # -- provisioning ----------------------------------------------------------------------
    def subject(self, queue: str) -> str:
        return f"{self.s.subject_prefix}.{queue}"

    def dead_letter_subject(self, queue: str) -> str:
        return f"{self.s.dead_letter_prefix}.{queue}"

    async def _provision_streams(self) -> None:
        await self._ensure_stream(
            StreamConfig(
                name=self.s.stream,
                subjects=[f"{self.s.subject_prefix}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=self.s.duplicate_window_s,
                num_replicas=self.s.replicas,
                discard=DiscardPolicy.OLD,
            )
        )
        await self._ensure_stream(
            StreamConfig(
                name=self.s.dead_letter_stream,
                subjects=[f"{self.s.dead_letter_prefix}.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self.s.dead_letter_max_age_s,
                num_replicas=self.s.replicas,
            )
        )

    async def _ensure_stream(self, config: StreamConfig) -> None:
        js = self._js_ctx()
        assert config.name is not None
        try:
            await js.stream_info(config.name)
            return
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise BrokerError(f"cannot read stream {config.name}: {e}") from e
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as e:
            # Another process created it between our look-up and add (same settings): fine.
            try:
                await js.stream_info(config.name)
            except nats.js.errors.Error:
                raise BrokerError(f"cannot create stream {config.name}: {e}") from e
        except (nats.errors.Error, nats.js.errors.Error) as e:
            raise BrokerError(f"cannot create stream {config.name}: {e}") from e

    async def ensure_consumer(self, queue: str) -> None:
        """Create the queue's durable consumer, tolerating one that already exists."""
        if queue in self._provisioned:
            return
        js = self._js_ctx()
        durable = durable_name(self.s.stream, queue)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.s.ack_wait_s,
            max_deliver=self.s.max_deliver,
            filter_subject=self.subject(queue),
            max_ack_pending=-1,
        )
        try:
            await js.add_consumer(self.s.stream, config)
        except nats.js.errors.Error as e:
            # Two workers racing to create it, or one with older settings: use what exists.
            try:
                info = await js.consumer_info(self.s.stream, durable)
            except nats.js.errors.Error:
                raise BrokerError(f"cannot create consumer {durable}: {e}") from e
            if info.config.ack_wait != config.ack_wait:
                log.warning(
                    "consumer_settings_differ",
                    consumer=durable,
                    ack_wait_s=info.config.ack_wait,
                    wanted_s=config.ack_wait,
                )
        except nats.errors.Error as e:
            raise BrokerError(f"cannot create consumer {durable}: {e}") from e
        self._provisioned.add(queue)

    # -- messages ---------------------------------------------------------------------------
    async def publish(self, queue: str, data: bytes, *, msg_id: str) -> bool:
        if len(data) > self.max_payload_bytes:
            raise MessageTooLarge(len(data), self.max_payload_bytes)
        js = self._js_ctx()

        async def send() -> Any:
            headers = {"Nats-Msg-Id": msg_id}
            return await js.publish(
                self.subject(queue), data, headers=headers, stream=self.s.stream, timeout=5
            )

        try:
            try:
                ack = await send()
            except nats.js.errors.NoStreamResponseError:
                # No stream answers: the server lost it (restarted without its storage, or
                # it was deleted). Create it again, once, and retry.
                async with self._lock:
                    await self._provision_streams()
                ack = await send()
        except nats.errors.MaxPayloadError as e:
            raise MessageTooLarge(len(data), self.max_payload_bytes) from e
        except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
            raise BrokerError(
                f"publish to {self.subject(queue)} failed: {type(e).__name__}: {e}"
            ) from e
        return not ack.duplicate

    async def publish_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        """Pipelined: up to a window of publishes in flight, each still confirmed by the stream."""
        for _, data, _ in items:
            if len(data) > self.max_payload_bytes:
                raise MessageTooLarge(len(data), self.max_payload_bytes)
        out: list[bool] = []
        for start in range(0, len(items), _PIPELINE_WINDOW):
            chunk = items[start : start + _PIPELINE_WINDOW]
            out.extend(await asyncio.gather(*(self.publish(q, d, msg_id=m) for q, d, m in chunk)))
        return out

    async def _subscription(self, queue: str) -> Puller:
        sub = self._subs.get(queue)
        if sub is None:
            async with self._lock:
                sub = self._subs.get(queue)
                if sub is None:
                    if self._stale:
                        await self._provision_streams()
                        self._stale = False
                    await self.ensure_consumer(queue)
                    sub = Puller(self._require(), self.s.stream, durable_name(self.s.stream, queue))
                    try:
                        await sub.start()
                    except (nats.errors.Error, OSError) as e:
                        raise BrokerError(f"cannot bind to queue {queue}: {e}") from e
                    self._subs[queue] = sub
        return sub

    async def fetch(self, queue: str, max_messages: int, timeout_s: float) -> list[Delivery]:
        sub = await self._subscription(queue)
        try:
            msgs = await sub.fetch(max_messages, timeout_s)
        except (BrokerError, nats.errors.Error, OSError) as e:
            # The consumer (or its stream) may be gone: a server restarted without its
            # storage, a purge, a cluster moving it. Bind again, from scratch, next time.
            await self._forget(queue, sub)
            raise BrokerError(f"fetch from {queue} failed: {type(e).__name__}: {e}") from e
        return [JetStreamDelivery(m, queue) for m in msgs]

    async def _forget(self, queue: str, sub: Puller) -> None:
        async with self._lock:
            if self._subs.get(queue) is sub:
                del self._subs[queue]
                self._provisioned.discard(queue)
                self._stale = True
        await sub.stop()

    async def dead_letter(self, queue: str, data: bytes, reason: str) -> None:
        js = self._js_ctx()
        # Headers carry one line each; keep the reason readable but bounded.
        reason_line = " ".join(reason.split())[:1000]
        try:
            await js.publish(
                self.dead_letter_subject(queue),
                data,
                headers={"Qtasks-Reason": reason_line, "Qtasks-Queue": queue},
                stream=self.s.dead_letter_stream,
                timeout=5,
            )
        except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
            raise BrokerError(f"dead-letter publish failed: {type(e).__name__}: {e}") from e

    async def start_keepalive(self, interval_s: float) -> KeepAlive | None:
        """A helper process with its own connection that sends ``in_progress`` for tracked
        deliveries every ``interval_s``, even while this process's event loop is frozen by a
        task holding the GIL (see :mod:`qtasks.broker._keepalive`)."""
        from qtasks.broker._keepalive import KeepAliveProcess

        ka = KeepAliveProcess(
            self.url.split(","), interval_s, name=f"{self._client_name}-keepalive"
        )
        try:
            await ka.start()
        except OSError as e:
            log.warning("keepalive_start_failed", error=str(e))
            return None
        log.info("keepalive_started", pid=ka.pid, interval_s=round(interval_s, 3))
        return ka

    # -- inspection (tests, CLI) ----------------------------------------------------------
    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        """Up to ``limit`` dead letters of ``queue`` as ``(data, reason)``, oldest first."""
        js = self._js_ctx()
        sub = await js.pull_subscribe(
            self.dead_letter_subject(queue), stream=self.s.dead_letter_stream
        )
        out: list[tuple[bytes, str]] = []
        try:
            while len(out) < limit:
                try:
                    msgs = await sub.fetch(min(100, limit - len(out)), timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for m in msgs:
                    out.append((m.data, (m.headers or {}).get("Qtasks-Reason", "")))
                    await m.ack()
        finally:
            await sub.unsubscribe()
        return out

    async def delete_streams(self) -> None:
        """Delete both streams (tests; ``qtasks purge --all``)."""
        js = self._js_ctx()
        for name in (self.s.stream, self.s.dead_letter_stream):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
        self._subs.clear()
        self._provisioned.clear()
