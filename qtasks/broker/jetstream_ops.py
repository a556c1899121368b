"""Operations on the JetStream broker: queue state, purge, dead letters, control messages.

A mixin of :class:`~qtasks.broker.jetstream.JetStreamBroker`, kept apart from the hot path
(publish, fetch, settle). Used by ``qtasks inspect/purge/dlq``, the queue gauges and revoke.

Control messages are core NATS (not stored): subject ``<subject_prefix>-control.<topic>``,
outside the stream's ``<subject_prefix>.>``, so they never become tasks.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from qtasks.broker.base import ControlHandler, DeadLetter, QueueStats
from qtasks.config import NatsSettings
from qtasks.errors import BrokerError

log = structlog.get_logger("qtasks.broker")

_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)
#: JetStream's API subject prefix (the default; qtasks uses no JetStream domain).
_JS_API = "$JS.API"


class JetStreamOps:
    """Mixed into JetStreamBroker, which provides the attributes declared here."""

    s: NatsSettings

    def _require(self) -> NATSClient:
        raise NotImplementedError

    def _js_ctx(self) -> JetStreamContext:
        raise NotImplementedError

    def subject(self, queue: str) -> str:
        raise NotImplementedError

    def dead_letter_subject(self, queue: str) -> str:
        raise NotImplementedError

    def control_subject(self, topic: str) -> str:
        return f"{self.s.subject_prefix}-control.{topic}"

    # -- queues ----------------------------------------------------------------------------
    async def _subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        js = self._js_ctx()
        try:
            info = await js.stream_info(stream, subjects_filter=subjects)
        except nats.js.errors.NotFoundError:
            return {}
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot read stream {stream}: {type(e).__name__}: {e}") from e
        return dict(info.state.subjects or {})

    async def queue_stats(self, queue: str) -> QueueStats:
        from qtasks.broker.jetstream import durable_name

        js = self._js_ctx()
        dead = await self._subject_counts(
            self.s.dead_letter_stream, self.dead_letter_subject(queue)
        )
        dead_letters = sum(dead.values())
        try:
            info = await js.consumer_info(self.s.stream, durable_name(self.s.stream, queue))
        except nats.js.errors.NotFoundError:
            # No worker ever consumed it: whatever is stored is pending.
            stored = await self._subject_counts(self.s.stream, self.subject(queue))
            return QueueStats(queue, pending=sum(stored.values()), dead_letters=dead_letters)
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot read queue {queue}: {type(e).__name__}: {e}") from e
        return QueueStats(
            queue,
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            redelivered=info.num_redelivered or 0,
            waiting_pulls=info.num_waiting or 0,
            dead_letters=dead_letters,
        )

    async def queue_names(self) -> list[str]:
        names: set[str] = set()
        prefix = f"{self.s.subject_prefix}."
        for subject in await self._subject_counts(self.s.stream, f"{prefix}>"):
            names.add(subject.removeprefix(prefix))
        dlq_prefix = f"{self.s.dead_letter_prefix}."
        for subject in await self._subject_counts(self.s.dead_letter_stream, f"{dlq_prefix}>"):
            names.add(subject.removeprefix(dlq_prefix))
        js = self._js_ctx()
        try:
            consumers = await js.consumers_info(self.s.stream)
        except nats.js.errors.NotFoundError:
            consumers = []
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot list consumers: {type(e).__name__}: {e}") from e
        for c in consumers:
            subject = c.config.filter_subject or ""
            if subject.startswith(prefix) and c.config.durable_name:
                names.add(subject.removeprefix(prefix))
        return sorted(names)

    async def purge(self, queue: str) -> int:
        # The raw API request: nats-py's purge_stream drops the count of purged messages.
        body = json.dumps({"filter": self.subject(queue)}).encode()
        try:
            msg = await self._require().request(
                f"{_JS_API}.STREAM.PURGE.{self.s.stream}", body, timeout=5
            )
        except _NATS_ERRORS as e:
            raise BrokerError(f"purge of {queue} failed: {type(e).__name__}: {e}") from e
        resp: dict[str, Any] = json.loads(msg.data)
        if "error" in resp:
            err = resp["error"]
            if err.get("err_code") == 10059:  # stream not found: nothing to purge
                return 0
            raise BrokerError(f"purge of {queue} failed: {err.get('description', err)}")
        return int(resp.get("purged", 0))

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letter_entries(
        self, queue: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        js = self._js_ctx()
        subject = (
            self.dead_letter_subject(queue) if queue else f"{self.s.dead_letter_prefix}.>"
        )
        # An ephemeral consumer that acknowledges nothing: reading leaves the letters there.
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=10.0,
        )
        try:
            sub = await js.pull_subscribe(subject, stream=self.s.dead_letter_stream, config=config)
        except nats.js.errors.NotFoundError:
            return []
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot read dead letters: {type(e).__name__}: {e}") from e
        out: list[DeadLetter] = []
        dlq_prefix = f"{self.s.dead_letter_prefix}."
        try:
            while len(out) < limit:
                try:
                    msgs = await sub.fetch(min(256, limit - len(out)), timeout=0.5)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for m in msgs:
                    headers = m.headers or {}
                    md = m.metadata
                    out.append(
                        DeadLetter(
                            seq=md.sequence.stream,
                            queue=headers.get("Qtasks-Queue")
                            or m.subject.removeprefix(dlq_prefix),
                            data=m.data,
                            reason=headers.get("Qtasks-Reason", ""),
                            time_s=md.timestamp.timestamp() if md.timestamp else 0.0,
                        )
                    )
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot read dead letters: {type(e).__name__}: {e}") from e
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()
        return out

    async def drop_dead_letter(self, seq: int) -> bool:
        try:
            return bool(await self._js_ctx().delete_msg(self.s.dead_letter_stream, seq))
        except nats.js.errors.NotFoundError:
            return False
        except nats.js.errors.BadRequestError:
            return False  # "no message found"
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot drop dead letter {seq}: {type(e).__name__}: {e}") from e

    # -- control ---------------------------------------------------------------------------
    async def listen_control(self, topic: str, handler: ControlHandler) -> None:
        nc = self._require()

        async def on_msg(msg: Msg) -> None:
            try:
                reply = await handler(msg.data)
                if reply is not None and msg.reply:
                    await nc.publish(msg.reply, reply)
            except Exception as e:  # a bad control message must not kill the subscription
                log.warning("control_message_failed", topic=topic, error=repr(e))

        try:
            await nc.subscribe(self.control_subject(topic), cb=on_msg)
            await nc.flush(timeout=5)
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot listen to {topic}: {type(e).__name__}: {e}") from e

    async def broadcast(self, topic: str, data: bytes) -> None:
        nc = self._require()
        try:
            await nc.publish(self.control_subject(topic), data)
            await nc.flush(timeout=5)
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot send {topic}: {type(e).__name__}: {e}") from e

    async def gather(self, topic: str, data: bytes, timeout_s: float) -> list[bytes]:
        nc = self._require()
        inbox = nc.new_inbox()
        out: list[bytes] = []
        try:
            sub = await nc.subscribe(inbox)
            try:
                await nc.publish(self.control_subject(topic), data, reply=inbox)
                await nc.flush(timeout=5)
                deadline = time.monotonic() + timeout_s
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        msg = await sub.next_msg(timeout=left)
                    except (TimeoutError, nats.errors.TimeoutError):
                        break
                    out.append(msg.data)
            finally:
                with contextlib.suppress(*_NATS_ERRORS):
                    await sub.unsubscribe()
        except _NATS_ERRORS as e:
            raise BrokerError(f"cannot ask {topic}: {type(e).__name__}: {e}") from e
        return out
