"""Settings: defaults < config.toml < QTASKS_* env < CLI overrides, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import circuit_limits, service_settings
from qtasks.config import load_settings
from qtasks.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_work_on_loopback() -> None:
    s = load_settings(ROOT / "tests" / "empty.toml", env={})
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.worker.concurrency >= 1 and s.redis.result_ttl_s == 86400


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[nats]\nurl = "nats://file:4222"\n[worker]\nmax_concurrent_tasks = 3\n')
    s = load_settings(path, env={})
    assert s.nats.url == "nats://file:4222" and s.worker.concurrency == 3
    s = load_settings(
        path, env={"QTASKS_NATS_URL": "nats://env:4222", "QTASKS_WORKER_MAX_CONCURRENT_TASKS": "5"}
    )
    assert s.nats.url == "nats://env:4222" and s.worker.concurrency == 5
    s = load_settings(
        path,
        env={"QTASKS_WORKER_MAX_CONCURRENT_TASKS": "5"},
        overrides={"worker": {"max_concurrent_tasks": 7}},
    )
    assert s.worker.concurrency == 7


def test_env_lists_are_comma_separated() -> None:
    s = load_settings(ROOT / "tests" / "empty.toml", env={"QTASKS_WORKER_QUEUES": "a,b"})
    assert s.worker.queues == ["a", "b"]
    s = load_settings(ROOT / "tests" / "empty.toml", env={"QTASKS_WORKER_QUEUES": "solo"})
    assert s.worker.queues == ["solo"]


def test_bad_values_and_unknown_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_concurrent_tasks"):
        load_settings(
            ROOT / "tests" / "empty.toml", env={"QTASKS_WORKER_MAX_CONCURRENT_TASKS": "many"}
        )
    with pytest.raises(ConfigError, match="unknown config sections"):
        load_settings(write(tmp_path, "[nat]\nurl = 'x'\n"), env={})
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, "[nats]\nurll = 'x'\n"), env={})
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, "[nats\n"), env={})


def test_the_shipped_config_toml_loads_with_the_service_sections() -> None:
    s = load_settings(ROOT / "config.toml", env={})
    assert s.server.port == 8000 and s.server.host == "0.0.0.0"
    assert circuit_limits(s).max_qubits == 28
    assert service_settings(s).default_shots == 1024


def test_app_section_keys_are_checked_and_overridable(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, "[app]\nmax_qubits = 20\n"), env={"QTASKS_APP_MAX_SHOTS": "99"}
    )
    assert circuit_limits(s).max_qubits == 20 and circuit_limits(s).max_shots == 99
    with pytest.raises(ConfigError, match="max_qbits"):
        service_settings(load_settings(write(tmp_path, "[app]\nmax_qbits = 20\n"), env={}))


def test_event_loop_choice_auto_takes_uvloop_when_installed_and_a_typo_is_a_clear_error() -> None:
    import asyncio

    from qtasks._loop import loop_factory

    assert loop_factory("asyncio") is asyncio.new_event_loop
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    with pytest.raises(ConfigError, match="event_loop must be one of auto, asyncio, uvloop"):
        loop_factory("uv-loop")


def test_worker_with_a_bad_event_loop_setting_exits_2_with_the_reason() -> None:
    import subprocess
    import sys

    env = {"QTASKS_WORKER_EVENT_LOOP": "trio", "QTASKS_CONFIG": str(ROOT / "tests/empty.toml"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "qtasks", "worker", "-A", "tests.apps.demo:app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "event_loop must be one of auto, asyncio, uvloop, not 'trio'" in run.stderr
