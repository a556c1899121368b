"""Helpers shared by the tests: isolated settings, worker subprocesses, waiting."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

from qtasks import QTasks, testing
from qtasks.broker.jetstream import JetStreamBroker
from qtasks.config import Settings, load_settings
from qtasks.worker import Worker
from tests.apps.demo import RUN_LOG_ENV, make_app

ROOT = Path(__file__).resolve().parent.parent
NATS_URL = os.environ.get("QTASKS_TEST_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("QTASKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def isolated_env(
    nats_url: str = NATS_URL, redis_url: str = REDIS_URL, **extra: Any
) -> dict[str, str]:
    """QTASKS_* variables giving a fresh stream, subjects and key prefix."""
    return testing.isolated_env(
        nats_url, redis_url, prefix="t", config_path=ROOT / "tests" / "empty.toml", **extra
    )


def settings_from(env: Mapping[str, str]) -> Settings:
    return load_settings(env.get("QTASKS_CONFIG"), env={**os.environ, **env})


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``text`` whose ``event`` is ``event`` (other lines skipped)."""
    out = []
    for line in text.splitlines():
        if f'"{event}"' in line:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == event:
                out.append(rec)
    return out


@contextlib.asynccontextmanager
async def running(
    app: QTasks, concurrency: int = 2, executor: str = "thread", **kw: Any
) -> AsyncIterator[Worker]:
    """An in-process worker of ``app``, serving while the block runs, drained after it."""
    w = Worker(app, concurrency=concurrency, executor=executor, shutdown_grace_s=5, **kw)
    t = asyncio.create_task(w.run())
    await asyncio.wait_for(w.started.wait(), 10)
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(t, 15)


class WorkerProcess:
    """``qtasks worker`` as a subprocess with the given env; logs go to a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        app_spec: str = "tests.apps.demo:app",
        *args: str,
        log_dir: Path | None = None,
        keep_log: bool = False,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.cmd = [sys.executable, "-m", "qtasks", "worker", "-A", app_spec, "--log-json", *args]
        self.log_path = (log_dir or Path("/tmp")) / f"qtasks-worker-{uuid.uuid4().hex[:8]}.log"
        self.keep_log = keep_log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0, *, allow_exit: bool = False) -> WorkerProcess:
        """Start and wait for ``worker_started``; with ``allow_exit``, a worker that has
        already exited again by then (a task killed it) is not an error."""
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(
            lambda: "worker_started" in self.log() or self.proc.poll() is not None,  # type: ignore[union-attr]
            timeout_s,
            "worker start",
        )
        if self.proc.poll() is not None and not (allow_exit and "worker_started" in self.log()):
            raise RuntimeError(f"worker exited at start:\n{self.log()[-3000:]}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def events(self, event: str) -> list[dict[str, Any]]:
        """The worker's JSON log lines whose ``event`` is ``event``."""
        return log_events(self.log(), event)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(
    cond: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll a test condition (test code only; bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Stack:
    """One test's isolated stream, subjects and key prefix: the env for worker subprocesses,
    an app for the caller, and the workers started for it.

    With ``run_log``, the demo tasks record their runs in that file (one line per run)
    rather than in Redis, so counting runs needs neither server (fault tests).
    ``shared`` servers (the default URLs) get their stream and keys deleted at close;
    a test's private servers are simply thrown away with it.
    """

    def __init__(
        self,
        nats_url: str = NATS_URL,
        redis_url: str = REDIS_URL,
        *,
        run_log: Path | None = None,
        log_dir: Path | None = None,
        shared: bool = True,
        **extra: Any,
    ) -> None:
        self.env = isolated_env(nats_url, redis_url, **extra)
        self.run_log = run_log
        if run_log is not None:
            self.env[RUN_LOG_ENV] = str(run_log)
        self.settings = settings_from(self.env)
        self.app: QTasks = make_app(self.settings)
        self.redis = redis.Redis.from_url(self.settings.redis.url, socket_timeout=5)
        self.log_dir = log_dir
        self.shared = shared
        self.workers: list[WorkerProcess] = []

    def worker(
        self, *args: str, app_spec: str = "tests.apps.demo:app", timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None, allow_exit: bool = False,
    ) -> WorkerProcess:
        w = WorkerProcess(
            {**self.env, **(env or {})}, app_spec, *args, log_dir=self.log_dir,
            keep_log=self.log_dir is not None,
        )
        self.workers.append(w)
        return w.start(timeout_s, allow_exit=allow_exit)

    def runs(self, task_id: str) -> int:
        """How many times task ``task_id`` started running (in any process)."""
        if self.run_log is not None:
            return self.run_counts()[task_id]
        return int(self.redis.get(f"{self.settings.redis.key_prefix}:runs:{task_id}") or 0)

    def run_counts(self) -> collections.Counter[str]:
        """Runs per task id, from the run log."""
        return collections.Counter(line[0] for line in self.run_lines())

    def run_lines(self) -> list[list[str]]:
        """The run log's lines: ``[task_id, pid, unix_time, attempt]``."""
        assert self.run_log is not None, "this stack records runs in Redis"
        try:
            text = self.run_log.read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.strip()]

    def duplicates(self, task_ids: Iterable[str]) -> int:
        """Runs beyond the first, summed over ``task_ids``."""
        counts = self.run_counts() if self.run_log is not None else None
        total = 0
        for t in task_ids:
            n = counts[t] if counts is not None else self.runs(t)
            total += max(0, n - 1)
        return total

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.shared:

            async def cleanup() -> None:
                b = JetStreamBroker(self.settings.nats.url, self.settings.nats)
                await b.connect()
                await b.delete_streams()
                await b.close()

            asyncio.run(cleanup())
        self.app.close()
        if self.shared:
            prefix = self.settings.redis.key_prefix
            for key in self.redis.scan_iter(f"{prefix}:*", count=1000):
                self.redis.delete(key)
        self.redis.close()


FAULTS_REPORT_ENV = "QTASKS_FAULTS_REPORT"


def record_fault(
    fault: str, *, tasks: int, lost: int, duplicates: int, seconds: float, **extra: Any
) -> None:
    """Print a fault test's figures, and append them as one JSON line to the file named by
    ``$QTASKS_FAULTS_REPORT`` when set (benchmarks/faults.py renders the README table)."""
    row = {
        "fault": fault,
        "tasks": tasks,
        "lost": lost,
        "duplicates": duplicates,
        "seconds": round(seconds, 1),
        **extra,
    }
    print(f"\nFAULT {json.dumps(row)}")
    path = os.environ.get(FAULTS_REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
