"""The quantum service's qtasks app and its one task, ``run_circuit``.

From any Python caller: ``run_circuit.delay(qasm, 1024).get(timeout=60)``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import msgspec

# Imported here, not in the task: the worker's children import this module when they
# start, so qiskit and Aer are loaded before the first circuit arrives.
from app.circuits import CircuitLimits, run_qasm
from app.settings import circuit_limits as settings_limits
from app.settings import service_settings
from qtasks import QTasks, current_task

app = QTasks("quantum")
service = service_settings(app.settings)
limits = settings_limits(app.settings)


def circuit_limits() -> CircuitLimits:
    """The service's limits (``[app]`` in config.toml, ``QTASKS_APP_*``)."""
    return limits


def aer_threads(concurrency: int, executor: str = "process") -> int:
    """Aer's OpenMP threads per simulation, so concurrent runs share the cores, not fight.

    Only the process executor runs simulations at once (one per child): each gets its share
    of the cores. In one process (thread, asyncio) every ``AerSimulator.run()`` queues on
    Aer's single internal job thread, so runs never overlap and each may use every core;
    splitting the cores there only makes each run slower (measured: 1.16x at concurrency 2).
    """
    cores = os.cpu_count() or 1
    if executor != "process":
        return cores
    return max(1, cores // max(1, concurrency))


@app.task(name="app.run_circuit")
def run_circuit(qasm: str, shots: int = 1024, seed: int | None = None) -> dict[str, Any]:
    """Parse an OpenQASM 3 program, run it on Qiskit Aer, return counts and timings."""
    ctx = current_task()
    threads = aer_threads(ctx.concurrency, ctx.executor) if ctx is not None else 0
    run = run_qasm(qasm, shots, seed=seed, limits=circuit_limits(), max_parallel_threads=threads)
    out: dict[str, Any] = msgspec.to_builtins(run)
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    out["aer_threads"] = threads
    return out
