"""Classical assignment: to bits (possibly at run time) and to values known before the run."""

from __future__ import annotations

from typing import Any

from openqasm3 import ast
from qiskit.circuit import ClassicalRegister, Clbit
from qiskit.circuit.classical import expr

from .core import BitSym, DefSym, ScalarSym
from .subroutines import DELIVERED, Subroutines
from .values import Bits, Cell, QType, is_runtime


def _expr_clbits(value: expr.Expr) -> set[Clbit]:
    out: set[Clbit] = set()
    for var in expr.iter_vars(value):
        if isinstance(var.var, Clbit):
            out.add(var.var)
        elif isinstance(var.var, ClassicalRegister):
            out.update(var.var)
    return out


class Assignments(Subroutines):
    """``x = ...``, ``x op= ...`` and expression statements."""

    def _assignment(self, node: ast.ClassicalAssignment) -> None:
        op = node.op.name
        lvalue = node.lvalue
        name = lvalue.name if isinstance(lvalue, ast.Identifier) else lvalue.name.name
        symbol = self.lookup(name)
        if symbol is None:
            self.undefined(lvalue, name)
        if isinstance(symbol, BitSym):
            cells, single = self._target_cells(lvalue)
            if op == "=":
                self._assign_to_cells(cells, single, node.rvalue, node)
                return
            current = self.read(cells[0]) if single else Bits(tuple(self.read(c) for c in cells))
            value = self.binop(op[:-1], current, self.eval(node.rvalue), node)
            self._write_cells(cells, single, value, node)
            return
        if not isinstance(symbol, ScalarSym):
            self.invalid(node, f"cannot assign to '{name}'")
        if symbol.const:
            self.invalid(node, f"cannot assign to constant '{name}'")
        if symbol.depth < len(self.frames):
            self.unsupported(
                node,
                f"'{name}' ({symbol.qtype.pretty()}) is assigned under a run-time condition or "
                "loop; only bit and bool variables can change at run time",
            )
        indices = lvalue.indices if isinstance(lvalue, ast.IndexedIdentifier) else []
        value = self.eval(node.rvalue)
        if op != "=":
            current = self._get_path(symbol, indices, node)
            value = self.binop(op[:-1], current, value, node)
        if is_runtime(value):
            if indices:
                self.unsupported(node, f"a run-time value assigned into part of '{name}'")
            value = self.held(name, symbol.qtype, self.coerce(value, symbol.qtype, node), node)
            symbol.value = value
            return
        self._set_path(symbol, indices, value, node)

    def _get_path(self, symbol: ScalarSym, indices: list[Any], node: Any) -> Any:
        value = symbol.value
        for index in indices:
            value = self.index_value(value, index, node)
        return value

    def _set_path(self, symbol: ScalarSym, indices: list[Any], value: Any, node: Any) -> None:
        qtype = symbol.qtype
        if not indices:
            if qtype.kind == "array":
                value = self._copy(value)
            symbol.value = self.coerce(value, qtype, node)
            return
        if qtype.kind in ("int", "uint"):
            if len(indices) != 1:
                self.invalid(node, "an integer has one dimension of bits")
            width = qtype.width or 64
            at = self.indices(indices[0], width, node)
            positions = [at] if isinstance(at, int) else at
            bits = self.coerce(value, QType("bit", None if isinstance(at, int) else len(at)), node)
            items = (bits,) if isinstance(at, int) else bits.items
            current = symbol.value
            for position, bit in zip(positions, items, strict=True):
                current = (current | (1 << position)) if bit else (current & ~(1 << position))
            symbol.value = self.coerce(current, qtype, node)
            return
        if qtype.kind != "array":
            self.invalid(node, f"'{qtype.pretty()}' values cannot be indexed")
        flat: list[Any] = []
        for index in indices:
            flat.extend(index if isinstance(index, list) else [index])
        container = symbol.value
        assert qtype.base is not None
        for depth, index in enumerate(flat):
            at = self.indices([index], len(container), node)
            if not isinstance(at, int):
                self.unsupported(node, "assigning to an array slice")
            if depth == len(flat) - 1:
                remaining = qtype.dims[depth + 1 :]
                sub = QType("array", base=qtype.base, dims=remaining) if remaining else qtype.base
                container[at] = self.coerce(self._copy(value), sub, node)
            else:
                container = container[at]

    @staticmethod
    def _copy(value: Any) -> Any:
        return [Assignments._copy(v) for v in value] if isinstance(value, list) else value

    def _assign_to_cells(self, cells: list[Cell], single: bool, rvalue: Any, node: Any) -> None:
        if isinstance(rvalue, ast.QuantumMeasurement):
            self._no_gate(node, "measure")
            self._measure_cells(self.qubits_of(rvalue.qubit), cells, node)
            return
        if isinstance(rvalue, ast.FunctionCall):
            symbol = self.lookup(rvalue.name.name)
            if isinstance(symbol, DefSym):
                value = self.call_subroutine(symbol, rvalue.arguments, rvalue, into=cells)
                if value is not DELIVERED:
                    self._write_cells(cells, single, value, node)
                return
        self._write_cells(cells, single, self.eval(rvalue), node)

    def _write_cells(self, cells: list[Cell], single: bool, value: Any, node: Any) -> None:
        if single:
            self.write(cells[0], self.coerce(value, QType("bit"), node), node)
            return
        bits = self.coerce(value, QType("bit", len(cells)), node)
        items = list(bits.items)
        # Writing bit by bit must not overwrite a clbit that a later item still reads
        # (`c = {c[1], c[0]}`): then copy the run-time items aside first.
        written: set[Clbit] = set()
        for cell, item in zip(cells, items, strict=True):
            if isinstance(item, expr.Expr) and _expr_clbits(item) & written:
                items = [self._snapshot(i, node) for i in items]
                break
            if cell.clbit is not None:
                written.add(cell.clbit)
        for cell, item in zip(cells, items, strict=True):
            self.write(cell, item, node)

    def _expression_statement(self, node: ast.ExpressionStatement) -> None:
        self.eval(node.expression)
