"""Helpers for tests of code built on qtasks."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any


def isolated_env(
    nats_url: str = "nats://127.0.0.1:4222",
    redis_url: str = "redis://127.0.0.1:6379/0",
    *,
    prefix: str = "t",
    tag: str | None = None,
    config_path: str | Path | None = None,
    **extra: Any,
) -> dict[str, str]:
    """``QTASKS_*`` variables that give a test its own stream, subjects and Redis key prefix.

    Pass them to worker subprocesses and to ``load_settings(env=...)``, so tests sharing one
    NATS and one Redis never see each other's tasks. ``extra`` adds more variables
    (``QTASKS_NATS_ACK_WAIT_S=2``).
    """
    tag = tag or uuid.uuid4().hex[:10]
    env = {
        "QTASKS_NATS_URL": nats_url,
        "QTASKS_REDIS_URL": redis_url,
        "QTASKS_NATS_STREAM": f"{prefix.upper()}_{tag}",
        "QTASKS_NATS_SUBJECT_PREFIX": f"{prefix}{tag}",
        "QTASKS_NATS_DEAD_LETTER_STREAM": f"{prefix.upper()}DLQ_{tag}",
        "QTASKS_NATS_DEAD_LETTER_PREFIX": f"{prefix}dlq{tag}",
        "QTASKS_REDIS_KEY_PREFIX": f"{prefix}{tag}",
    }
    if config_path is not None:
        env["QTASKS_CONFIG"] = str(config_path)
    env.update({k: str(v) for k, v in extra.items()})
    return env
