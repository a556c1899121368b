"""Revoke, worker metrics and the broker's operations, on the in-memory twins (no servers)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from qtasks import QTasks, State, TaskRevoked
from qtasks.backends.memory import MemoryBackend
from qtasks.broker.memory import MemoryBroker
from qtasks.config import load_settings
from qtasks.control import ask_workers
from qtasks.message import TaskResult
from qtasks.metrics import WorkerMetrics
from qtasks.worker import Worker
from tests.support import running


def make() -> tuple[QTasks, MemoryBroker]:
    settings = load_settings("tests/empty.toml", env={})
    broker = MemoryBroker()
    return QTasks("unit", broker=broker, backend="memory://", settings=settings), broker



async def wait_until(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_task_revoked_before_a_worker_takes_it_never_runs() -> None:
    app, broker = make()
    ran: list[int] = []
    t = app.task(name="t")(lambda: ran.append(1))
    r = await t.adelay()
    assert await r.arevoke() is State.REVOKED
    async with running(app):
        with pytest.raises(TaskRevoked):
            await r.aget(timeout=5)
        await wait_until(lambda: broker.pending("default") == 0)
    assert ran == []
    assert await r.astate() is State.REVOKED


async def test_revoking_a_finished_task_changes_nothing() -> None:
    app, _ = make()
    t = app.task(name="t")(lambda: 7)
    async with running(app):
        r = await t.adelay()
        assert await r.aget(timeout=5) == 7
        assert await r.arevoke() is State.SUCCESS
    assert await r.aget(timeout=1) == 7


async def test_running_asyncio_task_is_cancelled_by_revoke() -> None:
    app, _ = make()
    started, cancelled = asyncio.Event(), asyncio.Event()

    @app.task(name="slow")
    async def slow() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "finished"

    async with running(app, executor="asyncio"):
        r = await slow.adelay()
        await asyncio.wait_for(started.wait(), 5)
        assert await r.arevoke() is State.REVOKED
        await asyncio.wait_for(cancelled.wait(), 5)
        with pytest.raises(TaskRevoked):
            await r.aget(timeout=5)


async def test_running_thread_task_result_is_discarded_and_state_stays_revoked() -> None:
    app, broker = make()
    started, release = threading.Event(), threading.Event()

    @app.task(name="blocking")
    def blocking() -> str:
        started.set()
        release.wait(10)
        return "finished"

    async with running(app, executor="thread") as w:
        r = await blocking.adelay()
        await asyncio.to_thread(started.wait, 5)
        assert await r.arevoke() is State.REVOKED
        await wait_until(lambda: not w._inflight)  # the handler gave the slot back
        release.set()  # the thread finishes now; its result must not replace REVOKED
        await asyncio.sleep(0.2)
        assert await r.astate() is State.REVOKED
        assert broker.pending("default") == 0


async def test_worker_refuses_to_overwrite_a_revoked_record() -> None:
    backend = MemoryBackend()
    assert (await backend.revoke("x")).state is State.REVOKED
    stored = await backend.set_unless_revoked(TaskResult(id="x", state=State.SUCCESS, result=1))
    assert stored is False
    info = await backend.get("x")
    assert info is not None and info.state is State.REVOKED


async def test_revoke_keeps_the_record_fields_and_says_why() -> None:
    backend = MemoryBackend()
    await backend.set(TaskResult(id="y", state=State.STARTED, task="t", worker="h:1"))
    info = await backend.revoke("y", reason="user asked")
    assert (info.state, info.task, info.worker) == (State.REVOKED, "t", "h:1")
    assert info.error is not None and info.error.message == "user asked"


async def test_worker_metrics_count_received_succeeded_failed_and_time_runs() -> None:
    app, _ = make()
    ok = app.task(name="ok")(lambda: 1)

    @app.task(name="bad")
    def bad() -> None:
        raise ValueError("no")

    w = Worker(app, concurrency=2, executor="thread", shutdown_grace_s=5)
    w.events = m = WorkerMetrics(
        executor="thread", concurrency=2, inflight=lambda: len(w._inflight),
        process_metrics=False,
    )
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(w.started.wait(), 10)
    try:
        for r in [await ok.adelay() for _ in range(3)]:
            await r.aget(timeout=5)
        with pytest.raises(Exception, match="no"):
            await (await bad.adelay()).aget(timeout=5)
    finally:
        w.stop()
        await asyncio.wait_for(task, 15)

    def value(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    assert value("qtasks_tasks_total", task="ok", queue="default", state="received") == 3
    assert value("qtasks_tasks_total", task="ok", queue="default", state="succeeded") == 3
    assert value("qtasks_tasks_total", task="bad", queue="default", state="failed") == 1
    assert value("qtasks_tasks_total", task="ok", queue="default", state="failed") == 0
    assert value("qtasks_task_run_seconds_count", task="ok", executor="thread") == 3
    assert value("qtasks_task_queue_wait_seconds_count", task="ok", queue="default") == 3
    assert value("qtasks_worker_concurrency") == 2
    assert value("qtasks_tasks_in_flight") == 0


async def test_ping_answers_with_each_workers_queues_and_running_tasks() -> None:
    app, _ = make()
    started = threading.Event()
    release = threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        started.set()
        release.wait(10)

    async with running(app) as w:
        r = await hold.adelay()
        await asyncio.to_thread(started.wait, 5)
        infos = await ask_workers(app, timeout_s=0.1)
        release.set()
        await r.aget(timeout=5)
    assert [i.name for i in infos] == [w.name]
    assert infos[0].queues == ["default"] and infos[0].running == [r.id]


async def test_memory_broker_stats_purge_and_dead_letters() -> None:
    broker = MemoryBroker()
    for i in range(3):
        await broker.publish("q", b"x", msg_id=str(i))
    [d] = await broker.fetch("q", 1, 0.1)
    stats = await broker.queue_stats("q")
    assert (stats.pending, stats.ack_pending) == (2, 1)
    assert await broker.purge("q") == 3
    await d.ack()  # acking a purged message is harmless
    assert (await broker.queue_stats("q")).pending == 0
    await broker.dead_letter("q", b"bad", "DecodeError: nope")
    [letter] = await broker.dead_letter_entries()
    assert (letter.queue, letter.data, letter.reason) == ("q", b"bad", "DecodeError: nope")
    assert (await broker.queue_stats("q")).dead_letters == 1
    assert await broker.drop_dead_letter(letter.seq) is True
    assert await broker.dead_letter_entries("q") == [] and broker.dead == []


def test_progress_bar_draws_counts_and_failures_on_one_line() -> None:
    import io

    from qtasks.progress import Progress

    out = io.StringIO()
    bar = Progress(4, "replayed", stream=out, enabled=True)
    for i in range(4):
        bar.update(failed=i == 3)
    bar.close()
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("replayed [##############################] 4/4")
    assert "1 failed" in last and last.endswith("\n")
    quiet = io.StringIO()  # not a terminal: nothing drawn unless asked
    Progress(2, stream=quiet).update()
    assert quiet.getvalue() == ""


async def test_await_all_returns_values_and_errors_in_order() -> None:
    from qtasks import ResultTimeout, TaskError
    from qtasks.progress import await_all

    app, _ = make()
    ok = app.task(name="ok")(lambda x: x)

    @app.task(name="bad")
    def bad() -> None:
        raise ValueError("no")

    async with running(app):
        rs = [await ok.adelay(1), await bad.adelay(), app.AsyncResult("never-sent")]
        out = await await_all(rs, timeout=2, progress=False)
    assert out[0] == 1
    assert isinstance(out[1], TaskError) and out[1].exc_type == "ValueError"
    assert isinstance(out[2], ResultTimeout)


def test_log_format_follows_the_environment_then_the_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import logging

    import structlog

    from qtasks.observability import configure_logging

    monkeypatch.setenv("QTASKS_LOG_FORMAT", "json")
    configure_logging("INFO")
    structlog.get_logger("qtasks.worker").info("task_started", task_id="t1", attempt=1)
    logging.getLogger("nats").warning("from the stdlib")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["event"] == "task_started" and lines[0]["logger"] == "qtasks.worker"
    assert lines[0]["task_id"] == "t1" and lines[0]["level"] == "info"
    assert lines[1] == {**lines[1], "event": "from the stdlib", "logger": "nats"}
    monkeypatch.setenv("QTASKS_LOG_FORMAT", "console")
    configure_logging("INFO")
    structlog.get_logger("x").info("hello", a=1)
    err = capsys.readouterr().err
    assert "hello" in err and "a=1" in err and not err.startswith("{")
