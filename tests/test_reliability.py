"""Small rules behind the fault-injection tests (tests/test_faults.py), without servers."""

from __future__ import annotations

import asyncio
import time

import pytest

from qtasks import QTasks
from qtasks.backends.memory import MemoryBackend
from qtasks.config import load_settings
from qtasks.errors import BackendError
from qtasks.message import State, TaskResult


def test_a_comma_separated_nats_url_stays_one_string_listing_every_server() -> None:
    env = {"QTASKS_NATS_URL": "nats://127.0.0.1:4222,nats://127.0.0.1:4223"}
    s = load_settings("tests/empty.toml", env=env)
    assert s.nats.url == "nats://127.0.0.1:4222,nats://127.0.0.1:4223"


def test_a_list_setting_from_the_environment_is_still_split_on_commas() -> None:
    s = load_settings("tests/empty.toml", env={"QTASKS_WORKER_QUEUES": "a, b"})
    assert s.worker.queues == ["a", "b"]
    one = load_settings("tests/empty.toml", env={"QTASKS_WORKER_QUEUES": "a"})
    assert one.worker.queues == ["a"]


def _app() -> QTasks:
    return QTasks(
        "unit", broker="memory://", backend="memory://",
        settings=load_settings("tests/empty.toml", env={}),
    )  # fmt: skip


def test_retry_backoff_doubles_up_to_retry_backoff_max() -> None:
    app = _app()
    t = app.task(name="t", max_retries=10, retry_backoff=1.0, retry_backoff_max=5.0,
                 retry_jitter=False)(lambda: None)  # fmt: skip
    assert [t.backoff_s(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_jitter_keeps_each_delay_between_half_and_all_of_it() -> None:
    app = _app()
    t = app.task(name="t", max_retries=10, retry_backoff=2.0, retry_backoff_max=8.0)(
        lambda: None
    )
    for n, full in [(0, 2.0), (1, 4.0), (2, 8.0), (6, 8.0)]:
        delays = [t.backoff_s(n) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)


class _FlakyBackend(MemoryBackend):
    """A memory backend whose wait() fails ``outage_s`` seconds long, as Redis down would."""

    def __init__(self, outage_s: float) -> None:
        super().__init__()
        self.up_at = time.monotonic() + outage_s
        self.failures = 0

    async def wait(
        self, task_id: str, timeout_s: float | None, *, running: bool = False
    ) -> TaskResult:
        if time.monotonic() < self.up_at:
            self.failures += 1
            await asyncio.sleep(0.05)
            raise BackendError("Redis GET failed: connection refused")
        return await super().wait(task_id, timeout_s, running=running)


async def test_aget_rides_through_a_backend_outage_shorter_than_its_timeout() -> None:
    backend = _FlakyBackend(outage_s=0.8)
    app = QTasks("unit", broker="memory://", backend=backend,
                 settings=load_settings("tests/empty.toml", env={}))  # fmt: skip
    await backend.set(TaskResult(id="t1", state=State.SUCCESS, result=42))
    assert await app.AsyncResult("t1").aget(timeout=5) == 42
    assert backend.failures >= 2


async def test_aget_raises_the_backend_error_when_the_outage_outlasts_its_timeout() -> None:
    backend = _FlakyBackend(outage_s=60)
    app = QTasks("unit", broker="memory://", backend=backend,
                 settings=load_settings("tests/empty.toml", env={}))  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(BackendError):
        await app.AsyncResult("t1").aget(timeout=0.6)
    assert time.monotonic() - t0 < 1.5


class _RecordingBackend(MemoryBackend):
    """Remembers how each wait() was asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.running: list[bool] = []

    async def wait(
        self, task_id: str, timeout_s: float | None, *, running: bool = False
    ) -> TaskResult:
        self.running.append(running)
        return await super().wait(task_id, timeout_s, running=running)


async def test_a_result_asked_for_right_after_sending_subscribes_before_reading() -> None:
    """A handle from delay() waited on at once expects an unfinished task (one round trip
    less); a handle for an id sent elsewhere, or waited on later, reads first."""
    backend = _RecordingBackend()
    app = QTasks("unit", broker="memory://", backend=backend,
                 settings=load_settings("tests/empty.toml", env={}))  # fmt: skip

    @app.task(name="unit.echo")
    def echo(x: int) -> int:
        return x

    fresh = await echo.adelay(1)
    await backend.set(TaskResult(id=fresh.id, state=State.SUCCESS, result=1))
    assert await fresh.aget(timeout=5) == 1  # a wrong guess still gets the stored result
    assert await app.AsyncResult(fresh.id).aget(timeout=5) == 1
    later = await echo.adelay(2)
    await backend.set(TaskResult(id=later.id, state=State.SUCCESS, result=2))
    await asyncio.sleep(0.1)
    assert await later.aget(timeout=5) == 2
    assert backend.running == [True, False, False]
