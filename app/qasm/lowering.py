"""The lowering itself: declarations, the statement table, and the final circuit.

The statement handlers live in mixins, one module per kind: ``quantum`` (gates, measure...),
``control`` (blocks, if, loops, switch), ``subroutines`` (def), ``assignment``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, ClassVar

from openqasm3 import ast
from qiskit.circuit import (
    Barrier,
    CircuitInstruction,
    ClassicalRegister,
    Clbit,
    Measure,
    QuantumCircuit,
    QuantumRegister,
    Qubit,
    Store,
)
from qiskit.circuit.classical import expr

from .assignment import Assignments
from .control import ControlFlow
from .core import (
    BitSym,
    DefSym,
    EndSignal,
    GateSym,
    Limits,
    QubitSym,
    ScalarSym,
)
from .emit import Assembler, Block
from .errors import LimitExceeded
from .gates import QELIB1, STDGATES, is_reserved
from .quantum import QuantumOps
from .subroutines import Subroutines
from .values import Cell, QType, is_runtime

_QASM2_NAME = re.compile(r"[a-z]\w*", flags=re.ASCII)


class Lowerer(Assignments):
    """Lowers one program; use ``lower()`` once."""

    def __init__(self, limits: Limits, inputs: Mapping[str, Any] | None) -> None:
        super().__init__(limits)
        self.inputs = dict(inputs or {})
        self._qiskit_names: set[str] = set()

    # -- driver ----------------------------------------------------------------------------------
    def lower(self, program: ast.Program) -> QuantumCircuit:
        if program.version is not None and program.version.strip().startswith("2"):
            self.version = 2
        with suppress(EndSignal):
            self.lower_stmts(program.statements)
        return self.assemble()

    def _include(self, node: ast.Include) -> None:
        self._global_only(node, "include")
        table = {"stdgates.inc": STDGATES, "qelib1.inc": QELIB1}.get(node.filename)
        if table is None:
            self.unsupported(
                node,
                f'include "{node.filename}": only "stdgates.inc" and "qelib1.inc" are '
                "available (the service reads no files)",
            )
        for name, gate in table.items():
            existing = self.globals.names.get(name)
            if existing is None:
                self.globals.names[name] = GateSym(name, std=gate)
            elif not (isinstance(existing, GateSym) and existing.std is not None):
                self.invalid(node, f"'{name}' from {node.filename} is already declared")

    def _global_only(self, node: Any, what: str) -> None:
        if self.scope is not self.globals or self.fn.kind != "program":
            self.invalid(node, f"{what} is only allowed at the top level of the program")

    def _qubit_decl(self, node: ast.QubitDeclaration) -> None:
        self._global_only(node, "qubit declaration")
        if self.physical is not None:
            self.invalid(node, "cannot declare qubits after using physical qubits ($n)")
        name = node.qubit.name
        size = None if node.size is None else self.const_int(node.size, "a register size")
        count = 1 if size is None else size
        if count <= 0:
            self.invalid(node, f"register size must be positive, not {count}")
        self._add_qubits(count, node)
        if size is None:
            qubit = Qubit()
            self.qubit_decls.append(qubit)
            self.declare(name, QubitSym([qubit], True), node)
        else:
            register = QuantumRegister(size, self._unique_register_name(name))
            self.qubit_decls.append(register)
            self.declare(name, QubitSym(list(register), False), node)

    def _add_qubits(self, count: int, node: Any) -> None:
        self.num_qubits += count
        if self.num_qubits > self.limits.max_qubits:
            self.limit("max_qubits", self.num_qubits, self.limits.max_qubits, node, "qubits")

    def physical_qubit(self, node: ast.Identifier) -> Qubit:
        try:
            index = int(node.name[1:])
        except ValueError:
            self.invalid(node, f"bad physical qubit '{node.name}'")
        if self.qubit_decls:
            self.invalid(node, "cannot mix physical qubits ($n) with declared qubits")
        if self.fn.kind == "gate":
            self.invalid(node, "gate definitions act on their arguments, not physical qubits")
        if self.physical is None:
            self.physical = []
        if index >= len(self.physical):
            self._add_qubits(index + 1 - len(self.physical), node)
            self.physical.extend(Qubit() for _ in range(index + 1 - len(self.physical)))
        return self.physical[index]

    def _unique_register_name(self, name: str) -> str:
        base = candidate = _register_name(name)
        n = 0
        while candidate in self._qiskit_names:
            n += 1
            candidate = f"{base}_{n}"
        self._qiskit_names.add(candidate)
        return candidate

    # -- declarations ----------------------------------------------------------------------------
    def _classical_decl(self, node: ast.ClassicalDeclaration) -> None:
        qtype = self.qtype(node.type)
        name = node.identifier.name
        init = node.init_expression
        if qtype.kind in ("bit", "bool"):
            cells = self._bit_cells(name, qtype, node)
            symbol = BitSym(cells, qtype.width is None, qtype)
            self.declare(name, symbol, node)
            if init is not None:
                self._assign_to_cells(cells, symbol.single, init, node)
            return
        value = self._default(qtype) if init is None else self.eval(init)
        self.declare(name, self._scalar(name, qtype, value, False, node), node)

    def _bit_cells(self, name: str, qtype: QType, node: Any) -> list[Cell]:
        width = 1 if qtype.width is None else qtype.width
        into, plan = self.fn_into, self.fn_plan
        if (
            into is not None
            and plan is not None
            and plan.local == name
            and self.scope.kind == "def"
            and len(into) == width
        ):
            # This local is what the subroutine returns: let it be the caller's target.
            self.fn_into = None
            for cell in into:
                self.write(cell, False, node)
            return into
        if (
            qtype.kind == "bit"
            and self.scope is self.globals
            and self.fn.kind == "program"
            and not self.frames
        ):
            # A global bit variable is an output: it gets real clbits (a register if sized).
            clbits = [self.new_clbit(node, declared=True) for _ in range(width)]
            register = None
            if qtype.width is not None:
                register = ClassicalRegister(name=self._unique_register_name(name), bits=clbits)
                self.reg_of[tuple(clbits)] = register
            self.bit_decls.append((name, clbits, register))
            cells = []
            for clbit in clbits:
                cell = Cell(False, 0, clbit)
                self.cell_of[clbit] = cell
                cells.append(cell)
            return cells
        if self.fn.kind == "gate":
            self.unsupported(node, "bit variables inside a gate definition")
        return [self.new_cell() for _ in range(width)]

    def _const_decl(self, node: ast.ConstantDeclaration) -> None:
        qtype = self.qtype(node.type)
        value = self.eval(node.init_expression)
        if is_runtime(value):
            self.unsupported(node, f"const '{node.identifier.name}' from a run-time value")
        name = node.identifier.name
        self.declare(name, self._scalar(name, qtype, value, True, node), node)

    def _io_decl(self, node: ast.IODeclaration) -> None:
        self._global_only(node, "input/output declaration")
        name = node.identifier.name
        qtype = self.qtype(node.type)
        if node.io_identifier is ast.IOKeyword.output:
            if qtype.kind != "bit":
                self.unsupported(
                    node, f"output '{name}' of type {qtype.pretty()}: only bit outputs are returned"
                )
            declaration = ast.ClassicalDeclaration(node.type, node.identifier, None)
            declaration.span = node.span
            self._classical_decl(declaration)
            return
        if name not in self.inputs:
            self.unsupported(node, f"input '{name}' has no value (the service takes no inputs)")
        value = self.inputs[name]
        if qtype.kind in ("bit", "bool"):
            value = self.coerce(value, qtype, node)
            self.declare(name, ScalarSym(qtype, value, True, 0), node)
        else:
            self.declare(name, self._scalar(name, qtype, value, True, node), node)

    def _gate_def(self, node: ast.QuantumGateDefinition) -> None:
        self._global_only(node, "gate definition")
        name = node.name.name
        qiskit_name = name
        n = 0
        while is_reserved(qiskit_name) or qiskit_name in self._qiskit_names:
            n += 1
            qiskit_name = f"{name}_{n}" if not is_reserved(f"{name}_{n}") else f"{name}_u{n}"
        self._qiskit_names.add(qiskit_name)
        if not node.qubits:
            self.invalid(node, f"gate '{name}' has no qubits")
        symbol = GateSym(name, node=node, qiskit_name=qiskit_name)
        self.declare(name, symbol, node)
        if not node.arguments:
            # Built now, so a mistake in it is reported even if the gate is never used; one that
            # is only too large is left to fail if it is called.
            with suppress(LimitExceeded):
                self._user_gate(symbol, [], node)

    def _def(self, node: ast.SubroutineDefinition) -> None:
        self._global_only(node, "subroutine definition")
        self.declare(node.name.name, DefSym(node), node)

    def _extern(self, node: ast.ExternDeclaration) -> None:
        self.unsupported(
            node, f"extern '{node.name.name}': extern functions run outside the simulator"
        )

    def _calibration(self, node: Any) -> None:
        what = {
            ast.CalibrationGrammarDeclaration: "defcalgrammar",
            ast.CalibrationStatement: "cal block",
            ast.CalibrationDefinition: "defcal",
        }[type(node)]
        self.unsupported(node, f"{what}: pulse-level calibration cannot be simulated")

    def _ignore(self, node: Any) -> None:
        return None

    def _alias(self, node: ast.AliasStatement) -> None:
        kind, items = self._alias_target(node.value)
        name = node.target.name
        if kind == "qubits":
            self.declare(name, QubitSym(items, False), node)
        else:
            self.declare(name, BitSym(items, False, QType("bit", len(items))), node)

    def _alias_target(self, node: Any) -> tuple[str, list[Any]]:
        if isinstance(node, ast.Concatenation):
            left, right = self._alias_target(node.lhs), self._alias_target(node.rhs)
            if left[0] != right[0]:
                self.invalid(node, "'++' cannot join qubits and bits")
            return left[0], left[1] + right[1]
        if isinstance(node, ast.Identifier):
            name, indices = node, []
        elif isinstance(node, ast.IndexedIdentifier):
            name, indices = node.name, node.indices
        elif isinstance(node, ast.IndexExpression):
            kind, base = self._alias_target(node.collection)
            at = self.indices(node.index, len(base), node)
            return kind, [base[at]] if isinstance(at, int) else [base[i] for i in at]
        else:
            self.invalid(node, "an alias names qubits or bits")
        if name.name.startswith("$"):
            kind, items = "qubits", [self.physical_qubit(name)]
        else:
            symbol = self.lookup(name.name)
            if isinstance(symbol, QubitSym):
                kind, items = "qubits", list(symbol.qubits)
            elif isinstance(symbol, BitSym):
                kind, items = "bits", list(symbol.cells)
            elif symbol is None:
                self.undefined(name, name.name)
            else:
                self.invalid(node, f"cannot alias '{name.name}': only qubits and bits")
        for index in indices:
            at = self.indices(index, len(items), node)
            items = [items[at]] if isinstance(at, int) else [items[i] for i in at]
        return kind, items

    # -- the circuit -----------------------------------------------------------------------------
    def assemble(self) -> QuantumCircuit:
        """Build the circuit. Clbits: scratch bits first, then the declared bits in order, so the
        counts show the declared bits (see ``lower_to_circuit`` for the layout rules)."""
        circuit = QuantumCircuit(name="qasm")
        if self.physical is not None:
            circuit.add_bits(self.physical)
        for decl in self.qubit_decls:
            if isinstance(decl, QuantumRegister):
                circuit.add_register(decl)
            else:
                circuit.add_bits([decl])
        block = self.block
        temps = [c.clbit for c in self.temps if c.clbit is not None]
        has_registers = any(reg is not None for _, _, reg in self.bit_decls)
        has_loose = any(reg is None for _, _, reg in self.bit_decls)
        clear: list[Clbit] = []
        if temps and self.bit_decls:
            scratch = set(temps)
            if _dynamic(block):
                clear = temps  # shot by shot anyway, so stores cost nothing extra
            else:
                # Measurements into scratch bits are final here and unobservable: drop them so
                # the scratch bits stay 0 without stores (a store would stop Aer from sampling).
                block = [
                    item
                    for item in block
                    if not (
                        isinstance(item, CircuitInstruction)
                        and isinstance(item.operation, Measure)
                        and item.clbits[0] in scratch
                    )
                ]
        circuit.add_bits(temps)
        if has_registers:
            for name, clbits, register in self.bit_decls:
                if register is None:
                    register = ClassicalRegister(name=self._unique_register_name(name), bits=clbits)
                circuit.add_register(register)
        elif has_loose:
            loose = [b for _, clbits, _ in self.bit_decls for b in clbits]
            circuit.add_bits(loose)
            if temps:
                circuit.add_register(
                    ClassicalRegister(name=self._unique_register_name("bits"), bits=loose)
                )
        order_q = {q: i for i, q in enumerate(circuit.qubits)}
        order_c = {c: i for i, c in enumerate(circuit.clbits)}
        anchor = circuit.qubits[0] if circuit.qubits else None
        Assembler(order_q, order_c, anchor).append(circuit, block)
        for clbit in clear:
            circuit._append(CircuitInstruction(Store(expr.lift(clbit), expr.lift(False)), (), ()))
        circuit.global_phase = self.global_phase
        # Scratch clbits are the first ones; app.circuits leaves them out of the counts.
        circuit.metadata = {"lowered_operations": self.ops, "scratch_clbits": len(temps)}
        return circuit

    STATEMENTS: ClassVar[dict[type, Callable[[Any, Any], None]]] = {
        ast.Include: _include,
        ast.QubitDeclaration: _qubit_decl,
        ast.ClassicalDeclaration: _classical_decl,
        ast.ConstantDeclaration: _const_decl,
        ast.IODeclaration: _io_decl,
        ast.QuantumGateDefinition: _gate_def,
        ast.SubroutineDefinition: _def,
        ast.ExternDeclaration: _extern,
        ast.CalibrationGrammarDeclaration: _calibration,
        ast.CalibrationStatement: _calibration,
        ast.CalibrationDefinition: _calibration,
        ast.Pragma: _ignore,
        ast.QuantumGate: QuantumOps._gate,
        ast.QuantumPhase: QuantumOps._phase,
        ast.QuantumMeasurementStatement: QuantumOps._measure,
        ast.QuantumBarrier: QuantumOps._barrier,
        ast.QuantumReset: QuantumOps._reset,
        ast.DelayInstruction: QuantumOps._delay,
        ast.Box: ControlFlow._box,
        ast.CompoundStatement: ControlFlow._compound,
        ast.AliasStatement: _alias,
        ast.ClassicalAssignment: Assignments._assignment,
        ast.ExpressionStatement: Assignments._expression_statement,
        ast.BranchingStatement: ControlFlow._if,
        ast.WhileLoop: ControlFlow._while,
        ast.ForInLoop: ControlFlow._for,
        ast.SwitchStatement: ControlFlow._switch,
        ast.BreakStatement: ControlFlow._break,
        ast.ContinueStatement: ControlFlow._continue,
        ast.EndStatement: ControlFlow._end,
        ast.ReturnStatement: Subroutines._return,
    }


def _register_name(name: str) -> str:
    # Qiskit requires OpenQASM 2 style register names; escape others the way the importer does.
    if _QASM2_NAME.fullmatch(name):
        return name
    name = re.sub(r"\W", "_", name)
    if not name or name[0] not in string.ascii_lowercase:
        name = "esc_" + name
    return name


def _dynamic(block: Block) -> bool:
    """Whether Aer must simulate shot by shot anyway: control flow, stores, or an operation on a
    qubit after it was measured."""
    measured: set[Qubit] = set()
    for item in block:
        if not isinstance(item, CircuitInstruction):
            return True
        op = item.operation
        if isinstance(op, Store):
            return True
        if isinstance(op, Measure):
            measured.add(item.qubits[0])
        elif not isinstance(op, Barrier) and measured.intersection(item.qubits):
            return True
    return False
