"""The worker's rules with the in-memory broker and backend: no servers needed."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import msgspec
import pytest

from qtasks import QTasks, Retry, State, TaskError, TimeLimitExceeded, current_task
from qtasks.broker.memory import MemoryBroker
from qtasks.config import load_settings
from qtasks.message import TaskMessage, encode_message
from tests.support import running


def make(ack_wait_s: float = 30.0, **worker: Any) -> tuple[QTasks, MemoryBroker]:
    settings = load_settings(
        "tests/empty.toml", env={}, overrides={"worker": {"max_redeliveries": 2, **worker}}
    )
    broker = MemoryBroker(ack_wait_s=ack_wait_s)
    app = QTasks("unit", broker=broker, backend="memory://", settings=settings)
    return app, broker



async def test_success_is_stored_with_timings() -> None:
    app, broker = make()
    add = app.task(name="add")(lambda x, y: x + y)
    async with running(app):
        r = await add.adelay(2, 3)
        assert await r.aget(timeout=5) == 5
    info = await r.ainfo()
    assert info is not None and info.state is State.SUCCESS
    assert info.sent_at and info.started_at and info.finished_at
    assert info.sent_at <= info.started_at <= info.finished_at
    assert broker.pending("default") == 0


async def test_failure_is_stored_then_acked() -> None:
    app, broker = make()

    @app.task(name="boom")
    def boom() -> None:
        raise KeyError("missing")

    async with running(app):
        r = await boom.adelay()
        with pytest.raises(TaskError) as info:
            await r.aget(timeout=5)
    assert info.value.exc_type == "KeyError"
    assert broker.pending("default") == 0


async def test_retries_run_max_retries_plus_one_times_with_growing_delays() -> None:
    app, _ = make()
    runs: list[float] = []

    @app.task(name="flaky", max_retries=3, retry_backoff=0.05, retry_jitter=False)
    def flaky() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("nope")

    async with running(app):
        r = await flaky.adelay()
        with pytest.raises(TaskError, match="nope"):
            await r.aget(timeout=10)
    assert len(runs) == 4
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    info = await r.ainfo()
    assert info is not None and info.retries == 3


async def test_autoretry_for_retries_only_listed_errors() -> None:
    app, _ = make()
    runs: list[int] = []

    @app.task(name="picky", max_retries=3, retry_backoff=0.01, autoretry_for=[ConnectionError])
    def picky() -> None:
        runs.append(1)
        raise ValueError("not retryable")

    async with running(app):
        with pytest.raises(TaskError):
            await (await picky.adelay()).aget(timeout=5)
    assert len(runs) == 1


async def test_retry_raised_inside_task_uses_its_countdown() -> None:
    app, _ = make()
    runs: list[float] = []

    @app.task(name="again", max_retries=1)
    def again() -> str:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise Retry(countdown_s=0.3)
        return "ok"

    async with running(app):
        assert await (await again.adelay()).aget(timeout=5) == "ok"
    assert runs[1] - runs[0] >= 0.3


async def test_unknown_task_is_failure_and_dead_lettered() -> None:
    app, broker = make()
    async with running(app):
        r = await app.asend_task("nobody.knows", [1])
        with pytest.raises(TaskError) as info:
            await r.aget(timeout=5)
    assert info.value.exc_type == "TaskNotRegistered"
    assert [(q, reason.split(":")[0]) for q, _, reason in broker.dead] == [
        ("default", "TaskNotRegistered")
    ]
    assert broker.pending("default") == 0


async def test_undecodable_and_future_schema_messages_are_dead_lettered() -> None:
    app, broker = make()
    add = app.task(name="add")(lambda x, y: x + y)
    future = msgspec.structs.replace(TaskMessage(id="f1", task="add", args=[1, 2]), v=99)
    async with running(app):
        await broker.publish("default", b"\x00garbage", msg_id="g1")
        await broker.publish("default", encode_message(future), msg_id="f1")
        assert await (await add.adelay(1, 1)).aget(timeout=5) == 2
        for _ in range(100):
            if len(broker.dead) == 2:
                break
            await asyncio.sleep(0.02)
    reasons = sorted(reason for _, _, reason in broker.dead)
    assert len(reasons) == 2 and all(r.startswith("DecodeError") for r in reasons)
    assert any("schema version 99" in r for r in reasons)


async def test_countdown_delays_the_run() -> None:
    app, _ = make()
    started: list[float] = []

    @app.task(name="stamp")
    def stamp() -> None:
        started.append(time.time())

    async with running(app):
        t0 = time.time()
        r = await stamp.aapply_async(countdown=0.5)
        await r.aget(timeout=5)
    assert started[0] - t0 >= 0.45


async def test_expired_task_is_revoked_not_run() -> None:
    app, _ = make()
    ran: list[int] = []
    job = app.task(name="job")(lambda: ran.append(1))
    r = await job.aapply_async(expires=0.01)
    await asyncio.sleep(0.05)
    async with running(app):
        info = await (await app.backend()).wait(r.id, 5)
    assert info.state is State.REVOKED and ran == []


async def test_same_task_id_is_stored_once() -> None:
    app, broker = make()
    ran: list[int] = []
    job = app.task(name="job")(lambda: ran.append(1))
    await job.aapply_async(task_id="dup")
    await job.aapply_async(task_id="dup")
    assert broker.pending("default") == 1
    async with running(app):
        await app.AsyncResult("dup").aget(timeout=5)
    assert ran == [1]


async def test_time_limit_marks_failure() -> None:
    app, _ = make()
    slow = app.task(name="slow", time_limit=0.2)(lambda: time.sleep(1.0))
    async with running(app):
        with pytest.raises(TimeLimitExceeded):
            await (await slow.adelay()).aget(timeout=5)


async def test_unserialisable_result_is_a_clear_failure() -> None:
    app, _ = make()
    bad = app.task(name="bad")(lambda: object())
    async with running(app):
        with pytest.raises(TaskError) as info:
            await (await bad.adelay()).aget(timeout=5)
    assert info.value.exc_type == "EncodeError"


async def test_unserialisable_arguments_are_refused_at_send() -> None:
    app, _ = make()
    job = app.task(name="job")(lambda x: x)
    with pytest.raises(Exception, match="msgpack"):
        await job.adelay(object())


async def test_task_sees_its_context() -> None:
    app, _ = make()

    @app.task(name="whoami")
    def whoami() -> list[Any]:
        ctx = current_task()
        assert ctx is not None
        return [ctx.task_id, ctx.attempt, ctx.concurrency]

    async with running(app, concurrency=3):
        r = await whoami.adelay()
        assert await r.aget(timeout=5) == [r.id, 1, 3]


async def test_unacked_delivery_is_redelivered_after_ack_wait_and_run_again() -> None:
    # A worker that dies mid-task: its delivery is never settled.
    app, broker = make(ack_wait_s=0.2)
    job = app.task(name="job")(lambda: "done")
    r = await job.adelay()
    (lost,) = await broker.fetch("default", 1, 1)
    async with running(app):
        assert await r.aget(timeout=5) == "done"
    assert lost.attempt == 1


async def test_crash_loop_is_dead_lettered_after_max_redeliveries() -> None:
    app, broker = make(ack_wait_s=0.05)
    job = app.task(name="job")(lambda: "never")
    r = await job.adelay()
    backend = await app.backend()
    from qtasks.message import TaskResult

    # Three deliveries that "crashed" while STARTED (max_redeliveries is 2).
    for n in range(3):
        await broker.fetch("default", 1, 1)
        await backend.set(TaskResult(id=r.id, state=State.STARTED, task="job", meta={"crashes": n}))
        await asyncio.sleep(0.06)
    async with running(app):
        with pytest.raises(TaskError) as info:
            await r.aget(timeout=5)
    assert info.value.exc_type == "WorkerLost"
    assert len(broker.dead) == 1


async def test_redelivery_of_a_finished_task_is_acked_without_running() -> None:
    app, broker = make(ack_wait_s=0.05)
    ran: list[int] = []
    job = app.task(name="job")(lambda: ran.append(1))
    r = await job.adelay()
    backend = await app.backend()
    from qtasks.message import TaskResult

    await broker.fetch("default", 1, 1)
    await backend.set(TaskResult(id=r.id, state=State.SUCCESS, task="job", result=7))
    await asyncio.sleep(0.06)  # stored, then "crashed" before the ack
    async with running(app):
        for _ in range(100):
            if broker.pending("default") == 0:
                break
            await asyncio.sleep(0.02)
    assert ran == [] and broker.pending("default") == 0
    assert await r.aget(timeout=1) == 7


async def test_first_delivery_of_an_id_that_already_finished_is_acked_without_running() -> None:
    # A resend of a finished id after the broker's duplicate window: attempt 1, record final.
    app, broker = make()
    ran: list[int] = []
    job = app.task(name="job")(lambda: ran.append(1))
    backend = await app.backend()
    from qtasks.message import TaskResult

    await backend.set(TaskResult(id="done-before", state=State.SUCCESS, task="job", result=7))
    r = await job.aapply_async(task_id="done-before")
    async with running(app):
        for _ in range(100):
            if broker.pending("default") == 0:
                break
            await asyncio.sleep(0.02)
    assert ran == [] and broker.pending("default") == 0
    assert await r.aget(timeout=1) == 7


async def test_first_delivery_stores_started_before_the_task_runs() -> None:
    app, _ = make()
    seen: list[State] = []

    @app.task(name="peek")
    async def peek() -> None:
        ctx = current_task()
        assert ctx is not None
        info = await app.AsyncResult(ctx.task_id).ainfo()
        assert info is not None
        seen.append(info.state)

    async with running(app, executor="asyncio"):
        await (await peek.adelay()).aget(timeout=5)
    assert seen == [State.STARTED]


async def test_drain_waits_for_running_tasks() -> None:
    app, broker = make()
    slow = app.task(name="slow")(lambda: time.sleep(0.5) or "ok")
    async with running(app, concurrency=4):
        rs = [await slow.adelay() for _ in range(4)]
        await asyncio.sleep(0.2)
    assert [await r.astate() for r in rs] == [State.SUCCESS] * 4
    assert broker.pending("default") == 0


def test_eager_mode_runs_in_place() -> None:
    settings = load_settings("tests/empty.toml", env={})
    app = QTasks("eager", broker="memory://", backend="memory://", settings=settings, eager=True)
    add = app.task(name="add")(lambda x, y: x + y)
    r = add.delay(2, 2)
    assert r.get(timeout=1) == 4 and r.successful()
    assert add(1, 1) == 2
