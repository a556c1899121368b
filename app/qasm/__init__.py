"""OpenQASM 3 (and 2) programs to Qiskit circuits that Aer runs: ``lower_to_circuit``.

Pure: imports qiskit and openqasm3, never qtasks or the rest of ``app``.

The program is parsed with the ``openqasm3`` reference parser and its AST is walked once. Whatever
can be known before the run is computed then (classical code, loops, subroutine calls, gate
definitions and modifiers); what depends on measurements becomes Qiskit control flow:

================================  =============================================================
construct                         becomes
================================  =============================================================
``qubit[n] q;`` ``qreg q[n];``    a ``QuantumRegister`` (``qubit q;``: a single qubit); ``$n``
                                  physical qubits are allowed (not mixed with declared ones)
``bit[n] c;`` ``creg c[n];``      a ``ClassicalRegister`` (``bit c;``: a single clbit); global
                                  bit variables are the program's output
``const``, ``int``, ``uint``,     computed before the run (sized integers wrap); casts such as
``float``, ``angle``, ``bool``,   ``bool(x[i])``, ``int[4](c)``; bit access on integers
``complex``, arrays, literals     (``a_in[i]``); ``"0101"`` bit strings; math built-ins
``measure q -> c;``               ``Measure`` per qubit, also ``c = measure q;``,
                                  ``bit b = measure q;``, slices and whole registers
``reset``, ``barrier``            ``Reset``, ``Barrier``; a reset of a qubit nothing has
                                  touched yet is dropped (it would stop Aer from sampling)
``delay``, ``box``, durations on  nothing (an ideal simulation has no time); a box's body runs
gates                             in place
``include "stdgates.inc"``        Qiskit's standard gates (and ``"qelib1.inc"`` for
                                  OpenQASM 2); ``U``, ``gphase`` are built in
``gate g(a) x, y { ... }``        a ``Gate`` with a definition, built once per parameter values
``ctrl @``, ``negctrl @``,        Qiskit's controlled/inverse/power gates for standard gates;
``inv @``, ``pow(k) @``           annotations the transpiler expands for user gates
``for i in [a:b]`` / ``{...}``    unrolled (``max_loop_iterations`` in total); ``let`` aliases
``if`` on known values            the branch taken, nothing else
``if`` on measured bits           ``IfElseOp`` (conditions: ``c0``, ``!c0``, ``c0 == 1``,
                                  ``c == 3``, ``int[4](c) == 3``, ``c < 2``, ``&&``, ``||``,
                                  ``&``, ``^``, ``~``, shifts; bit by bit when part of a
                                  register is known); bit/bool assignments become ``Store``
``int x = c;`` (c measured)       ``x`` holds a copy of the bits: it can be compared and
                                  switched on (Qiskit's exporter writes this before a switch)
``while`` on measured bits        a ``WhileLoopOp`` bounded by ``max_while_iterations``
``break`` / ``continue``          ``BreakLoopOp``/``ContinueLoopOp`` in run-time loops; in
                                  unrolled loops, a flag bit that guards what follows
``switch``                        the case taken, or one ``IfElseOp`` per case at run time
``def f(...) -> bit {...}``       inlined at each call; a returned measurement or local bit
                                  register is written straight into the caller's bits
``extern``, ``defcal``, ``cal``,  ``UnsupportedProgram`` naming the construct and its line
``duration``, ``stretch``,        (also: measured values used as gate angles or in arithmetic,
``input`` (without a value)       ``return``/``end`` under a measured condition)
================================  =============================================================

Run-time while loops. A ``while`` whose condition depends on measurements becomes a Qiskit
``while_loop`` with a hidden iteration counter in scratch clbits: it stops after
``max_while_iterations`` iterations per entry even if the condition still holds (Amazon Braket's
simulators stop at 1,000 as well), and the shot then continues after the loop. Aer would otherwise
loop forever holding the GIL. Iterations whose condition is known before the run are unrolled
instead (and count toward ``max_loop_iterations``).

Aer 0.18 runs a ``store`` in an if/while body that touches no qubit even when the branch is not
taken; such bodies get a barrier on one qubit (see ``emit.Assembler``).

Classical bits in the counts. Declared global bits keep their declaration order. If the program
declares any ``bit[n]`` register, each single ``bit`` also becomes a one-bit register, so the
counts show every declared bit ("c1 c0 r" fields, last declared first). If it declares only single
bits they stay single clbits (one bitstring), as with ``qiskit_qasm3_import``. Scratch bits that
the lowering needs (subroutine locals, loop flags, while counters) come first and are not part of
any register, so they never appear in the counts. So that they do not vary from shot to shot
(``Result.get_counts`` would then overwrite, not add, counts of equal keys), they end at 0: a
circuit Aer must run shot by shot anyway gets stores clearing them at the end; in one it can
sample, the only writes to scratch bits are final measurements, which are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qiskit import QuantumCircuit

from .core import Limits
from .errors import (
    CircuitError,
    LimitExceeded,
    QasmSemanticError,
    QasmSyntaxError,
    UnsupportedProgram,
)
from .lowering import Lowerer
from .parsing import parse_program

__all__ = [
    "CircuitError",
    "LimitExceeded",
    "QasmSemanticError",
    "QasmSyntaxError",
    "UnsupportedProgram",
    "lower_to_circuit",
]


def lower_to_circuit(
    source: str,
    *,
    max_operations: int = 1_000_000,
    max_loop_iterations: int = 100_000,
    max_while_iterations: int = 1_000,
    max_nesting_depth: int = 32,
    max_call_depth: int = 64,
    max_qubits: int = 10_000,
    max_clbits: int = 100_000,
    inputs: Mapping[str, Any] | None = None,
) -> QuantumCircuit:
    """Parse an OpenQASM 3 (or 2) program and lower it to a ``QuantumCircuit`` Aer can run.

    Args:
        source: the program text.
        max_operations: most operations in the result, counting every unrolled iteration and
            the full expansion of gate definitions (a gate defined by calling another twice, 20
            levels deep, counts 2**20).
        max_loop_iterations: most loop iterations unrolled before the run, over the program.
        max_while_iterations: most iterations a run-time ``while`` loop makes per shot (per
            entry into the loop); see the module docstring.
        max_nesting_depth: deepest bracket nesting in the source, and deepest nesting of
            run-time if/while blocks in the result.
        max_call_depth: deepest chain of gate/subroutine calls (recursion ends here).
        max_qubits: most qubits declared. ``max_clbits``: most declared bits (the width of a
            count key); scratch bits the lowering adds count as operations instead.
        inputs: values for ``input`` declarations, by name.

    Returns:
        The circuit; ``circuit.metadata["lowered_operations"]`` is the expanded operation count.

    Raises:
        QasmSyntaxError: the text does not parse (with ``line`` and ``column``).
        QasmSemanticError: it parses but is wrong: an undefined name, a qubit given twice, an
            index out of range... (with ``line``).
        UnsupportedProgram: valid OpenQASM that cannot be simulated; the message names the
            construct and its line (``line`` attribute).
        LimitExceeded: a limit above was hit (``limit``, ``value``, ``maximum``).
    """
    limits = Limits(
        max_operations=max_operations,
        max_loop_iterations=max_loop_iterations,
        max_while_iterations=max_while_iterations,
        max_nesting_depth=max_nesting_depth,
        max_call_depth=max_call_depth,
        max_qubits=max_qubits,
        max_clbits=max_clbits,
    )
    program = parse_program(source, max_nesting_depth=max_nesting_depth)
    try:
        return Lowerer(limits, inputs).lower(program)
    except RecursionError:
        # A backstop: the limits above keep recursion well inside Python's stack in practice.
        raise LimitExceeded(
            "max_nesting_depth",
            max_nesting_depth + 1,
            max_nesting_depth,
            "the program nests too deeply to lower",
        ) from None
