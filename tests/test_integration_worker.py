"""The qtasks library end to end: a CLI worker subprocess, real NATS JetStream and Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from qtasks import State, TaskError
from qtasks.broker.jetstream import JetStreamBroker
from tests.support import Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(QTASKS_NATS_ACK_WAIT_S=2)
    yield s
    s.close()


@pytest.mark.parametrize("executor", ["thread", "process", "asyncio"])
def test_500_tasks_sent_with_delay_all_succeed(stack: Stack, executor: str) -> None:
    stack.worker("--executor", executor, "--concurrency", "4")
    add = stack.app.tasks["demo.add"]
    t0 = time.perf_counter()
    results = [add.delay(i, i) for i in range(500)]
    values = [r.get(timeout=60) for r in results]
    elapsed_s = time.perf_counter() - t0
    assert values == [2 * i for i in range(500)]
    assert all(r.state is State.SUCCESS for r in results)
    print(f"500 tasks, {executor}: {elapsed_s:.2f} s ({500 / elapsed_s:.0f} tasks/s)")


async def test_500_tasks_sent_with_adelay_all_succeed(stack: Stack) -> None:
    await asyncio.to_thread(stack.worker, "--concurrency", "4")
    add = stack.app.tasks["demo.async_add"]
    results = [await add.adelay(i, 1) for i in range(500)]
    values = [await r.aget(timeout=60) for r in results]
    assert values == [i + 1 for i in range(500)]
    assert {await r.astate() for r in results} == {State.SUCCESS}
    await stack.app.aclose()


def test_raising_task_is_failure_with_remote_type_and_message(stack: Stack) -> None:
    stack.worker("--concurrency", "2")
    r = stack.app.tasks["demo.fail"].delay("boom")
    with pytest.raises(TaskError) as info:
        r.get(timeout=30)
    assert info.value.exc_type == "ValueError"
    assert info.value.message == "boom"
    assert "raise ValueError(message)" in (info.value.traceback or "")
    assert r.state is State.FAILURE and r.failed()
    assert stack.runs(r.id) == 1


def test_max_retries_2_runs_exactly_three_times(stack: Stack) -> None:
    stack.worker("--concurrency", "2")
    r = stack.app.tasks["demo.flaky"].delay()
    with pytest.raises(TaskError, match="always fails"):
        r.get(timeout=30)
    info = r.info()
    assert info is not None and info.retries == 2
    assert stack.runs(r.id) == 3


def test_unknown_task_id_reads_pending(stack: Stack) -> None:
    r = stack.app.AsyncResult("no-such-task")
    assert r.state is State.PENDING and not r.ready()


def test_task_longer_than_ack_wait_runs_once(stack: Stack) -> None:
    # ack_wait is 2 s; two workers, so a redelivery would find a second taker.
    stack.worker("--concurrency", "2")
    stack.worker("--concurrency", "2")
    r = stack.app.tasks["demo.sleep"].delay(6.0)
    assert r.get(timeout=30) == 6.0
    time.sleep(2.5)  # a redelivery after ack_wait would show up as a second run
    assert stack.runs(r.id) == 1


def test_kill_9_worker_then_new_worker_finishes_all(stack: Stack) -> None:
    w = stack.worker("--concurrency", "4")
    sleep = stack.app.tasks["demo.sleep"]
    results = [sleep.delay(0.2) for _ in range(100)]
    wait_for(
        lambda: int(stack.redis.scard(f"{stack.settings.redis.key_prefix}:ran")) >= 10,
        30,
        "some tasks to run",
    )
    w.signal(signal.SIGKILL)
    w.wait(10)
    stack.worker("--concurrency", "4")
    assert [r.get(timeout=90) for r in results] == [0.2] * 100
    duplicates = sum(max(0, stack.runs(r.id) - 1) for r in results)
    assert all(stack.runs(r.id) >= 1 for r in results)
    print(f"kill -9: 100/100 SUCCESS, {duplicates} duplicate runs")
    assert duplicates <= 4  # at most the tasks that were running when it died


def test_same_task_id_twice_runs_once(stack: Stack) -> None:
    stack.worker("--concurrency", "2")
    sleep = stack.app.tasks["demo.sleep"]
    r1 = sleep.apply_async((0.1,), task_id="same-id-1")
    r2 = sleep.apply_async((0.1,), task_id="same-id-1")
    assert r1.get(timeout=30) == 0.1 and r2.get(timeout=30) == 0.1
    time.sleep(0.5)
    assert stack.runs("same-id-1") == 1


def test_garbage_message_is_dead_lettered_and_worker_keeps_serving(stack: Stack) -> None:
    w = stack.worker("--concurrency", "2")

    async def publish_garbage() -> list[tuple[bytes, str]]:
        b = JetStreamBroker(stack.settings.nats.url, stack.settings.nats)
        await b.connect()
        await b.publish("default", b"\xff\x00 not msgpack", msg_id="garbage-1")
        for _ in range(100):
            letters = await b.dead_letters("default")
            if letters:
                break
            await asyncio.sleep(0.1)
        await b.close()
        return letters

    letters = asyncio.run(publish_garbage())
    assert letters and letters[0][0] == b"\xff\x00 not msgpack"
    assert "DecodeError" in letters[0][1]
    assert stack.app.tasks["demo.add"].delay(1, 2).get(timeout=30) == 3
    assert "message_undecodable" in w.log()


def test_sigterm_lets_20_running_tasks_finish_and_exits_0(stack: Stack) -> None:
    w = stack.worker("--concurrency", "20")
    results = [stack.app.tasks["demo.sleep"].delay(2.0) for _ in range(20)]
    wait_for(
        lambda: int(stack.redis.scard(f"{stack.settings.redis.key_prefix}:ran")) == 20,
        30,
        "20 tasks running",
    )
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    assert [r.state for r in results] == [State.SUCCESS] * 20
    assert all(stack.runs(r.id) == 1 for r in results)
