"""Executors (thread, asyncio, process): results, errors, context, time limits, and the
process pool's children. No servers needed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from qtasks.context import TaskContext, current_task
from qtasks.errors import (
    ChildProcessDied,
    ConfigError,
    Retry,
    TaskError,
    TaskNotRegistered,
    TimeLimitExceeded,
)
from qtasks.executors import (
    AsyncioExecutor,
    Executor,
    ProcessExecutor,
    ThreadExecutor,
    make_executor,
)
from qtasks.executors.base import TaskCall
from tests.apps import executor_app
from tests.apps.executor_app import app

APP_SPEC = "tests.apps.executor_app:app"
ALL_EXECUTORS = ["thread", "asyncio", "process"]


def call(task_name: str, *args: Any, task_id: str = "task-1", concurrency: int = 2) -> TaskCall:
    ctx = TaskContext(task_id=task_id, task_name=task_name, concurrency=concurrency)
    return TaskCall(task_name, list(args), {}, ctx)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def type_and_message(exc: BaseException) -> tuple[str, str]:
    """What the worker stores for a failure (the remote type for a TaskError)."""
    if isinstance(exc, TaskError):
        return exc.exc_type, exc.message
    return type(exc).__name__, str(exc)


async def wait_for_children(pool: ProcessExecutor, n: int, timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(pool.child_pids) < n:
        assert time.monotonic() < deadline, f"pool did not get back to {n} children"
        await asyncio.sleep(0.02)
    return pool.child_pids


@pytest.fixture(params=ALL_EXECUTORS)
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[Executor]:
    ex = make_executor(request.param, 2, app.resolve, APP_SPEC)
    await ex.start()
    yield ex
    await ex.shutdown(wait=False)


@pytest.fixture
async def pool() -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(2, app.resolve, APP_SPEC)
    await ex.start()
    yield ex
    await ex.shutdown(wait=False)


# -- every executor -------------------------------------------------------------------------


def test_make_executor_maps_names_to_classes() -> None:
    assert isinstance(make_executor("thread", 1, app.resolve, None), ThreadExecutor)
    assert isinstance(make_executor("asyncio", 1, app.resolve, None), AsyncioExecutor)
    assert isinstance(make_executor("process", 1, app.resolve, APP_SPEC), ProcessExecutor)


def test_unknown_executor_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="asyncio, process, thread"):
        make_executor("gevent", 1, app.resolve, None)


async def test_returns_the_task_result(executor: Executor) -> None:
    assert await executor.run(call("exec.add", 2, 3)) == 5


async def test_runs_async_def_tasks(executor: Executor) -> None:
    assert await executor.run(call("exec.async_add", 2, 3)) == 5


async def test_builtin_exception_keeps_its_type_and_message(executor: Executor) -> None:
    with pytest.raises(ValueError, match=r"^boom$"):
        await executor.run(call("exec.fail"))


async def test_other_exception_keeps_its_type_name_and_message(executor: Executor) -> None:
    with pytest.raises(Exception) as info:
        await executor.run(call("exec.fail_custom"))
    assert type_and_message(info.value) == ("CustomError", "custom boom")


async def test_retry_raised_by_a_task_stays_a_retry(executor: Executor) -> None:
    with pytest.raises(Retry) as info:
        await executor.run(call("exec.retry"))
    assert info.value.countdown_s == 5
    assert str(info.value) == "later"


async def test_task_sees_its_context(executor: Executor) -> None:
    got = await executor.run(call("exec.context", task_id="ctx-1", concurrency=7))
    assert list(got) == ["ctx-1", 7]
    assert current_task() is None  # not leaked into the caller


async def test_async_task_sees_its_context(executor: Executor) -> None:
    got = await executor.run(call("exec.async_context", task_id="ctx-2", concurrency=3))
    assert list(got) == ["ctx-2", 3]


async def test_unknown_task_raises_task_not_registered(executor: Executor) -> None:
    with pytest.raises(TaskNotRegistered):
        await executor.run(call("exec.nope"))


async def test_time_limit_raises_time_limit_exceeded_promptly(executor: Executor) -> None:
    # A sync sleep would block the asyncio executor's loop: it gets the async one.
    task = "exec.async_sleep" if executor.name == "asyncio" else "exec.sleep"
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        await executor.run(call(task, 2.0), time_limit_s=0.3)
    assert time.monotonic() - t0 < 1.5


async def test_timeout_error_raised_by_the_task_is_not_a_time_limit(executor: Executor) -> None:
    with pytest.raises(TimeoutError, match="the task's own timeout") as info:
        await executor.run(call("exec.raise_timeout"), time_limit_s=5)
    assert not isinstance(info.value, TimeLimitExceeded)


# -- thread ------------------------------------------------------------------------------------


async def test_thread_calls_after_a_time_limit_do_not_queue_behind_the_abandoned_one() -> None:
    ex = ThreadExecutor(1, app.resolve)
    await ex.start()
    try:
        with pytest.raises(TimeLimitExceeded):
            await ex.run(call("exec.sleep", 1.0), time_limit_s=0.1)
        t0 = time.monotonic()
        assert await ex.run(call("exec.add", 1, 1)) == 2
        assert time.monotonic() - t0 < 0.5
    finally:
        await ex.shutdown(wait=False)


# -- asyncio -----------------------------------------------------------------------------------


async def test_asyncio_sync_task_past_its_limit_raises_once_it_returns() -> None:
    ex = AsyncioExecutor(1, app.resolve)
    with pytest.raises(TimeLimitExceeded):
        await ex.run(call("exec.sleep", 0.3), time_limit_s=0.1)


# -- process -----------------------------------------------------------------------------------


def test_process_executor_requires_an_app_spec() -> None:
    with pytest.raises(ConfigError, match="app_spec"):
        make_executor("process", 1, app.resolve, None)


def test_process_executor_refuses_fork() -> None:
    with pytest.raises(ConfigError, match="start method 'fork'"):
        ProcessExecutor(1, app.resolve, APP_SPEC, start_method="fork")


async def test_children_import_the_app_afresh_not_forked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_app, "MARKER", "set in the parent")
    ex = ProcessExecutor(1, app.resolve, APP_SPEC)
    await ex.start()
    try:
        assert ex.start_method in ("spawn", "forkserver")
        assert await ex.run(call("exec.marker")) == "fresh import"
    finally:
        await ex.shutdown(wait=False)


async def test_children_are_warm_once_start_returns(pool: ProcessExecutor) -> None:
    pids = pool.child_pids
    assert len(pids) == 2
    assert all(alive(p) for p in pids)
    assert os.getpid() not in pids
    t0 = time.monotonic()
    assert await pool.run(call("exec.pid")) in pids  # no child started for it
    assert time.monotonic() - t0 < 0.5  # a cold child needs >= 0.15 s to import the app


async def test_children_run_calls_in_parallel() -> None:
    ex = ProcessExecutor(3, app.resolve, APP_SPEC)
    await ex.start()
    try:
        t0 = time.monotonic()
        pids = await asyncio.gather(*(ex.run(call("exec.sleep_pid", 0.6)) for _ in range(3)))
        assert time.monotonic() - t0 < 1.3  # serially: 1.8 s
        assert sorted(pids) == sorted(ex.child_pids)
    finally:
        await ex.shutdown(wait=False)


async def test_hard_time_limit_replaces_only_that_child(pool: ProcessExecutor) -> None:
    before = pool.child_pids
    t0 = time.monotonic()
    limited = asyncio.create_task(pool.run(call("exec.sleep_pid", 10.0), time_limit_s=0.5))
    other = asyncio.create_task(pool.run(call("exec.sleep_pid", 1.5)))
    with pytest.raises(TimeLimitExceeded):
        await limited
    assert time.monotonic() - t0 < 1.5
    survivor = await other  # the other call, in the other child, is untouched
    assert survivor in before
    after = await wait_for_children(pool, 2)
    (killed,) = set(before) - {survivor}
    assert survivor in after
    assert killed not in after
    assert not alive(killed)
    assert await pool.run(call("exec.add", 1, 2)) == 3


async def test_child_exit_raises_child_process_died_and_the_pool_recovers(
    pool: ProcessExecutor,
) -> None:
    with pytest.raises(ChildProcessDied, match="exit code 3") as info:
        await pool.run(call("exec.exit", 3))
    assert info.value.exitcode == 3
    results = await asyncio.gather(*(pool.run(call("exec.add", i, 1)) for i in range(4)))
    assert results == [1, 2, 3, 4]
    assert len(await wait_for_children(pool, 2)) == 2


async def test_child_killed_during_a_call_raises_child_process_died(
    pool: ProcessExecutor,
) -> None:
    running = asyncio.create_task(pool.run(call("exec.sleep", 10.0)))
    await asyncio.sleep(0.3)
    for pid in pool.child_pids:  # the OOM killer's way: SIGKILL, to both to be sure
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ChildProcessDied, match="SIGKILL"):
        await asyncio.wait_for(running, 2.0)
    assert await pool.run(call("exec.add", 1, 1)) == 2


async def test_child_killed_while_idle_is_replaced_on_the_next_call(
    pool: ProcessExecutor,
) -> None:
    before = pool.child_pids
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    pids = await asyncio.gather(*(pool.run(call("exec.sleep_pid", 0.1)) for _ in range(2)))
    assert not set(pids) & set(before)
    assert sorted(pool.child_pids) == sorted(pids)


async def test_forkserver_children_work_too() -> None:
    ex = ProcessExecutor(1, app.resolve, APP_SPEC, start_method="forkserver")
    await ex.start()
    try:
        assert await ex.run(call("exec.async_add", 1, 2)) == 3
        with pytest.raises(TimeLimitExceeded):
            await ex.run(call("exec.sleep", 5.0), time_limit_s=0.2)
        assert len(await wait_for_children(ex, 1)) == 1
    finally:
        await ex.shutdown(wait=False)


async def test_unpicklable_result_is_a_clear_task_error(pool: ProcessExecutor) -> None:
    with pytest.raises(TaskError, match="cannot be sent back from the child process") as info:
        await pool.run(call("exec.unpicklable"))
    assert info.value.exc_type == "PicklingError"
    assert await pool.run(call("exec.add", 1, 1)) == 2  # the child is fine


async def test_cancelled_call_kills_and_replaces_its_child(pool: ProcessExecutor) -> None:
    before = pool.child_pids
    running = asyncio.create_task(pool.run(call("exec.sleep_pid", 10.0)))
    await asyncio.sleep(0.2)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(0.1)
    after = await wait_for_children(pool, 2)
    assert len(set(before) & set(after)) == 1


async def test_shutdown_with_wait_lets_running_calls_finish() -> None:
    ex = ProcessExecutor(1, app.resolve, APP_SPEC)
    await ex.start()
    pids = ex.child_pids
    running = asyncio.create_task(ex.run(call("exec.sleep", 0.5)))
    await asyncio.sleep(0.1)
    await ex.shutdown(wait=True)
    assert running.done()
    assert running.result() == 0.5
    assert not any(alive(p) for p in pids)


async def test_shutdown_without_wait_kills_children_and_fails_running_calls() -> None:
    ex = ProcessExecutor(1, app.resolve, APP_SPEC)
    await ex.start()
    pids = ex.child_pids
    running = asyncio.create_task(ex.run(call("exec.sleep", 10.0)))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await ex.shutdown(wait=False)
    with pytest.raises(ChildProcessDied):
        await asyncio.wait_for(running, 2.0)
    assert time.monotonic() - t0 < 2.0
    assert not any(alive(p) for p in pids)


async def test_a_child_that_cannot_import_the_app_fails_start() -> None:
    ex = ProcessExecutor(1, app.resolve, "tests.apps.no_such_module:app")
    with pytest.raises(ConfigError, match="no_such_module"):
        await ex.start()
    assert ex.child_pids == []


async def test_shutdown_right_after_a_time_limit_leaves_no_child_behind() -> None:
    ex = ProcessExecutor(1, app.resolve, APP_SPEC)
    await ex.start()
    (pid,) = ex.child_pids
    with pytest.raises(TimeLimitExceeded):
        await ex.run(call("exec.sleep", 5.0), time_limit_s=0.2)
    await ex.shutdown(wait=True)
    assert not alive(pid)
    assert ex.child_pids == []
