"""OpenQASM 3 in, counts out: parse, bound, validate and run circuits on Qiskit Aer.

Pure quantum code: imports qiskit, never qtasks or the web layer. The pipeline, each step
raising a :class:`CircuitError` subclass (never another exception) for bad input::

    run_qasm(source, shots)
      parse_qasm   precheck the text -> app.qasm lowering (openqasm3 AST -> Qiskit circuit,
                   every expansion bounded as it goes)
                   -> count qubits, operations and measurements
      validate     shots, statevector memory, simulation work (dynamic circuits x shots)
      run          transpile for AerSimulator, simulate, check result.success, shape counts

Counts use Qiskit's format: one group of bits per classical register, registers in
declaration order from right to left separated by spaces, bit 0 of each register rightmost
(``bit[2] c; bit[1] d;`` gives keys like ``"1 01"``: d, then c). A scalar ``bit b;`` is a
one-bit register of its own when the program also declares registers (see app.qasm); the
lowering's scratch bits are never part of the counts.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import ControlFlowOp, ControlledGate, Gate, Qubit
from qiskit.circuit.controlflow import BoxOp, ForLoopOp, WhileLoopOp
from qiskit_aer import AerSimulator

from app.qasm import lower_to_circuit
from app.qasm_limits import (
    STATEVECTOR_BYTES_PER_AMPLITUDE,
    CircuitError,
    CircuitLimits,
    LimitExceeded,
    NoMeasurements,
    QasmSemanticError,
    QasmSyntaxError,
    SimulationFailed,
    UnsupportedProgram,
    checked_text,
    max_qubits_for_memory,
    precheck,
)

CAP = 1 << 62
"""Counts saturate here: exponential gate chains stay small ints, still far over any limit."""
CUSTOM_CTRL_FACTOR = 32
"""``ctrl(k) @`` on a custom gate: Qiskit re-synthesises each of its operations with k
controls; measured ~30 operations per control per gate operation after transpiling."""

__all__ = [
    "CircuitError",
    "CircuitLimits",
    "CircuitRun",
    "CostEstimate",
    "LimitExceeded",
    "NoMeasurements",
    "QasmSemanticError",
    "QasmSyntaxError",
    "SimulationFailed",
    "UnsupportedProgram",
    "estimate_cost",
    "max_qubits_for_memory",
    "parse_qasm",
    "precheck",
    "run",
    "run_qasm",
    "validate",
]

MAX_SEED = 2**63 - 1
"""Aer's seed_simulator is a signed 64-bit integer."""
TRANSPILE_OPTIMIZATION_LEVEL = 1
"""Level 2 (Qiskit's default) took 562 s on a 560k-operation circuit here; level 1, 0.5 s."""


class CostEstimate(msgspec.Struct, frozen=True):
    """What simulating a circuit will cost, computed without simulating it."""

    num_qubits: int
    num_clbits: int
    statevector_bytes: int
    """16 bytes x 2^num_qubits."""
    operations: int
    """After inlining custom gates and unrolling ``for`` loops."""
    dynamic: bool
    """Control flow, a reset, or a gate after a measurement on the same qubit: Aer cannot
    sample the final state and simulates every shot."""
    shot_simulations: int
    """1 when Aer can sample the measurements, else the number of shots."""
    work: int
    """operations x shot_simulations x 2^num_qubits amplitude updates (~1.35 ns each here)."""


class CircuitRun(msgspec.Struct, frozen=True):
    """The outcome of one simulation. Timings are seconds; ``parse_s`` is 0 for :func:`run`."""

    counts: dict[str, int]
    """Bitstring -> times seen, in Qiskit's format (see the module docstring)."""
    shots: int
    num_qubits: int
    num_clbits: int
    method: str
    """The method Aer actually used, e.g. "statevector" or "stabilizer"."""
    seed: int
    """The simulator seed; Aer's own pick when none was given, so any run can be repeated."""
    parse_s: float
    transpile_s: float
    simulation_s: float
    """Wall time of the Aer run, including waiting for Aer's single job thread."""
    aer_time_s: float
    """The time Aer reports for the experiment itself."""


# ---------------------------------------------------------------------------------------------
# Parsing and counting


@dataclass
class _Stats:
    operations: int = 0
    measurements: int = 0
    dynamic: bool = False
    unsupported: set[str] = field(default_factory=set)
    """What Aer cannot run or we cannot bound: while_loop, box, for_loop_repeats."""
    memo: dict[int, tuple[QuantumCircuit, int]] = field(default_factory=dict)


def _walk(circuit: QuantumCircuit, stats: _Stats, *, top: bool) -> int:
    """Operations in ``circuit`` (custom gates inlined, loops unrolled); updates ``stats``."""
    ops = 0
    measured: set[Qubit] = set()
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            stats.dynamic = True
            if isinstance(operation, (WhileLoopOp, BoxOp)):
                stats.unsupported.add(operation.name)
            indexset = operation.params[0] if isinstance(operation, ForLoopOp) else ()
            if not isinstance(indexset, range) and len(set(indexset)) != len(indexset):
                # qiskit-aer 0.18 names loop marks by value: "Duplicated mark destination".
                stats.unsupported.add("for_loop_repeats")
            bodies = [_walk(block, stats, top=False) for block in operation.blocks]
            if isinstance(operation, ForLoopOp):
                ops = min(ops + _loop_length(operation.params[0]) * max(1, bodies[0]), CAP)
            else:
                ops = min(ops + 1 + sum(bodies), CAP)
            continue
        name = operation.name
        if name == "measure":
            stats.measurements += 1
            measured.update(instruction.qubits)
        elif name == "reset" or (
            top and name not in ("barrier", "delay") and not measured.isdisjoint(instruction.qubits)
        ):
            stats.dynamic = True  # Aer can no longer sample the final state
        ops = min(ops + _operation_size(operation, stats), CAP)
    return ops


def _operation_size(operation: Any, stats: _Stats) -> int:
    # Only gates the importer built from `gate` definitions are expanded: asking a library gate
    # (a UnitaryGate, an MCX) for its definition would run a synthesis.
    if type(operation) is Gate and operation.definition is not None:
        definition = operation.definition
        if id(definition) not in stats.memo:
            # The definition is kept in the memo so its id cannot be reused by another object.
            stats.memo[id(definition)] = (definition, _walk(definition, stats, top=False))
        return stats.memo[id(definition)][1]
    if isinstance(operation, ControlledGate) and type(operation.base_gate) is Gate:
        factor: int = CUSTOM_CTRL_FACTOR * operation.num_ctrl_qubits
        return min(factor * _operation_size(operation.base_gate, stats), CAP)
    return 1


def _loop_length(indexset: Any) -> int:
    if isinstance(indexset, range):  # len() overflows past sys.maxsize
        step: int = indexset.step
        span: int = indexset.stop - indexset.start
        return max(0, (span + step - (1 if step > 0 else -1)) // step)
    return len(indexset)


def _stats(circuit: QuantumCircuit) -> _Stats:
    stats = _Stats()
    stats.operations = _walk(circuit, stats, top=True)
    return stats


def _check_circuit(circuit: QuantumCircuit, stats: _Stats, limits: CircuitLimits) -> None:
    if circuit.num_qubits > limits.max_qubits:
        raise LimitExceeded(
            "max_qubits",
            circuit.num_qubits,
            limits.max_qubits,
            f"program has {circuit.num_qubits} qubits",
        )
    if circuit.num_clbits > limits.max_clbits:
        raise LimitExceeded(
            "max_clbits",
            circuit.num_clbits,
            limits.max_clbits,
            f"program has {circuit.num_clbits} classical bits",
        )
    if stats.operations > limits.max_operations:
        raise LimitExceeded(
            "max_operations",
            stats.operations,
            limits.max_operations,
            f"program has {stats.operations} operations",
        )
    if "for_loop_repeats" in stats.unsupported:
        raise UnsupportedProgram(
            "a for loop over a set with repeated values (e.g. {1, 1}) is not supported: Aer "
            "cannot run it; list each value once or repeat the body"
        )
    if "box" in stats.unsupported:
        raise UnsupportedProgram("'box' is not supported: Aer cannot simulate box scopes")
    if circuit.parameters:
        names = ", ".join(sorted(p.name for p in circuit.parameters))
        raise UnsupportedProgram(
            f"the program has unbound inputs ({names}); the service runs programs without inputs"
        )
    if stats.measurements == 0:
        raise NoMeasurements(
            "the program measures no qubits, so a run would have no counts; declare a "
            "classical register and measure into it, e.g. `bit[2] c;` and `c = measure q;`"
        )


def _parse_checked(source: str | bytes, limits: CircuitLimits) -> tuple[QuantumCircuit, _Stats]:
    text = checked_text(source, limits)
    # The lowering runs the OpenQASM 3 that users write (const, def, uint, for, while on
    # measured bits, modifiers); it bounds every expansion itself as it goes.
    try:
        circuit = lower_to_circuit(
            text,
            max_operations=limits.max_operations,
            max_loop_iterations=limits.max_unrolled_loop_operations,
            max_nesting_depth=limits.max_nesting_depth,
            max_qubits=limits.max_qubits,
            max_clbits=limits.max_clbits,
        )
    except LimitExceeded as e:
        if e.limit != "max_loop_iterations":
            raise
        # Name the setting a user can change: [app] max_unrolled_loop_operations.
        raise LimitExceeded(
            "max_unrolled_loop_operations",
            e.value,
            e.maximum,
            "loop iterations unrolled",
            line=e.line,
        ) from None
    stats = _stats(circuit)
    _check_circuit(circuit, stats, limits)
    return circuit, stats


def parse_qasm(source: str | bytes, limits: CircuitLimits | None = None) -> QuantumCircuit:
    """Parse an OpenQASM 3 program into a Qiskit circuit, enforcing ``limits`` throughout.

    The text is prechecked, then lowered by :mod:`app.qasm` (the openqasm3 reference parser,
    with custom gates, loops, calls and registers bounded before they are expanded), and the
    circuit is checked for qubits, operations and at least one measurement. Every failure is a
    :class:`CircuitError`; syntax errors carry a 1-based ``line`` and ``column``.
    """
    return _parse_checked(source, limits or CircuitLimits())[0]


# ---------------------------------------------------------------------------------------------
# Validation


def _estimate(circuit: QuantumCircuit, stats: _Stats, shots: int) -> CostEstimate:
    shot_simulations = max(1, shots) if stats.dynamic else 1
    amplitudes = 1 << circuit.num_qubits
    work = min(stats.operations * shot_simulations * amplitudes, CAP)
    return CostEstimate(
        num_qubits=circuit.num_qubits,
        num_clbits=circuit.num_clbits,
        statevector_bytes=STATEVECTOR_BYTES_PER_AMPLITUDE * amplitudes,
        operations=stats.operations,
        dynamic=stats.dynamic,
        shot_simulations=shot_simulations,
        work=work,
    )


def estimate_cost(circuit: QuantumCircuit, shots: int) -> CostEstimate:
    """Size a simulation of ``circuit`` with ``shots`` shots without running it."""
    return _estimate(circuit, _stats(circuit), shots)


def _validate(
    circuit: QuantumCircuit, stats: _Stats, shots: int, limits: CircuitLimits
) -> CostEstimate:
    if isinstance(shots, bool) or not isinstance(shots, int):
        raise CircuitError(f"shots must be an integer, not {shots!r}", kind="invalid_shots")
    if shots < limits.min_shots:
        raise LimitExceeded("min_shots", shots, limits.min_shots, f"shots is {shots}")
    if shots > limits.max_shots:
        raise LimitExceeded("max_shots", shots, limits.max_shots, f"shots is {shots}")
    _check_circuit(circuit, stats, limits)
    cost = _estimate(circuit, stats, shots)
    if cost.statevector_bytes > limits.memory_budget_bytes:
        raise LimitExceeded(
            "memory_budget_bytes",
            cost.statevector_bytes,
            limits.memory_budget_bytes,
            f"a {cost.num_qubits}-qubit statevector needs {cost.statevector_bytes} bytes",
        )
    if cost.work > limits.max_work:
        shots_part = (
            f" x {shots} shots (a mid-circuit measurement, control flow or a reset makes Aer "
            "simulate every shot)"
            if cost.dynamic
            else ""
        )
        raise LimitExceeded(
            "max_work",
            cost.work,
            limits.max_work,
            f"simulating needs {cost.work:.2e} amplitude updates: {cost.operations} operations"
            f"{shots_part} x 2^{cost.num_qubits} amplitudes",
        )
    return cost


def validate(
    circuit: QuantumCircuit, shots: int, limits: CircuitLimits | None = None
) -> CostEstimate:
    """Check ``circuit`` and ``shots`` against ``limits`` and return the cost estimate.

    Raises :class:`LimitExceeded` for shots outside [min_shots, max_shots], too many qubits,
    clbits or operations, a statevector over the memory budget, or more simulation work than
    ``max_work`` (dynamic circuits count every shot); :class:`NoMeasurements` and
    :class:`UnsupportedProgram` for circuits that cannot give counts.
    """
    return _validate(circuit, _stats(circuit), shots, limits or CircuitLimits())


# ---------------------------------------------------------------------------------------------
# Running


@functools.lru_cache(maxsize=16)
def _simulator(method: str) -> AerSimulator:
    # Building an AerSimulator and its target is not free; options vary per run() call.
    return AerSimulator(method=method)


def _count_segments(circuit: QuantumCircuit) -> list[list[int]]:
    """Clbit indices per count-key group, in register declaration order."""
    # The lowering's scratch bits (loop flags, while counters) come first and are not output.
    covered: set[int] = set(range(int((circuit.metadata or {}).get("scratch_clbits", 0))))
    segments: list[list[int]] = []
    for register in circuit.cregs:
        indices = [circuit.find_bit(bit).index for bit in register]
        # Aliases and condition registers repeat bits; an empty register adds nothing.
        if indices and covered.isdisjoint(indices):
            segments.append(indices)
            covered.update(indices)
    loose = [i for i in range(circuit.num_clbits) if i not in covered]
    return [*segments, loose] if loose else segments


def _shape_counts(hex_counts: dict[str, int], circuit: QuantumCircuit) -> dict[str, int]:
    """Aer's raw ``{"0x5": n}`` counts as Qiskit-format bitstrings (module docstring)."""
    segments = _count_segments(circuit)
    width = circuit.num_clbits
    # A group of consecutive ascending clbits is a slice of the binary string (clbit 0 last).
    slices = [
        (width - 1 - s[-1], width - s[0]) if s == list(range(s[0], s[0] + len(s))) else None
        for s in reversed(segments)
    ]
    counts: dict[str, int] = {}
    for hex_key, count in hex_counts.items():
        bits = format(int(hex_key, 16), f"0{width}b")[-width:] if width else ""
        groups = [
            bits[sl[0] : sl[1]] if sl else "".join(bits[width - 1 - i] for i in reversed(seg))
            for sl, seg in zip(slices, reversed(segments), strict=True)
        ]
        key = " ".join(groups)
        counts[key] = counts.get(key, 0) + count
    return counts


def run(
    circuit: QuantumCircuit,
    shots: int,
    *,
    seed: int | None = None,
    max_parallel_threads: int = 0,
    method: str = "automatic",
    max_memory_mb: int = 0,
) -> CircuitRun:
    """Transpile ``circuit`` for AerSimulator and sample it ``shots`` times.

    Call :func:`validate` first: this runs whatever it is given. ``max_parallel_threads`` caps
    Aer's OpenMP threads (0 = all cores); ``max_memory_mb`` caps Aer's memory (0 = Aer's
    default, half the machine). Aer reports a circuit it cannot fit or run as
    ``success=False``, not as an exception; both become :class:`SimulationFailed`. The same
    ``seed`` gives identical counts.
    """
    if method not in _simulator("automatic").available_methods():
        methods = ", ".join(_simulator("automatic").available_methods())
        message = f"unknown Aer method {method!r}; one of {methods}"
        raise CircuitError(message, kind="invalid_option")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise CircuitError(f"seed must be between 0 and {MAX_SEED}", kind="invalid_option")
    backend = _simulator(method)
    started = time.perf_counter()
    try:
        compiled = transpile(
            circuit, backend, optimization_level=TRANSPILE_OPTIMIZATION_LEVEL, seed_transpiler=0
        )
    except Exception as e:
        raise UnsupportedProgram(f"Aer cannot run this circuit: {e}") from e
    transpiled = time.perf_counter()
    options: dict[str, Any] = {"shots": shots, "max_parallel_threads": max_parallel_threads}
    if seed is not None:
        options["seed_simulator"] = seed
    if max_memory_mb > 0:
        options["max_memory_mb"] = max_memory_mb
    if any(isinstance(instruction.operation, ControlFlowOp) for instruction in compiled.data):
        # qiskit-aer 0.18 fails with "Failed to load circuits: unordered_map::at" on some
        # circuits with several if blocks (`if (c[2]) x q[1]; if (c[1]) x q[0];`) unless it
        # keeps idle qubits; the cost estimate counts every declared qubit anyway.
        options["enable_truncation"] = False
    try:
        result = backend.run(compiled, **options).result()
    except Exception as e:  # AerError on options or circuits it refuses outright
        raise SimulationFailed(f"Aer could not simulate the circuit: {e}") from e
    finished = time.perf_counter()
    experiment = result.results[0] if result.results else None
    if not result.success or experiment is None or not experiment.success:
        status = str(getattr(experiment, "status", "") or result.status)
        status = re.sub(r"^ERROR:\s*(\[Experiment \d+\]\s*)?", "", status.strip())
        raise SimulationFailed(f"Aer could not simulate the circuit: {status}")
    return CircuitRun(
        counts=_shape_counts(dict(getattr(experiment.data, "counts", {})), circuit),
        shots=shots,
        num_qubits=circuit.num_qubits,
        num_clbits=circuit.num_clbits,
        method=str(experiment.metadata.get("method", method)),
        seed=int(experiment.seed_simulator),
        parse_s=0.0,
        transpile_s=transpiled - started,
        simulation_s=finished - transpiled,
        aer_time_s=float(experiment.time_taken),
    )


def run_qasm(
    source: str | bytes,
    shots: int = 1024,
    *,
    seed: int | None = None,
    limits: CircuitLimits | None = None,
    max_parallel_threads: int = 0,
    method: str = "automatic",
    max_memory_mb: int = 0,
) -> CircuitRun:
    """Parse, validate and run an OpenQASM 3 program; the one call the service's task makes.

    ``parse_s`` in the result covers the precheck, parsing, conversion and validation.
    """
    limits = limits or CircuitLimits()
    started = time.perf_counter()
    circuit, stats = _parse_checked(source, limits)
    _validate(circuit, stats, shots, limits)
    parse_s = time.perf_counter() - started
    outcome = run(
        circuit,
        shots,
        seed=seed,
        max_parallel_threads=max_parallel_threads,
        method=method,
        max_memory_mb=max_memory_mb,
    )
    return msgspec.structs.replace(outcome, parse_s=parse_s)
