"""What the benchmarks share: an isolated stream/key prefix on the real servers, a worker
subprocess, an RSS sampler, the machine's description, and small statistics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NATS_URL = os.environ.get("QTASKS_BENCH_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("QTASKS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MIB = 1024 * 1024

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(ROOT))


def isolated_env(tag: str | None = None, **extra: Any) -> dict[str, str]:
    """QTASKS_* variables for a fresh stream, subjects and Redis key prefix."""
    from qtasks.testing import isolated_env as fresh_env

    return fresh_env(NATS_URL, REDIS_URL, prefix="b", tag=tag,
                     config_path=ROOT / "tests" / "empty.toml", **extra)  # fmt: skip


async def cleanup(env: Mapping[str, str]) -> None:
    """Delete the isolated streams and keys of ``env``."""
    import redis.asyncio as aioredis

    from qtasks.broker.jetstream import JetStreamBroker
    from qtasks.config import load_settings

    s = load_settings(env["QTASKS_CONFIG"], env={**os.environ, **env})
    b = JetStreamBroker(s.nats.url, s.nats)
    await b.connect()
    await b.delete_streams()
    await b.close()
    r = aioredis.Redis.from_url(s.redis.url)
    keys = [k async for k in r.scan_iter(f"{s.redis.key_prefix}:*", count=1000)]
    for i in range(0, len(keys), 500):
        await r.delete(*keys[i : i + 500])
    await r.aclose()


class WorkerProcess:
    """``python -m qtasks worker`` as a subprocess; its log goes to a temporary file."""

    def __init__(self, env: Mapping[str, str], app_spec: str, *args: str,
                 queue: str = "default") -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.queue = queue
        self.cmd = [sys.executable, "-m", "qtasks", "worker", "-A", app_spec, "--log-json",
                    "--log-level", os.environ.get("QTASKS_BENCH_WORKER_LOG_LEVEL", "INFO"),
                    "--queues", queue, *args]
        self.log_path = Path("/tmp") / f"qtasks-bench-worker-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 120.0) -> WorkerProcess:
        """Start and wait until the worker is ready: connected, executor warm, and pulling
        (its pull request waits on the queue's consumer; this works at any log level)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            asyncio.run(self._wait_pulling(timeout_s))
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    async def _wait_pulling(self, timeout_s: float) -> None:
        import nats
        import nats.js.errors

        from qtasks.broker.jetstream import durable_name
        from qtasks.config import load_settings

        s = load_settings(self.env["QTASKS_CONFIG"], env=self.env).nats
        nc = await nats.connect(s.url)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited at start:\n{self.log()[-3000:]}")
                try:
                    info = await nc.jetstream().consumer_info(
                        s.stream, durable_name(s.stream, self.queue))
                    if (info.num_waiting or 0) > 0:
                        return
                except nats.js.errors.NotFoundError:
                    pass
                await asyncio.sleep(0.05)
            raise RuntimeError(f"worker not ready after {timeout_s} s:\n{self.log()[-3000:]}")
        finally:
            await nc.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, keep_log: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not keep_log:
            self.log_path.unlink(missing_ok=True)


def start_worker(env: Mapping[str, str], app_spec: str, *args: str,
                 timeout_s: float = 120.0, queue: str = "default") -> WorkerProcess:
    """A started worker of ``queue`` (connected, executor warm, pulling)."""
    return WorkerProcess(env, app_spec, *args, queue=queue).start(timeout_s)


class RssSampler:
    """Samples the resident memory of a process and all its descendants, summed, in a
    background thread; ``peak_bytes`` is the highest sum seen."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._procs: list[psutil.Process] = []
        self.peak_bytes = 0
        self.samples = 0

    def current_bytes(self, refresh: bool = True) -> int:
        """RSS of the process and its descendants now (the list of descendants is looked up
        again when ``refresh``: that walks /proc, so the sampler does it only now and then)."""
        import psutil

        if refresh or not self._procs:
            try:
                self._procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return 0
        total = 0
        for p in self._procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            # Children change rarely (the process executor's are started once, replaced on a
            # crash): re-list them every 10th sample, measure them every time.
            self.peak_bytes = max(self.peak_bytes, self.current_bytes(refresh=tick % 10 == 0))
            self.samples += 1
            tick += 1
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine() -> dict[str, Any]:
    """Date and machine, for the tables."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def machine_line(m: Mapping[str, Any]) -> str:
    return (f"{m['date']}; {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, "
            f"Python {m['python']}, {m['platform']}")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)

