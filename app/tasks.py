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
from app.settings import service_settings
from qtasks import QTasks, current_task

app = QTasks("quantum")
service = service_settings(app.settings)


def circuit_limits() -> CircuitLimits:
    """The service's limits as app.circuits.CircuitLimits."""
    fields = {f.name for f in msgspec.structs.fields(CircuitLimits)}
    return msgspec.convert(
        {k: v for k, v in msgspec.structs.asdict(service).items() if k in fields}, CircuitLimits
    )


def aer_threads(concurrency: int) -> int:
    """Aer's OpenMP threads per simulation, so concurrent runs share the cores, not fight."""
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


@app.task(name="app.run_circuit")
def run_circuit(qasm: str, shots: int = 1024, seed: int | None = None) -> dict[str, Any]:
    """Parse an OpenQASM 3 program, run it on Qiskit Aer, return counts and timings."""
    ctx = current_task()
    threads = aer_threads(ctx.concurrency) if ctx is not None else 0
    run = run_qasm(qasm, shots, seed=seed, limits=circuit_limits(), max_parallel_threads=threads)
    out: dict[str, Any] = msgspec.to_builtins(run)
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    out["aer_threads"] = threads
    return out
