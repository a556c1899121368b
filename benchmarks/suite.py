"""The benchmark's circuit suite: fixed, seeded, generated here so anyone gets the same programs.

Four families from ``qiskit.circuit.library`` (and ``qiskit.circuit.random``), each at every
requested width, measured, sampled with 1024 shots:

- ``qft``: the quantum Fourier transform (``QFTGate``) of a fixed basis state (X on every
  other qubit, so the input is not all zeros);
- ``qv``: a quantum-volume model circuit (``QuantumVolume``, depth 10, seeded);
- ``random``: ``random_circuit`` of depth 20 (seeded);
- ``ghz``: H then a chain of CX (cheap: a floor for the per-task cost at full width).

Each circuit is transpiled, deterministically (fixed ``seed_transpiler``, optimisation level
1), to ``rz, sx, x, cx`` (gates of ``stdgates.inc`` every OpenQASM 3 importer knows), then
serialised with ``qiskit.qasm3.dumps``, and checked with ``app.circuits.parse_qasm`` (the
service's own parser, with its limits), or ``qiskit_qasm3_import.parse`` when that is not
available.

    python benchmarks/suite.py            # 21, 22, 23 qubits: names, sizes, digests
    python benchmarks/suite.py --quick    # 10, 11, 12 qubits (CI smoke test)
    python benchmarks/suite.py --write DIR   # also write each program to DIR/<name>.qasm
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FULL_QUBITS = (21, 22, 23)
QUICK_QUBITS = (10, 11, 12)
FAMILIES = ("qft", "qv", "random", "ghz")
SHOTS = 1024
BASIS = ("rz", "sx", "x", "cx")
#: Seeds: of the circuit generators (plus the width), of the transpiler, of the simulator.
CIRCUIT_SEED = 20_240_601
TRANSPILE_SEED = 11
SIMULATOR_SEED = 7
QV_DEPTH = 10
RANDOM_DEPTH = 20


@dataclass(frozen=True)
class Circuit:
    """One program of the suite."""

    name: str
    family: str
    qubits: int
    qasm: str
    shots: int = SHOTS
    seed: int = SIMULATOR_SEED

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.qasm.encode()).hexdigest()

    @property
    def kib(self) -> float:
        return len(self.qasm.encode()) / 1024

    @property
    def statevector_mib(self) -> float:
        return 16 * 2**self.qubits / 2**20


def _qft(n: int) -> Any:
    from qiskit import QuantumCircuit
    from qiskit.circuit.library import QFTGate

    qc = QuantumCircuit(n)
    for q in range(0, n, 2):
        qc.x(q)
    qc.append(QFTGate(n), range(n))
    return qc


def _qv(n: int) -> Any:
    try:
        from qiskit.circuit.library import quantum_volume  # Qiskit >= 2.2
    except ImportError:
        from qiskit.circuit.library import QuantumVolume as quantum_volume

    return quantum_volume(n, depth=QV_DEPTH, seed=CIRCUIT_SEED + n)


def _random(n: int) -> Any:
    from qiskit.circuit.random import random_circuit

    return random_circuit(n, RANDOM_DEPTH, max_operands=2, measure=False, seed=CIRCUIT_SEED + n)


def _ghz(n: int) -> Any:
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(n)
    qc.h(0)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    return qc


BUILDERS: dict[str, Callable[[int], Any]] = {
    "qft": _qft,
    "qv": _qv,
    "random": _random,
    "ghz": _ghz,
}


def _parser() -> Callable[[str], Any]:
    """The service's parser (with its limits), or the plain importer if the service lacks it."""
    try:
        from app.circuits import parse_qasm

        return parse_qasm
    except ImportError:
        import qiskit_qasm3_import

        return qiskit_qasm3_import.parse  # type: ignore[no-any-return]


@functools.cache
def build(family: str, qubits: int) -> Circuit:
    """One circuit of the suite (deterministic: the same text on every run)."""
    from qiskit import qasm3, transpile

    qc = BUILDERS[family](qubits)
    qc.measure_all()
    compiled = transpile(qc, basis_gates=list(BASIS), optimization_level=1,
                         seed_transpiler=TRANSPILE_SEED)
    text = qasm3.dumps(compiled)
    parsed = _parser()(text)
    if parsed.num_qubits != qubits:
        raise AssertionError(f"{family}-{qubits}: parsed back with {parsed.num_qubits} qubits")
    return Circuit(f"{family}-{qubits}", family, qubits, text)


def build_suite(qubits: Sequence[int] = FULL_QUBITS,
                families: Sequence[str] = FAMILIES) -> list[Circuit]:
    """The suite, widest last within each family order: family by family, width by width."""
    return [build(f, n) for n in qubits for f in families]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate and check the benchmark circuit suite.")
    p.add_argument("--quick", action="store_true", help=f"qubits {QUICK_QUBITS}")
    p.add_argument("--qubits", help="comma-separated widths (default 21,22,23)")
    p.add_argument("--write", type=Path, metavar="DIR", help="write each program as .qasm")
    args = p.parse_args(argv)
    widths = (tuple(int(q) for q in args.qubits.split(",")) if args.qubits
              else QUICK_QUBITS if args.quick else FULL_QUBITS)
    suite = build_suite(widths)
    print(f"{'name':12s} {'KiB':>7s} {'statevector MiB':>16s}  sha256")
    for c in suite:
        print(f"{c.name:12s} {c.kib:7.1f} {c.statevector_mib:16.2f}  {c.sha256[:16]}")
        if args.write:
            args.write.mkdir(parents=True, exist_ok=True)
            (args.write / f"{c.name}.qasm").write_text(c.qasm)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
