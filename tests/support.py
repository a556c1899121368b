"""Helpers shared by the tests: isolated settings, worker subprocesses, waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qtasks.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
NATS_URL = os.environ.get("QTASKS_TEST_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("QTASKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def isolated_env(
    nats_url: str = NATS_URL, redis_url: str = REDIS_URL, **extra: Any
) -> dict[str, str]:
    """QTASKS_* variables giving a fresh stream, subjects and key prefix."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "QTASKS_CONFIG": str(ROOT / "tests" / "empty.toml"),
        "QTASKS_NATS_URL": nats_url,
        "QTASKS_REDIS_URL": redis_url,
        "QTASKS_NATS_STREAM": f"T_{tag}",
        "QTASKS_NATS_SUBJECT_PREFIX": f"t{tag}",
        "QTASKS_NATS_DEAD_LETTER_STREAM": f"TDLQ_{tag}",
        "QTASKS_NATS_DEAD_LETTER_PREFIX": f"tdlq{tag}",
        "QTASKS_REDIS_KEY_PREFIX": f"t{tag}",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def settings_from(env: Mapping[str, str]) -> Settings:
    return load_settings(env.get("QTASKS_CONFIG"), env={**os.environ, **env})


class WorkerProcess:
    """``qtasks worker`` as a subprocess with the given env; logs go to a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        app_spec: str = "tests.apps.demo:app",
        *args: str,
        log_dir: Path | None = None,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.cmd = [sys.executable, "-m", "qtasks", "worker", "-A", app_spec, "--log-json", *args]
        self.log_path = (log_dir or Path("/tmp")) / f"qtasks-worker-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
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
        if self.proc.poll() is not None:
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
        self.log_path.unlink(missing_ok=True)

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
