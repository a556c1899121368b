"""Settings: defaults, overridden by ``config.toml``, overridden by ``QTASKS_*`` env vars.

CLI flags override all three (the CLI passes them to :func:`load_settings`).
Every key of section ``[s]`` named ``k`` can be set with ``QTASKS_S_K``
(``QTASKS_NATS_URL``, ``QTASKS_WORKER_MAX_CONCURRENT_TASKS``).
The file is ``$QTASKS_CONFIG`` when set, else ``./config.toml`` when it exists.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from qtasks.errors import ConfigError

T = TypeVar("T", bound=msgspec.Struct)


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"
    port: int = 8000


class NatsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "nats://127.0.0.1:4222"
    stream: str = "QTASKS"
    """Work-queue stream holding every queue's tasks."""
    subject_prefix: str = "qtasks"
    """Queue ``q`` lives on subject ``<prefix>.<q>``."""
    dead_letter_stream: str = "QTASKS_DLQ"
    dead_letter_prefix: str = "qtasks-dlq"
    dead_letter_max_age_s: float = 7 * 86400.0
    duplicate_window_s: float = 120.0
    ack_wait_s: float = 30.0
    max_deliver: int = 100
    """Server-side backstop; the worker dead-letters crash loops well before this."""
    replicas: int = 1
    connect_timeout_s: float = 5.0
    fetch_timeout_s: float = 1.0


class RedisSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "qtasks"
    result_ttl_s: float = 86400.0


class WorkerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_concurrent_tasks: int = 0
    """0 means the machine's CPU count."""
    executor: str = "thread"
    queues: list[str] = msgspec.field(default_factory=lambda: ["default"])
    shutdown_grace_s: float = 30.0
    time_limit_s: float | None = None
    """Default hard time limit for tasks that set none."""
    max_redeliveries: int = 5
    """Deliveries lost to crashes (not retries) before a task is dead-lettered."""
    result_store_retry_s: float = 60.0
    """How long the worker keeps retrying a failed result write before giving up the ack."""
    metrics_port: int = 0
    """Serve Prometheus metrics on this port (0: off)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics server binds (0.0.0.0 in a container Prometheus scrapes)."""
    heartbeat_process: bool = True
    """Thread and asyncio executors: also send heartbeats from a small helper process, so a
    task that holds the GIL (Qiskit Aer simulating) and so freezes the worker's event loop
    is not redelivered to another worker after ack_wait."""
    event_loop: str = "auto"
    """"auto": uvloop when it is installed (a third less CPU per task), else asyncio's own;
    "asyncio" or "uvloop" to choose."""

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_tasks or (os.cpu_count() or 1)


class Settings(msgspec.Struct, frozen=True):
    server: ServerSettings = ServerSettings()
    nats: NatsSettings = NatsSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    app: dict[str, Any] = {}
    """Free-form section for the application built on qtasks (read with :func:`section`)."""
    app_env: dict[str, str] = {}
    """The ``QTASKS_APP_*`` variables seen at load time: pass as ``env`` to :func:`section`."""


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "server": ServerSettings,
    "nats": NatsSettings,
    "redis": RedisSettings,
    "worker": WorkerSettings,
}


def _env_value(raw: str, field_type: Any) -> Any:
    """Env values are strings; a list field's is comma-separated. Other fields keep their
    commas (``QTASKS_NATS_URL=nats://a:4222,nats://b:4222`` lists a cluster's servers)."""
    if field_type == list[str]:
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def section(
    data: Mapping[str, Any],
    cls: type[T],
    name: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Section ``cls`` from file ``data``, then ``QTASKS_<NAME>_<KEY>`` env, then overrides."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = dict(data)
    for field in msgspec.structs.fields(cls):
        key = f"QTASKS_{name.upper()}_{field.name.upper()}"
        if key in env:
            merged[field.name] = _env_value(env[key], field.type)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(merged, cls, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"[{name}] {e}") from e


def config_path(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if env.get("QTASKS_CONFIG"):
        return Path(env["QTASKS_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


def read_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from e


def load_settings(
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Load settings: defaults < config file < env vars < ``overrides[section][key]``."""
    env = os.environ if env is None else env
    data = read_config_file(Path(path) if path is not None else config_path(env))
    overrides = overrides or {}
    unknown = set(data) - set(_SECTIONS) - {"app"}
    if unknown:
        raise ConfigError(f"unknown config sections: {sorted(unknown)}")
    def part(name: str, cls: type[T]) -> T:
        return section(data.get(name, {}), cls, name, env, overrides.get(name))

    return Settings(
        server=part("server", ServerSettings),
        nats=part("nats", NatsSettings),
        redis=part("redis", RedisSettings),
        worker=part("worker", WorkerSettings),
        app=dict(data.get("app", {})),
        app_env={k: v for k, v in env.items() if k.startswith("QTASKS_APP_")},
    )
