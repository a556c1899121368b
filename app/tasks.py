"""The quantum service's qtasks app and its one task, ``run_circuit``.

From any Python caller: ``run_circuit.delay(qasm, 1024).get(timeout=60)``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import msgspec

from app.settings import service_settings
from qtasks import QTasks, current_task

app = QTasks("quantum")
service = service_settings(app.settings)


def circuit_limits() -> Any:
    """The service's limits as app.circuits.CircuitLimits (imported lazily: qiskit is heavy)."""
    from app.circuits import CircuitLimits

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
    from app.circuits import run_qasm

    ctx = current_task()
    threads = aer_threads(ctx.concurrency) if ctx is not None else 0
    run = run_qasm(qasm, shots, seed=seed, limits=circuit_limits(), max_parallel_threads=threads)
    out: dict[str, Any] = msgspec.to_builtins(run)
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    out["aer_threads"] = threads
    return out
