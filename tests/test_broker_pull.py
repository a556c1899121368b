"""The JetStream broker's fetch (qtasks/broker/_pull.py) against the real NATS server:
never more deliveries than asked for, leftovers kept in order, a prompt wake-up, and a
clear error when the consumer disappears."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from qtasks.broker.jetstream import JetStreamBroker, durable_name
from qtasks.errors import BrokerError
from tests.support import NATS_URL, REDIS_URL, isolated_env, settings_from

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker() -> AsyncIterator[JetStreamBroker]:
    settings = settings_from(isolated_env(NATS_URL, REDIS_URL))  # a stream of its own
    b = JetStreamBroker(settings.nats.url, settings.nats)
    await b.connect()
    try:
        yield b
    finally:
        await b.delete_streams()
        await b.close()


async def ack_pending(b: JetStreamBroker, queue: str) -> int:
    """Deliveries the server has handed out and not yet seen settled."""
    info = await b._js_ctx().consumer_info(b.s.stream, durable_name(b.s.stream, queue))
    return int(info.num_ack_pending or 0)


async def test_fetch_takes_no_more_than_asked_and_keeps_the_rest_queued_in_order(
    broker: JetStreamBroker,
) -> None:
    for i in range(7):
        await broker.publish("q", f"m{i}".encode(), msg_id=f"id-{i}")
    first = await broker.fetch("q", 3, 2.0)
    assert [d.data for d in first] == [b"m0", b"m1", b"m2"]
    # The server delivered exactly what was asked for: the other four stay in the stream.
    assert await ack_pending(broker, "q") == 3
    got = [d.data for d in first]
    for _ in range(4):
        batch = await broker.fetch("q", 2, 2.0)
        assert 1 <= len(batch) <= 2
        got += [d.data for d in batch]
        if len(got) == 7:
            break
    assert got == [f"m{i}".encode() for i in range(7)]
    for d in first:
        await d.ack()
    assert await broker.fetch("q", 4, 0.3) == []


async def test_a_waiting_fetch_returns_as_soon_as_a_task_is_published(
    broker: JetStreamBroker,
) -> None:
    await broker.ensure_consumer("q")
    fetching = asyncio.create_task(broker.fetch("q", 4, 5.0))
    await asyncio.sleep(0.3)  # the request is waiting on the server now
    t0 = time.monotonic()
    await broker.publish("q", b"late", msg_id="late-1")
    got = await fetching
    assert [d.data for d in got] == [b"late"]
    assert time.monotonic() - t0 < 1.0  # not the 5 s timeout
    # one message asked for four: the request still open may deliver no more than three
    assert await ack_pending(broker, "q") == 1


async def test_an_empty_fetch_times_out_with_nothing_and_the_next_one_still_works(
    broker: JetStreamBroker,
) -> None:
    t0 = time.monotonic()
    assert await broker.fetch("q", 2, 0.3) == []
    assert 0.25 < time.monotonic() - t0 < 2.0
    await broker.publish("q", b"after", msg_id="after-1")
    assert [d.data for d in await broker.fetch("q", 2, 3.0)] == [b"after"]


async def test_fetch_raises_broker_error_when_its_consumer_is_deleted_and_then_recovers(
    broker: JetStreamBroker,
) -> None:
    await broker.ensure_consumer("q")
    await broker.fetch("q", 1, 0.2)  # bound
    await broker._js_ctx().delete_consumer(broker.s.stream, durable_name(broker.s.stream, "q"))
    t0 = time.monotonic()
    with pytest.raises(BrokerError):
        for _ in range(10):  # the open request may end first; a new one finds no consumer
            await broker.fetch("q", 1, 0.5)
    assert time.monotonic() - t0 < 5.0
    # The broker forgot the binding: the next fetch creates the consumer again.
    await broker.publish("q", b"again", msg_id="again-1")
    assert [d.data for d in await broker.fetch("q", 1, 3.0)] == [b"again"]


async def test_closing_hands_back_at_once_what_was_delivered_but_not_fetched(
    broker: JetStreamBroker,
) -> None:
    assert broker.ack_wait_s >= 10  # so "at once" below cannot be a redelivery
    await broker.ensure_consumer("q")
    fetching = asyncio.create_task(broker.fetch("q", 4, 5.0))
    await asyncio.sleep(0.3)
    await broker.publish("q", b"m0", msg_id="m0")
    first = await fetching  # the request stays open for three more
    assert [d.data for d in first] == [b"m0"]
    for i in (1, 2, 3):
        await broker.publish("q", f"m{i}".encode(), msg_id=f"m{i}")
    await asyncio.sleep(0.3)
    second = await broker.fetch("q", 1, 2.0)
    assert [d.data for d in second] == [b"m1"]
    assert await ack_pending(broker, "q") == 4  # m2, m3 delivered, waiting in this process
    await first[0].ack()
    await second[0].ack()
    settings = broker.s
    await broker.close()  # m2 and m3 are given back
    other = JetStreamBroker(settings.url, settings)
    await other.connect()
    try:
        t0 = time.monotonic()
        got: list[bytes] = []
        while len(got) < 2 and time.monotonic() - t0 < 5.0:
            got += [d.data for d in await other.fetch("q", 4, 1.0)]
        assert sorted(got) == [b"m2", b"m3"]
        assert time.monotonic() - t0 < 3.0
    finally:
        await other.close()
        await broker.connect()  # for the fixture's cleanup
