"""Result backends: the shared contract (memory and Redis), then Redis's own behaviour."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from qtasks.backends import MemoryBackend, RedisBackend, ResultBackend
from qtasks.backends.base import SAFETY_RECHECK_S
from qtasks.config import RedisSettings
from qtasks.errors import BackendError, ResultTimeout
from qtasks.message import ErrorInfo, State, TaskResult, new_task_id
from qtasks.servers import RedisServer, free_port
from tests.support import REDIS_URL

#: A notification must beat the base class's safety recheck by a wide margin.
PROMPT_S = SAFETY_RECHECK_S / 2


def result(task_id: str, state: State = State.SUCCESS, value: object = 42) -> TaskResult:
    return TaskResult(id=task_id, state=state, result=value, task="tests.add")


def with_client_name(url: str, name: str) -> str:
    """``url`` whose connections show up as ``name`` in CLIENT LIST."""
    return f"{url}{'&' if '?' in url else '?'}client_name={name}"


async def drop_keys(url: str, prefix: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


async def numsub(url: str, channels: Iterable[str]) -> list[int]:
    """Subscribers of each channel, as the server counts them."""
    r = aioredis.Redis.from_url(url)
    try:
        return [int(n) for _, n in await r.pubsub_numsub(*channels)]
    finally:
        await r.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Await the predicate ``check()`` until it holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def until_subscribed(backend: ResultBackend, task_ids: list[str]) -> None:
    """Wait until every id has a live listener, so a test exercises the notification path."""
    if isinstance(backend, RedisBackend):
        channels = [backend.done_channel(t) for t in task_ids]

        async def all_subscribed() -> bool:
            return all(n >= 1 for n in await numsub(backend.url, channels))

        await eventually(all_subscribed, 3.0, "subscriptions")
    else:
        assert isinstance(backend, MemoryBackend)

        async def all_listening() -> bool:
            return all(t in backend._listeners for t in task_ids)

        await eventually(all_listening, 3.0, "listeners")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[ResultBackend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    prefix = f"t-{uuid4().hex}"
    b = RedisBackend(with_client_name(REDIS_URL, prefix), key_prefix=prefix)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()
        await drop_keys(REDIS_URL, prefix)


# -- the shared contract --------------------------------------------------------------------


async def test_an_unknown_id_reads_as_none(backend: ResultBackend) -> None:
    assert await backend.get(new_task_id()) is None


async def test_a_failure_with_its_error_info_round_trips(backend: ResultBackend) -> None:
    tid = new_task_id()
    failed = TaskResult(
        id=tid,
        state=State.FAILURE,
        task="tests.boom",
        error=ErrorInfo("ValueError", "bad input", "Traceback (most recent call last): ..."),
        retries=2,
        deliveries=3,
        meta={"shots": 1024},
    )
    await backend.set(failed)
    assert await backend.get(tid) == failed


async def test_a_later_state_replaces_an_earlier_one(backend: ResultBackend) -> None:
    tid = new_task_id()
    await backend.set(result(tid, State.STARTED, None))
    await backend.set(result(tid, State.SUCCESS, "done"))
    got = await backend.get(tid)
    assert got is not None and got.state is State.SUCCESS and got.result == "done"


async def test_a_result_expires_after_its_ttl(backend: ResultBackend) -> None:
    tid = new_task_id()
    await backend.set(result(tid), ttl_s=0.3)
    assert await backend.get(tid) is not None
    await asyncio.sleep(0.45)
    assert await backend.get(tid) is None


async def test_delete_forgets_a_result(backend: ResultBackend) -> None:
    tid = new_task_id()
    await backend.set(result(tid))
    await backend.delete(tid)
    assert await backend.get(tid) is None


@pytest.mark.parametrize("running", [False, True], ids=["read-first", "subscribe-first"])
async def test_wait_returns_as_soon_as_another_coroutine_stores_the_result(
    backend: ResultBackend, running: bool
) -> None:
    tid = new_task_id()
    waiter = asyncio.create_task(backend.wait(tid, timeout_s=10, running=running))
    await until_subscribed(backend, [tid])
    stored_at = time.monotonic()
    await backend.set(result(tid))
    got = await asyncio.wait_for(waiter, 5)
    assert got.result == 42
    assert time.monotonic() - stored_at < PROMPT_S


@pytest.mark.parametrize("running", [False, True], ids=["read-first", "wrong-guess"])
async def test_wait_on_an_already_final_result_returns_immediately(
    backend: ResultBackend, running: bool
) -> None:
    tid = new_task_id()
    await backend.set(result(tid, State.FAILURE, None))
    started = time.monotonic()
    got = await backend.wait(tid, timeout_s=10, running=running)
    assert got.state is State.FAILURE
    assert time.monotonic() - started < 0.5


async def test_set_if_absent_stores_when_nothing_is_there(backend: ResultBackend) -> None:
    tid = new_task_id()
    assert await backend.set_if_absent(result(tid, State.STARTED, None)) is None
    got = await backend.get(tid)
    assert got is not None and got.state is State.STARTED


async def test_set_if_absent_returns_an_existing_record_and_leaves_it(
    backend: ResultBackend,
) -> None:
    tid = new_task_id()
    await backend.set(result(tid, State.SUCCESS, 7))
    existing = await backend.set_if_absent(result(tid, State.STARTED, None))
    assert existing is not None and existing.state is State.SUCCESS and existing.result == 7
    got = await backend.get(tid)
    assert got is not None and got.state is State.SUCCESS


async def test_wait_times_out_with_result_timeout(backend: ResultBackend) -> None:
    started = time.monotonic()
    with pytest.raises(ResultTimeout):
        await backend.wait(new_task_id(), timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 1.5


async def test_several_waiters_on_one_id_all_wake(backend: ResultBackend) -> None:
    tid = new_task_id()
    waiters = [asyncio.create_task(backend.wait(tid, timeout_s=10)) for _ in range(5)]
    await until_subscribed(backend, [tid])
    stored_at = time.monotonic()
    await backend.set(result(tid))
    got = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert [r.result for r in got] == [42] * 5
    assert time.monotonic() - stored_at < PROMPT_S


async def test_200_waiters_on_200_ids_all_wake(backend: ResultBackend) -> None:
    tids = [new_task_id() for _ in range(200)]
    waiters = [asyncio.create_task(backend.wait(t, timeout_s=10)) for t in tids]
    await until_subscribed(backend, tids)
    stored_at = time.monotonic()
    for i, t in enumerate(tids):
        await backend.set(result(t, value=i))
    got = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert [r.result for r in got] == list(range(200))
    assert time.monotonic() - stored_at < PROMPT_S


async def test_a_non_final_state_does_not_wake_waiters(backend: ResultBackend) -> None:
    tid = new_task_id()
    waiter = asyncio.create_task(backend.wait(tid, timeout_s=10))
    await until_subscribed(backend, [tid])
    await backend.set(result(tid, State.STARTED, None))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await backend.set(result(tid, State.SUCCESS, "ok"))
    assert (await asyncio.wait_for(waiter, 5)).result == "ok"


async def test_ping_answers_when_the_store_is_up(backend: ResultBackend) -> None:
    await backend.ping()


# -- memory ---------------------------------------------------------------------------------


async def test_memory_wakes_a_waiter_on_another_threads_loop() -> None:
    """The app shares one MemoryBackend between the sync bridge's loop and the caller's."""
    backend = MemoryBackend()
    tid = new_task_id()
    waiter = asyncio.create_task(asyncio.to_thread(asyncio.run, backend.wait(tid, timeout_s=10)))
    await until_subscribed(backend, [tid])
    stored_at = time.monotonic()
    await backend.set(result(tid))
    assert (await asyncio.wait_for(waiter, 5)).result == 42
    assert time.monotonic() - stored_at < PROMPT_S


# -- Redis ----------------------------------------------------------------------------------


@pytest.mark.integration
async def test_redis_stores_msgpack_under_the_result_key_with_a_ttl() -> None:
    prefix = f"t-{uuid4().hex}"
    backend = RedisBackend.from_settings(
        RedisSettings(url=REDIS_URL, key_prefix=prefix, result_ttl_s=60.0)
    )
    tid = new_task_id()
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        await backend.set(result(tid))
        assert await r.exists(f"{prefix}:result:{tid}") == 1
        assert 0 < await r.pttl(f"{prefix}:result:{tid}") <= 60_000
    finally:
        await backend.close()
        await r.aclose()
        await drop_keys(REDIS_URL, prefix)


async def test_redis_commands_of_one_loop_iteration_share_one_pipeline() -> None:
    """Records written and read concurrently (a worker's N slots) go to Redis together: each
    caller still gets its own reply, and one command's error stays its own."""
    prefix = f"t-{uuid4().hex}"
    backend = RedisBackend.from_settings(RedisSettings(url=REDIS_URL, key_prefix=prefix))
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        await backend.ping()
        state = backend._state()
        pipelines = 0
        make_pipeline = state.client.pipeline

        def counting_pipeline(*args: object, **kwargs: object) -> object:
            nonlocal pipelines
            pipelines += 1
            return make_pipeline(*args, **kwargs)  # type: ignore[arg-type]

        state.client.pipeline = counting_pipeline  # type: ignore[method-assign,assignment]
        ids = [new_task_id() for _ in range(6)]
        await r.set(f"{prefix}:result:{ids[5]}", b"not msgpack")  # decodes as an error
        started = [result(t, State.STARTED) for t in ids[:4]]
        firsts = await asyncio.gather(*(backend.set_if_absent(s) for s in started))
        assert firsts == [None] * 4 and pipelines == 1
        outcomes = await asyncio.gather(
            *(backend.set_unless_revoked(result(t, value=i)) for i, t in enumerate(ids[:4])),
            backend.get(ids[4]),
            backend.get(ids[5]),
            return_exceptions=True,
        )
        assert outcomes[:5] == [True, True, True, True, None] and pipelines == 2
        assert isinstance(outcomes[5], Exception)  # only the undecodable record fails
        values = await asyncio.gather(*(backend.get(t) for t in ids[:4]))
        assert [v.result for v in values if v is not None] == [0, 1, 2, 3]
    finally:
        await backend.close()
        await r.aclose()
        await drop_keys(REDIS_URL, prefix)


@pytest.mark.integration
@pytest.mark.parametrize("size", [10, 100_000])
async def test_redis_waiter_gets_small_and_large_results_through_the_notification(
    size: int,
) -> None:
    # A small record rides along with its notification; a large one is announced and read.
    prefix = f"t-{uuid4().hex}"
    backend = RedisBackend(REDIS_URL, key_prefix=prefix)
    tid = new_task_id()
    try:
        waiter = asyncio.create_task(backend.wait(tid, timeout_s=10))
        await until_subscribed(backend, [tid])
        await backend.set(result(tid, value="x" * size))
        got = await asyncio.wait_for(waiter, 5)
        assert got.result == "x" * size
    finally:
        await backend.close()
        await drop_keys(REDIS_URL, prefix)


@pytest.mark.integration
async def test_redis_waiters_share_one_pubsub_connection_and_unsubscribe_when_done() -> None:
    prefix = f"t-{uuid4().hex}"
    backend = RedisBackend(with_client_name(REDIS_URL, prefix), key_prefix=prefix)
    r = aioredis.Redis.from_url(REDIS_URL)

    async def subscription_counts() -> list[int]:
        return [int(c["sub"]) for c in await r.client_list() if c.get("name") == prefix]

    try:
        tids = [new_task_id() for _ in range(200)]
        waiters = [asyncio.create_task(backend.wait(t, timeout_s=10)) for t in tids]
        await until_subscribed(backend, tids)
        assert sorted(n for n in await subscription_counts() if n) == [200]
        for t in tids:
            await backend.set(result(t))
        await asyncio.wait_for(asyncio.gather(*waiters), 5)

        async def all_unsubscribed() -> bool:
            return not any(await subscription_counts())

        await eventually(all_unsubscribed, 3.0, "unsubscribe after the last waiter left")
    finally:
        await backend.close()
        await r.aclose()
        await drop_keys(REDIS_URL, prefix)


@pytest.mark.integration
async def test_redis_ping_against_a_dead_port_raises_backend_error_quickly() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    try:
        with pytest.raises(BackendError):
            await backend.ping()
    finally:
        await backend.close()
    assert time.monotonic() - started < 1.0


@pytest.mark.integration
async def test_redis_get_against_a_dead_port_raises_backend_error_after_the_retry_window(
) -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", retry_window_s=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError):
            await backend.get(new_task_id())
        with pytest.raises(BackendError):
            await backend.wait(new_task_id(), timeout_s=10)
    finally:
        await backend.close()
    assert time.monotonic() - started < 5.0


@pytest.mark.integration
async def test_redis_password_in_the_url_authenticates() -> None:
    server = RedisServer(password="s3cret")
    await asyncio.to_thread(server.start)
    good = RedisBackend(server.url)
    bad = RedisBackend(server.url.replace("s3cret", "wrong"))
    try:
        await good.ping()
        tid = new_task_id()
        await good.set(result(tid))
        assert (await good.wait(tid, timeout_s=5)).result == 42
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            await bad.get(tid)
        assert time.monotonic() - started < 1.0  # bad credentials are not retried
        assert "wrong" not in str(info.value)
    finally:
        await good.close()
        await bad.close()
        await asyncio.to_thread(server.cleanup)


@pytest.mark.integration
@pytest.mark.faults
async def test_redis_waiter_gets_its_result_across_a_server_restart(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend(redis_server.url, key_prefix="t")
    tid = new_task_id()
    channel = backend.done_channel(tid)
    try:
        waiter = asyncio.create_task(backend.wait(tid, timeout_s=20))
        await until_subscribed(backend, [tid])
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.start)

        async def resubscribed() -> bool:
            try:
                return (await numsub(redis_server.url, [channel])) == [1]
            except Exception:
                return False

        await eventually(resubscribed, 5.0, "resubscription after the restart")
        assert not waiter.done()
        stored_at = time.monotonic()
        await backend.set(result(tid))
        assert (await asyncio.wait_for(waiter, 5)).result == 42
        assert time.monotonic() - stored_at < PROMPT_S
    finally:
        await backend.close()


@pytest.mark.integration
async def test_redis_close_stops_the_reader_without_pending_task_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = f"t-{uuid4().hex}"
    backend = RedisBackend(REDIS_URL, key_prefix=prefix)
    tid = new_task_id()
    waiter = asyncio.create_task(backend.wait(tid, timeout_s=10))
    await until_subscribed(backend, [tid])
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await backend.close()
        gc.collect()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "qtasks-redis-pubsub"]
    assert "destroyed" not in caplog.text


@pytest.mark.integration
def test_redis_backend_serves_each_event_loop_that_uses_it() -> None:
    """One instance, used by two loops in turn and by two loops at once."""
    prefix = f"t-{uuid4().hex}"
    backend = RedisBackend(REDIS_URL, key_prefix=prefix)

    async def round_trip() -> None:
        await backend.connect()
        await backend.connect()  # idempotent
        tid = new_task_id()
        await backend.set(result(tid))
        assert (await backend.wait(tid, timeout_s=5)).result == 42
        await backend.close()

    async def wait_then_close(tid: str) -> TaskResult:
        try:
            return await backend.wait(tid, timeout_s=10)
        finally:
            await backend.close()

    async def wait_there_store_here() -> None:
        tid = new_task_id()
        waiter = asyncio.create_task(asyncio.to_thread(asyncio.run, wait_then_close(tid)))
        await until_subscribed(backend, [tid])
        await backend.set(result(tid))
        assert (await asyncio.wait_for(waiter, 5)).result == 42
        await backend.close()

    try:
        asyncio.run(round_trip())
        asyncio.run(round_trip())
        asyncio.run(wait_there_store_here())
    finally:
        asyncio.run(drop_keys(REDIS_URL, prefix))


@pytest.mark.integration
@pytest.mark.parametrize("delay_s", [0.0, 0.001, 0.002, 0.003, 0.005])
async def test_redis_cancelled_waiters_end_cancelled_and_close_returns(delay_s: float) -> None:
    """Cancellation lands at every stage (connect, subscribe, read) and is never swallowed."""
    backend = RedisBackend(REDIS_URL, key_prefix=f"t-{uuid4().hex}")
    waiters = [asyncio.create_task(backend.wait(new_task_id(), timeout_s=10)) for _ in range(100)]
    await asyncio.sleep(delay_s)
    for w in waiters:
        w.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    await asyncio.wait_for(backend.close(), 5)
