"""The service's own settings: the ``[app]`` section of config.toml, ``QTASKS_APP_*`` env.

The section holds two kinds of keys: the service's (below) and the circuit limits of
:class:`app.circuits.CircuitLimits` (``max_qubits``, ``max_shots``, ``max_work``, ...).
A key that is neither is a configuration error.
"""

from __future__ import annotations

import functools

import msgspec

from app.circuits import CircuitLimits
from qtasks.config import Settings, load_settings, section
from qtasks.errors import ConfigError


class ServiceSettings(msgspec.Struct, frozen=True):
    default_shots: int = 1024
    max_request_bytes: int = 512 * 1024
    """Whole HTTP body; above it the API answers 413 before parsing JSON."""
    api_key_hashes: list[str] = []
    """``sha256:<hex>`` of each accepted API key; empty = no authentication."""
    metrics_enabled: bool = True
    """Serve GET /metrics (False: 404). Restrict it further with metrics_require_key."""
    metrics_require_key: bool = False
    """With API keys on, whether GET /metrics needs one too (the hook for access control)."""
    executor: str = "process"
    """The executor the service's worker uses: Aer holds the GIL, so threads freeze the loop."""


def _fields(cls: type[msgspec.Struct]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(cls)}


def _part(settings: Settings, cls: type[msgspec.Struct]) -> dict[str, object]:
    unknown = set(settings.app) - _fields(ServiceSettings) - _fields(CircuitLimits)
    if unknown:
        raise ConfigError(f"unknown keys in [app]: {sorted(unknown)}")
    return {k: v for k, v in settings.app.items() if k in _fields(cls)}


def service_settings(settings: Settings) -> ServiceSettings:
    """The service's own keys of ``[app]`` (env ``QTASKS_APP_<KEY>`` overrides)."""
    return section(_part(settings, ServiceSettings), ServiceSettings, "app", settings.app_env)


def circuit_limits(settings: Settings) -> CircuitLimits:
    """The circuit limits of ``[app]`` (env ``QTASKS_APP_<KEY>`` overrides)."""
    return section(_part(settings, CircuitLimits), CircuitLimits, "app", settings.app_env)


@functools.cache
def default_settings() -> Settings:
    return load_settings()
