"""The service's own settings: the ``[app]`` section of config.toml, ``QTASKS_APP_*`` env."""

from __future__ import annotations

import functools

import msgspec

from qtasks.config import Settings, load_settings, section


class ServiceSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_qubits: int = 28
    """2^28 amplitudes x 16 bytes = 4 GiB per statevector."""
    max_shots: int = 1_000_000
    min_shots: int = 1
    default_shots: int = 1024
    max_program_bytes: int = 256 * 1024
    max_request_bytes: int = 512 * 1024
    """Whole HTTP body; above it the API answers 413 before parsing JSON."""
    max_operations: int = 1_000_000
    max_nesting_depth: int = 32
    memory_budget_bytes: int = 4 * 1024**3
    result_wait_s: float = 0.0
    """Unused by default: POST /tasks never waits for the simulation."""
    api_key_hashes: list[str] = []
    """``sha256:<hex>`` of each accepted API key; empty = no authentication."""
    metrics_require_key: bool = False
    """With API keys on, whether GET /metrics needs one too."""
    executor: str = "process"
    """The executor the service's worker uses: Aer holds the GIL, so threads freeze the loop."""


def service_settings(settings: Settings) -> ServiceSettings:
    return section(settings.app, ServiceSettings, "app")


@functools.cache
def default_settings() -> Settings:
    return load_settings()
