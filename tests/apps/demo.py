"""The test suite's task app. Settings come from QTASKS_* env vars, so each test can
point a worker subprocess at its own stream and key prefix."""

from __future__ import annotations

import asyncio
import os
import time

import redis

from qtasks import QTasks, Settings, current_task, load_settings

#: When set, runs are appended to this file instead of counted in Redis (fault tests: the
#: count must survive a Redis outage and must not make the task depend on Redis).
RUN_LOG_ENV = "QTASKS_TEST_RUN_LOG"


def _record_run(app: QTasks) -> int:
    """Count runs per task id in Redis, so tests can see duplicates across processes."""
    ctx = current_task()
    assert ctx is not None
    run_log = os.environ.get(RUN_LOG_ENV)
    if run_log:
        # One O_APPEND write per line: lines from concurrent processes never interleave.
        line = f"{ctx.task_id} {os.getpid()} {time.time():.6f} {ctx.attempt}\n".encode()
        fd = os.open(run_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return 0
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

    @app.task(name="demo.noop")
    def noop() -> None:
        return None

    @app.task(name="demo.always_fails", max_retries=3, retry_backoff=0.3, retry_jitter=False)
    def always_fails() -> None:
        _record_run(app)
        raise RuntimeError("fails every time")

    @app.task(name="demo.exit")
    def exit_process(code: int) -> None:
        """Ends the process running it at once (no cleanup): the worker's, or a child's."""
        _record_run(app)
        os._exit(code)

    return app


app = make_app()
