"""Quantum statements: gate calls and definitions, modifiers, gphase, measure, reset, barrier."""

from __future__ import annotations

import math
from typing import Any

from openqasm3 import ast
from qiskit.circuit import (
    AnnotatedOperation,
    Barrier,
    CircuitInstruction,
    Gate,
    Operation,
    QuantumCircuit,
    QuantumRegister,
    Qubit,
    Reset,
)

from .core import BitSym, EndSignal, FunctionCtx, GateSym, QubitSym, ScalarSym, Scope
from .expressions import Evaluator
from .gates import BUILTIN_CX, BUILTIN_U, STDGATES, controlled_phase
from .gates import control as control_gate
from .gates import inverse as inverse_gate
from .gates import power as power_gate
from .values import Bits, Cell, QType

RESET = Reset()
_U = GateSym("U", std=BUILTIN_U)
_CX = GateSym("CX", std=BUILTIN_CX)


class QuantumOps(Evaluator):
    """Gates (standard, user-defined, modified), gphase, measurement, reset, barrier, delay."""

    gate_qubits: list[Qubit] | None = None

    def _gate(self, node: ast.QuantumGate) -> None:
        name = node.name.name
        symbol = self._gate_symbol(name, node)
        params = [self.const_number(a, f"a parameter of gate '{name}'") for a in node.arguments]
        if symbol.std is not None:
            if len(params) != symbol.std.num_params:
                self.invalid(
                    node,
                    f"gate '{name}' takes {symbol.std.num_params} parameter(s), got {len(params)}",
                )
            op: Operation = symbol.std.factory(*params)
            cost, native = 1, True
        else:
            op, cost = self._user_gate(symbol, params, node)
            native = False
        if node.modifiers:
            op, cost = self._modify(op, cost, native, node.modifiers, node)
        self._apply(op, [self.qubits_of(q) for q in node.qubits], cost, name, node)

    def _gate_symbol(self, name: str, node: Any) -> GateSym:
        symbol = self.lookup(name)
        if symbol is None:
            if name == "U":
                return _U
            if name == "CX" and self.version == 2:
                return _CX
            hint = ' (missing include "stdgates.inc"?)' if name in STDGATES else ""
            self.invalid(node, f"gate '{name}' is not defined{hint}")
        if not isinstance(symbol, GateSym):
            self.invalid(node, f"'{name}' is not a gate")
        return symbol

    def _modify(
        self, op: Operation, cost: int, native: bool, modifiers: list[Any], node: Any
    ) -> tuple[Operation, int]:
        for modifier in reversed(modifiers):
            kind = modifier.modifier.name
            if kind == "inv":
                op = inverse_gate(op, native)
            elif kind == "pow":
                if modifier.argument is None:
                    self.invalid(node, "pow needs an exponent")
                exponent = self.const_number(modifier.argument, "a pow exponent")
                powered = power_gate(op, exponent, native)
                if powered is None:
                    self.unsupported(
                        node,
                        f"pow({exponent}) on a gate of {op.num_qubits} qubits: non-integer "
                        "powers need the gate's matrix and are limited to 4 qubits",
                    )
                if isinstance(powered, AnnotatedOperation):
                    cost *= max(1, math.ceil(abs(exponent)))
                    if cost > self.limits.max_operations:
                        self.limit(
                            "max_operations",
                            cost,
                            self.limits.max_operations,
                            node,
                            "operations in a pow @ gate",
                        )
                op = powered
            else:
                count = 1
                if modifier.argument is not None:
                    count = self.const_int(modifier.argument, f"the {kind} count")
                if count < 1:
                    self.invalid(node, f"{kind} needs at least one control qubit")
                available = (
                    len(self.gate_qubits) if self.gate_qubits is not None else self.num_qubits
                )
                if count + op.num_qubits > available:
                    self.invalid(
                        node,
                        f"{kind}({count}) @ on a {op.num_qubits}-qubit gate needs "
                        f"{count + op.num_qubits} qubits; only {available} exist",
                    )
                state = (1 << count) - 1 if kind == "ctrl" else 0
                op = control_gate(op, count, state, native)
                if not native:
                    cost *= count + 1
            native = native and not isinstance(op, AnnotatedOperation)
        return op, cost

    def _apply(
        self, op: Operation, operands: list[list[Qubit]], cost: int, name: str, node: Any
    ) -> None:
        """Append ``op`` once per broadcast position of ``operands`` (registers zip, single
        qubits repeat)."""
        count = len(operands)
        if count == 1 and len(operands[0]) == 1 and op.num_qubits == 1:
            self.emit(op, (operands[0][0],), (), cost, node)  # the common case, kept fast
            return
        if count == 2 and len(operands[0]) == 1 and len(operands[1]) == 1 and op.num_qubits == 2:
            first, second = operands[0][0], operands[1][0]
            if first is second:
                self.invalid(node, f"gate '{name}' is given the same qubit twice")
            self.emit(op, (first, second), (), cost, node)
            return
        if count != op.num_qubits:
            self.invalid(
                node,
                f"gate '{name}' acts on {op.num_qubits} qubit(s), got {len(operands)} operand(s)",
            )
        width = 1
        for operand in operands:
            if len(operand) != 1:
                if width not in (1, len(operand)):
                    self.invalid(node, f"gate '{name}': registers of different sizes")
                width = len(operand)
        if width == 1 and all(len(o) == 1 for o in operands):
            qubits = tuple(o[0] for o in operands)
            if len(qubits) > 1 and len(set(qubits)) != len(qubits):
                self.invalid(node, f"gate '{name}' is given the same qubit twice")
            self.emit(op, qubits, (), cost, node)
            return
        for i in range(width if all(operands) else 0):
            qubits = tuple(o[i] if len(o) > 1 else o[0] for o in operands)
            if len(set(qubits)) != len(qubits):
                self.invalid(node, f"gate '{name}' is given the same qubit twice")
            self.emit(op, qubits, (), cost, node)

    def _user_gate(self, symbol: GateSym, params: list[float], node: Any) -> tuple[Operation, int]:
        definition_node = symbol.node
        assert definition_node is not None
        if len(params) != len(definition_node.arguments):
            self.invalid(
                node,
                f"gate '{symbol.name}' takes {len(definition_node.arguments)} "
                f"parameter(s), got {len(params)}",
            )
        key = tuple(params)
        hit = symbol.memo.get(key)
        if hit is not None:
            return hit
        if symbol.building:
            self.invalid(node, f"gate '{symbol.name}' uses itself")
        self._enter_call("gate", symbol.name, node)
        saved = (
            self.scope,
            self.block,
            self.frames,
            self.fn,
            self.ops,
            self.gate_phase,
            self.gate_qubits,
        )
        symbol.building = True
        try:
            qubits = [Qubit() for _ in definition_node.qubits]
            scope = Scope(self.globals, "gate", boundary=True)
            for ident, value in zip(definition_node.arguments, params, strict=True):
                scope.names[ident.name] = ScalarSym(QType("angle"), value, True, 0)
            for ident, qubit in zip(definition_node.qubits, qubits, strict=True):
                if ident.name in scope.names:
                    self.invalid(definition_node, f"'{ident.name}' is declared twice")
                scope.names[ident.name] = QubitSym([qubit], True)
            self.scope, self.block, self.frames = scope, [], []
            self.fn = FunctionCtx("gate", symbol.name, 0)
            self.ops, self.gate_phase, self.gate_qubits = 0, 0.0, qubits
            try:
                self.lower_stmts(definition_node.body)
            except EndSignal:
                self.unsupported(node, "'end' inside a gate definition")
            circuit = QuantumCircuit(qubits, global_phase=self.gate_phase)
            for item in self.block:
                assert isinstance(item, CircuitInstruction)
                circuit._append(item)
            cost = max(1, self.ops)
        finally:
            symbol.building = False
            (
                self.scope,
                self.block,
                self.frames,
                self.fn,
                self.ops,
                self.gate_phase,
                self.gate_qubits,
            ) = saved
            self.calls.pop()
        gate = Gate(symbol.qiskit_name, len(qubits), list(params))
        gate.definition = circuit
        symbol.memo[key] = (gate, cost)
        return gate, cost

    def _phase(self, node: ast.QuantumPhase) -> None:
        theta = self.const_number(node.argument, "the gphase angle")
        controls: list[bool] = []
        for modifier in node.modifiers:
            kind = modifier.modifier.name
            if kind == "inv":
                theta = -theta
            elif kind == "pow":
                theta *= self.const_number(modifier.argument, "a pow exponent")
            else:
                count = 1
                if modifier.argument is not None:
                    count = self.const_int(modifier.argument, f"the {kind} count")
                if count < 1:
                    self.invalid(node, f"{kind} needs at least one control qubit")
                controls.extend([kind == "ctrl"] * count)
        if not controls:
            if self.fn.kind == "gate":
                self.gate_phase += theta
            elif not self.frames:
                self.global_phase += theta
            # else: a global phase inside a run-time branch cannot be observed
            return
        available = len(self.gate_qubits) if self.gate_qubits is not None else self.num_qubits
        if len(controls) > available:
            self.invalid(node, f"gphase with {len(controls)} controls: not enough qubits")
        state = sum(1 << i for i, positive in enumerate(controls) if positive)
        op = controlled_phase(theta, len(controls), state)
        self._apply(op, [self.qubits_of(q) for q in node.qubits], 1, "gphase", node)

    def _measure(self, node: ast.QuantumMeasurementStatement) -> None:
        self._no_gate(node, "measure")
        qubits = self.qubits_of(node.measure.qubit)
        if node.target is None:
            cells = [self.new_cell() for _ in qubits]
        else:
            cells, _ = self._target_cells(node.target)
        self._measure_cells(qubits, cells, node)

    def _measure_cells(self, qubits: list[Qubit], cells: list[Cell], node: Any) -> None:
        if len(qubits) != len(cells):
            self.invalid(node, f"measuring {len(qubits)} qubit(s) into {len(cells)} bit(s)")
        for qubit, cell in zip(qubits, cells, strict=True):
            self.measure_into(qubit, cell, node)

    def measure_value(self, node: ast.QuantumMeasurement) -> Any:
        self._no_gate(node, "measure")
        qubits = self.qubits_of(node.qubit)
        cells = [self.new_cell() for _ in qubits]
        self._measure_cells(qubits, cells, node)
        if isinstance(node.qubit, ast.IndexedIdentifier) and len(qubits) == 1:
            last = node.qubit.indices[-1]
            if isinstance(last, list) and not isinstance(last[0], ast.RangeDefinition):
                return self.read(cells[0])
        if isinstance(node.qubit, ast.Identifier):
            symbol = self.lookup(node.qubit.name)
            if node.qubit.name.startswith("$") or (isinstance(symbol, QubitSym) and symbol.single):
                return self.read(cells[0])
        return Bits(tuple(self.read(c) for c in cells))

    def _target_cells(self, node: Any) -> tuple[list[Cell], bool]:
        """The bits an lvalue names, and whether it is a single bit."""
        if isinstance(node, ast.Identifier):
            name, indices = node.name, []
        elif isinstance(node, ast.IndexedIdentifier):
            name, indices = node.name.name, node.indices
        else:
            self.invalid(node, "expected a bit variable")
        symbol = self.lookup(name)
        if symbol is None:
            self.undefined(node, name)
        if not isinstance(symbol, BitSym):
            self.invalid(node, f"'{name}' is not a bit or bool variable")
        cells, single = symbol.cells, symbol.single
        for index in indices:
            if single:
                self.invalid(node, f"'{name}' is a single bit and cannot be indexed")
            at = self.indices(index, len(cells), node)
            if isinstance(at, int):
                cells, single = [cells[at]], True
            else:
                cells = [cells[i] for i in at]
        return cells, single

    def _barrier(self, node: ast.QuantumBarrier) -> None:
        if node.qubits:
            qubits: list[Qubit] = []
            for operand in node.qubits:
                qubits.extend(self.qubits_of(operand))
            qubits = list(dict.fromkeys(qubits))
        elif self.gate_qubits is not None:
            qubits = list(self.gate_qubits)
        else:
            qubits = list(self.physical or [])
            for decl in self.qubit_decls:
                qubits.extend(decl if isinstance(decl, QuantumRegister) else [decl])
        if qubits:
            self.emit(Barrier(len(qubits)), tuple(qubits), (), 1, node)

    def _reset(self, node: ast.QuantumReset) -> None:
        self._no_gate(node, "reset")
        for qubit in self.qubits_of(node.qubits):
            if not self.frames and qubit not in self.touched:
                # Still |0>: the reset does nothing, but would make Aer simulate every shot
                # separately instead of sampling (what RemoveResetInZeroState does, early).
                continue
            self.emit(RESET, (qubit,), (), 1, node)

    def _delay(self, node: ast.DelayInstruction) -> None:
        # An ideal simulation has no time: a delay does nothing. Its operands are still checked.
        for operand in node.qubits:
            self.qubits_of(operand)
