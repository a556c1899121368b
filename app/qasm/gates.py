"""Gate tables (``stdgates.inc``, ``qelib1.inc``, built-ins) and gate modifiers in Qiskit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qiskit.circuit import Gate, Operation
from qiskit.circuit.library import GlobalPhaseGate, get_standard_gate_name_mapping
from qiskit.circuit.library import standard_gates as std

GateFactory = Callable[..., Gate]


@dataclass(frozen=True, slots=True)
class StdGate:
    """A gate Qiskit knows natively: how to build it and its shape."""

    factory: GateFactory
    num_params: int
    num_qubits: int


def _identity() -> Gate:
    # Qiskit's IGate may be dropped or treated as a timed idle; qiskit-qasm3-import maps `id` to
    # U(0, 0, 0), and we do the same so both paths give identical circuits.
    return std.UGate(0, 0, 0)


# The gates of OpenQASM 3's stdgates.inc, including its OpenQASM 2 compatibility names.
STDGATES: dict[str, StdGate] = {
    "p": StdGate(std.PhaseGate, 1, 1),
    "x": StdGate(std.XGate, 0, 1),
    "y": StdGate(std.YGate, 0, 1),
    "z": StdGate(std.ZGate, 0, 1),
    "h": StdGate(std.HGate, 0, 1),
    "s": StdGate(std.SGate, 0, 1),
    "sdg": StdGate(std.SdgGate, 0, 1),
    "t": StdGate(std.TGate, 0, 1),
    "tdg": StdGate(std.TdgGate, 0, 1),
    "sx": StdGate(std.SXGate, 0, 1),
    "rx": StdGate(std.RXGate, 1, 1),
    "ry": StdGate(std.RYGate, 1, 1),
    "rz": StdGate(std.RZGate, 1, 1),
    "cx": StdGate(std.CXGate, 0, 2),
    "cy": StdGate(std.CYGate, 0, 2),
    "cz": StdGate(std.CZGate, 0, 2),
    "cp": StdGate(std.CPhaseGate, 1, 2),
    "crx": StdGate(std.CRXGate, 1, 2),
    "cry": StdGate(std.CRYGate, 1, 2),
    "crz": StdGate(std.CRZGate, 1, 2),
    "ch": StdGate(std.CHGate, 0, 2),
    "swap": StdGate(std.SwapGate, 0, 2),
    "ccx": StdGate(std.CCXGate, 0, 3),
    "cswap": StdGate(std.CSwapGate, 0, 3),
    "cu": StdGate(std.CUGate, 4, 2),
    "CX": StdGate(std.CXGate, 0, 2),
    "phase": StdGate(std.PhaseGate, 1, 1),
    "cphase": StdGate(std.CPhaseGate, 1, 2),
    "id": StdGate(_identity, 0, 1),
    "u1": StdGate(std.U1Gate, 1, 1),
    "u2": StdGate(std.U2Gate, 2, 1),
    "u3": StdGate(std.U3Gate, 3, 1),
}

# OpenQASM 2's qelib1.inc (as Qiskit's OpenQASM 2 reader defines it).
QELIB1: dict[str, StdGate] = {
    **{k: v for k, v in STDGATES.items() if k not in ("CX", "phase", "cphase")},
    "u0": StdGate(lambda _n: _identity(), 1, 1),
    "u": StdGate(std.UGate, 3, 1),
    "sxdg": StdGate(std.SXdgGate, 0, 1),
    "cu1": StdGate(std.CU1Gate, 1, 2),
    "cu3": StdGate(std.CU3Gate, 3, 2),
    "csx": StdGate(std.CSXGate, 0, 2),
    "rxx": StdGate(std.RXXGate, 1, 2),
    "rzz": StdGate(std.RZZGate, 1, 2),
    "rccx": StdGate(std.RCCXGate, 0, 3),
    "rc3x": StdGate(std.RC3XGate, 0, 4),
    "c3x": StdGate(std.C3XGate, 0, 4),
    "c3sqrtx": StdGate(std.C3SXGate, 0, 4),
    "c4x": StdGate(lambda: std.MCXGate(4), 0, 5),
}

BUILTIN_U = StdGate(std.UGate, 3, 1)
BUILTIN_CX = StdGate(std.CXGate, 0, 2)

# A user gate named like one of these would be taken by the transpiler for the native gate of that
# name and run with the wrong meaning (a user `gate unitary ...` even crashes Aer), so user gates
# with these names are renamed. Aer's names are those of AerSimulator().target in qiskit-aer 0.18.
# (A string split, not a list literal of ~90 names one per line.)
_AER_NAMES = frozenset(
    [
        "ccx",
        "ccz",
        "cp",
        "crx",
        "cry",
        "crz",
        "cswap",
        "csx",
        "cu",
        "cu1",
        "cu2",
        "cu3",
        "cx",
        "cy",
        "cz",
        "delay",
        "diagonal",
        "ecr",
        "h",
        "id",
        "initialize",
        "kraus",
        "mcp",
        "mcphase",
        "mcr",
        "mcrx",
        "mcry",
        "mcrz",
        "mcswap",
        "mcsx",
        "mcu",
        "mcu1",
        "mcu2",
        "mcu3",
        "mcx",
        "mcx_gray",
        "mcy",
        "mcz",
        "multiplexer",
        "p",
        "pauli",
        "quantum_channel",
        "qerror_loc",
        "r",
        "reset",
        "roerror",
        "rx",
        "rxx",
        "ry",
        "ryy",
        "rz",
        "rzx",
        "rzz",
        "s",
        "sdg",
        "superop",
        "swap",
        "sx",
        "sxdg",
        "t",
        "tdg",
        "u",
        "u1",
        "u2",
        "u3",
        "unitary",
        "x",
        "y",
        "z",
        "measure",
        "barrier",
        "store",
        "if_else",
        "while_loop",
        "for_loop",
        "switch_case",
        "break_loop",
        "continue_loop",
        "box",
    ]
)
RESERVED_NAMES = frozenset(get_standard_gate_name_mapping()) | _AER_NAMES


def is_reserved(name: str) -> bool:
    """Whether a user gate of this name must be renamed (see ``RESERVED_NAMES``)."""
    return name in RESERVED_NAMES or name.startswith(("save_", "set_"))


# Above this many qubits a matrix power (2^n x 2^n) is too big to compute for `pow` with a
# non-integer exponent; integer exponents are then left to the transpiler as an annotation.
MAX_MATRIX_POWER_QUBITS = 4


def control(op: Operation, count: int, state: int, native: bool) -> Operation:
    """``ctrl(count) @ op`` with ``state`` as Qiskit's ctrl_state (bit i is control qubit i).

    ``native`` ops (Qiskit's standard gates and their controlled forms) get Qiskit's dedicated
    classes (``cx``, ``ccx``, ``mcx``...); user gates get an annotation that the transpiler
    synthesises, so a large definition is not expanded here.
    """
    if native:
        return op.control(count, ctrl_state=state)
    return op.control(count, ctrl_state=state, annotated=True)


def inverse(op: Operation, native: bool) -> Operation:
    """``inv @ op``; user gates are annotated rather than inverted definition by definition
    (Qiskit's recursive inverse re-walks shared sub-gates once per use, exponential in depth)."""
    if native:
        return op.inverse()
    return op.inverse(annotated=True)


def power(op: Operation, exponent: float, native: bool) -> Operation | None:
    """``pow(exponent) @ op``, or None when it would need too large a matrix."""
    if native and op.num_qubits <= MAX_MATRIX_POWER_QUBITS:
        return op.power(exponent)
    if float(exponent).is_integer():
        return op.power(exponent, annotated=True)
    if op.num_qubits <= MAX_MATRIX_POWER_QUBITS:
        return op.power(exponent, annotated=True)
    return None


def controlled_phase(theta: float, count: int, state: int) -> Operation:
    """``ctrl(count) @ gphase(theta)``: a phase on the control qubits only."""
    return GlobalPhaseGate(theta).control(count, ctrl_state=state)


def finite_angle(value: Any) -> bool:
    """Whether ``value`` can be a gate angle (a finite real number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
