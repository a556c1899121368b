"""The test suite's task app. Settings come from QTASKS_* env vars, so each test can
point a worker subprocess at its own stream and key prefix."""

from __future__ import annotations

import asyncio
import os
import time

import redis

from qtasks import QTasks, Settings, current_task, load_settings


def _record_run(app: QTasks) -> int:
    """Count runs per task id in Redis, so tests can see duplicates across processes."""
    ctx = current_task()
    assert ctx is not None
    r = redis.Redis.from_url(app.settings.redis.url)
    try:
        key = f"{app.settings.redis.key_prefix}:runs:{ctx.task_id}"
        n = int(r.incr(key))
        r.expire(key, 3600)
        r.sadd(f"{app.settings.redis.key_prefix}:ran", ctx.task_id)
        r.expire(f"{app.settings.redis.key_prefix}:ran", 3600)
        return n
    finally:
        r.close()


def make_app(settings: Settings | None = None, **kwargs: object) -> QTasks:
    app = QTasks("demo", settings=settings or load_settings(), **kwargs)  # type: ignore[arg-type]

    @app.task(name="demo.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="demo.async_add")
    async def async_add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @app.task(name="demo.fail")
    def fail(message: str) -> None:
        _record_run(app)
        raise ValueError(message)

    @app.task(name="demo.flaky", max_retries=2, retry_backoff=0.2)
    def flaky() -> None:
        _record_run(app)
        raise RuntimeError("always fails")

    @app.task(name="demo.sleep")
    def sleep(seconds: float) -> float:
        _record_run(app)
        time.sleep(seconds)
        return seconds

    @app.task(name="demo.pid")
    def pid() -> int:
        return os.getpid()

    return app


app = make_app()
