"""The lowering's output before it is a circuit: flat blocks of instructions and control flow.

The lowering appends to plain lists and only at the end builds the ``QuantumCircuit`` and the
bodies of its if/while operations, each over exactly the wires it touches. Building this way is
faster than Qiskit's control-flow builder and lets the final clbit order be chosen after the fact
(scratch bits first, so they never show up in the counts).
"""

from __future__ import annotations

from typing import TypeAlias

from qiskit.circuit import (
    Barrier,
    BreakLoopOp,
    CircuitInstruction,
    ClassicalRegister,
    Clbit,
    ContinueLoopOp,
    IfElseOp,
    QuantumCircuit,
    Qubit,
    Store,
    WhileLoopOp,
)
from qiskit.circuit.classical import expr


class IfNode:
    """``if (cond) then else else_`` with a run-time condition."""

    __slots__ = ("cond", "else_", "then")

    def __init__(self, cond: expr.Expr, then: Block, else_: Block | None) -> None:
        self.cond = cond
        self.then = then
        self.else_ = else_


class WhileNode:
    """``while (cond) body`` with a run-time condition."""

    __slots__ = ("body", "cond")

    def __init__(self, cond: expr.Expr, body: Block) -> None:
        self.cond = cond
        self.body = body


class LoopJump:
    """``break`` or ``continue`` of the innermost run-time while loop."""

    __slots__ = ("is_break",)

    def __init__(self, is_break: bool) -> None:
        self.is_break = is_break


BREAK = LoopJump(True)
CONTINUE = LoopJump(False)

Item: TypeAlias = CircuitInstruction | IfNode | WhileNode | LoopJump
Block = list[Item]
Wires = tuple[frozenset[Qubit], frozenset[Clbit]]


def _expr_bits(value: expr.Expr) -> tuple[set[Clbit], set[ClassicalRegister]]:
    bits: set[Clbit] = set()
    regs: set[ClassicalRegister] = set()
    for var in expr.iter_vars(value):
        if isinstance(var.var, Clbit):
            bits.add(var.var)
        elif isinstance(var.var, ClassicalRegister):
            regs.add(var.var)
            bits.update(var.var)
    return bits, regs


def _anchored(block: Block | None) -> bool:
    """Whether a body needs a qubit of its own (see ``Assembler``)."""
    return any(
        isinstance(item, LoopJump)
        or (isinstance(item, CircuitInstruction) and isinstance(item.operation, Store))
        for item in block or ()
    )


class Assembler:
    """Turns blocks into circuits; bit order inside bodies follows ``qubit_order``/``clbit_order``.

    Aer 0.18 runs a ``store`` (or break/continue) in an if/while body unconditionally when the
    body touches no qubit: its jumps are ordered only along qubit wires, and ``transpile`` drops
    idle qubits from bodies. So such a body gets a barrier on one qubit (``anchor`` if it has none).
    """

    def __init__(
        self, qubit_order: dict[Qubit, int], clbit_order: dict[Clbit, int], anchor: Qubit | None
    ) -> None:
        self._qorder = qubit_order
        self._corder = clbit_order
        self._anchor = anchor
        self._wires: dict[int, Wires] = {}
        self._jumps: dict[int, bool] = {}

    # -- analysis --------------------------------------------------------------------------------
    def wires(self, item: Item) -> Wires:
        """The qubits and clbits an item touches, including inside its bodies."""
        if isinstance(item, CircuitInstruction):
            op = item.operation
            if isinstance(op, Store):
                bits = _expr_bits(op.lvalue)[0] | _expr_bits(op.rvalue)[0]
                return frozenset(), frozenset(bits)
            return frozenset(item.qubits), frozenset(item.clbits)
        if isinstance(item, LoopJump):
            return frozenset(), frozenset()
        key = id(item)
        cached = self._wires.get(key)
        if cached is not None:
            return cached
        qubits: set[Qubit] = set()
        clbits = _expr_bits(item.cond)[0]
        blocks = (item.then, item.else_) if isinstance(item, IfNode) else (item.body,)
        for block in blocks:
            for sub in block or ():
                q, c = self.wires(sub)
                qubits |= q
                clbits |= c
        if not qubits and self._anchor is not None and any(_anchored(b) for b in blocks):
            qubits.add(self._anchor)
        out = (frozenset(qubits), frozenset(clbits))
        self._wires[key] = out
        return out

    def jumps(self, item: Item) -> bool:
        """Whether a break/continue inside ``item`` belongs to an enclosing while loop."""
        if isinstance(item, LoopJump):
            return True
        if not isinstance(item, IfNode):
            return False
        key = id(item)
        cached = self._jumps.get(key)
        if cached is None:
            cached = any(self.jumps(s) for s in item.then) or any(
                self.jumps(s) for s in item.else_ or ()
            )
            self._jumps[key] = cached
        return cached

    # -- building --------------------------------------------------------------------------------
    def append(self, circuit: QuantumCircuit, block: Block, loop: Wires | None = None) -> None:
        """Append ``block`` to ``circuit``, which must hold every wire the block touches."""
        for item in block:
            if isinstance(item, CircuitInstruction):
                circuit._append(item)
            elif isinstance(item, IfNode):
                wires = loop if (loop is not None and self.jumps(item)) else self.wires(item)
                qubits, clbits = self._ordered(wires)
                then = self._body(item.then, qubits, clbits, loop)
                else_ = None
                if item.else_ is not None:
                    else_ = self._body(item.else_, qubits, clbits, loop)
                op = IfElseOp(item.cond, then, else_)
                circuit._append(CircuitInstruction(op, qubits, clbits))
            elif isinstance(item, WhileNode):
                wires = self.wires(item)
                qubits, clbits = self._ordered(wires)
                body = self._body(item.body, qubits, clbits, wires)
                circuit._append(CircuitInstruction(WhileLoopOp(item.cond, body), qubits, clbits))
            else:
                assert loop is not None, "break/continue outside a run-time loop"
                qubits, clbits = self._ordered(loop)
                jump_op = BreakLoopOp if item.is_break else ContinueLoopOp
                circuit._append(
                    CircuitInstruction(jump_op(len(qubits), len(clbits)), qubits, clbits)
                )

    def _ordered(self, wires: Wires) -> tuple[tuple[Qubit, ...], tuple[Clbit, ...]]:
        return (
            tuple(sorted(wires[0], key=self._qorder.__getitem__)),
            tuple(sorted(wires[1], key=self._corder.__getitem__)),
        )

    def _body(
        self,
        block: Block,
        qubits: tuple[Qubit, ...],
        clbits: tuple[Clbit, ...],
        loop: Wires | None,
    ) -> QuantumCircuit:
        body = QuantumCircuit(list(qubits), list(clbits))
        if qubits and _anchored(block):
            body._append(CircuitInstruction(Barrier(1), (qubits[0],), ()))
        # Registers read by conditions or stores in this body must be known to the body circuit.
        regs: set[ClassicalRegister] = set()
        for item in block:
            if isinstance(item, (IfNode, WhileNode)):
                regs |= _expr_bits(item.cond)[1]
            elif isinstance(item, CircuitInstruction) and isinstance(item.operation, Store):
                regs |= _expr_bits(item.operation.rvalue)[1]
        for reg in sorted(regs, key=lambda r: r.name):
            body.add_register(reg)
        self.append(body, block, loop)
        return body
