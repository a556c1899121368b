"""Parse speed: qiskit-qasm3-import vs the service's lowering (app.qasm.lower_to_circuit).

The program is the performance suite's: a measured quantum-volume circuit on 23 qubits, depth 10,
exported with ``qiskit.qasm3.dumps`` (about 75 KB: ~110 two-qubit gate definitions of U and cx).
Both paths parse with the same ANTLR grammar (the ``openqasm3`` package), so that is most of the
time; the lowering replaces qiskit-qasm3-import's conversion and uses ANTLR's two-stage (SLL
first) prediction.

    python benchmarks/parse_speed.py [--repeat 9] [--qubits 23] [--depth 10] [--seed 1234]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def program(qubits: int, depth: int, seed: int) -> str:
    """The quantum-volume program as OpenQASM 3 text."""
    import qiskit.qasm3
    from qiskit.circuit.library import quantum_volume

    circuit = quantum_volume(qubits, depth=depth, seed=seed)
    circuit.measure_all()
    return qiskit.qasm3.dumps(circuit)


def measure(contenders: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """CPU seconds per run for each contender. Rounds interleave the contenders so that load
    from other processes hits them alike; CPU time is less sensitive to that load than wall
    time."""
    for fn in contenders.values():
        fn()  # warm up: ANTLR builds its prediction caches on first use
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            gc.collect()
            start = time.process_time()
            fn()
            out[name].append(time.process_time() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--qubits", type=int, default=23)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    import openqasm3
    import qiskit_qasm3_import

    from app.qasm import lower_to_circuit

    source = program(args.qubits, args.depth, args.seed)
    print(
        f"program: quantum_volume({args.qubits}, depth={args.depth}), {len(source) / 1024:.1f} KiB"
    )
    rows = measure(
        {
            "openqasm3.parse (AST only)": lambda: openqasm3.parse(source),
            "qiskit_qasm3_import.parse": lambda: qiskit_qasm3_import.parse(source),
            "app.qasm.lower_to_circuit": lambda: lower_to_circuit(source),
        },
        args.repeat,
    )
    for name, values in rows.items():
        print(
            f"{name:30s} best {min(values):.3f} s   median {statistics.median(values):.3f} s"
            f"   CPU, n={len(values)}"
        )
    importer = min(rows["qiskit_qasm3_import.parse"])
    ours = min(rows["app.qasm.lower_to_circuit"])
    print(f"ratio lower_to_circuit / importer (best of {args.repeat}): {ours / importer:.2f}")


if __name__ == "__main__":
    main()
