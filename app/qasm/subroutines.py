"""Subroutines (``def``): inlined at each call; results go straight to the caller if possible."""

from __future__ import annotations

from typing import Any

from openqasm3 import ast
from qiskit.circuit import Clbit
from qiskit.circuit.classical import expr

from .control import ControlFlow
from .core import BitSym, DefSym, FunctionCtx, QubitSym, ReturnSignal, ScalarSym, Scope
from .values import Bits, Cell, QType

# Returned by a subroutine whose result was written straight into the caller's target bits.
DELIVERED = object()


class ReturnPlan:
    """How a subroutine's result can be written straight into the caller's target bits."""

    __slots__ = ("local", "measure")

    def __init__(self, measure: bool, local: str | None) -> None:
        self.measure = measure
        self.local = local


class Subroutines(ControlFlow):
    """Calls of ``def`` subroutines, and ``return``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._assigned: dict[int, frozenset[str]] = {}
        self._plans: dict[int, ReturnPlan | None] = {}
        self.fn_into: list[Cell] | None = None
        self.fn_plan: ReturnPlan | None = None
        self._delivered_cells: list[Cell] | None = None

    def call_subroutine(
        self,
        symbol: DefSym,
        arguments: list[Any],
        node: Any,
        into: list[Cell] | None = None,
    ) -> Any:
        definition = symbol.node
        name = definition.name.name
        if self.fn.kind == "gate":
            self.unsupported(node, f"calling subroutine '{name}' inside a gate definition")
        if len(arguments) != len(definition.arguments):
            self.invalid(
                node,
                f"subroutine '{name}' takes {len(definition.arguments)} argument(s), "
                f"got {len(arguments)}",
            )
        return_type = None if definition.return_type is None else self.qtype(definition.return_type)
        written = self._assigned_names(definition)
        scope = Scope(self.globals, "def", boundary=True)
        depth = len(self.frames)
        read_clbits: set[Clbit] = set()
        for declared, argument in zip(definition.arguments, arguments, strict=True):
            arg_name = declared.name.name
            if arg_name in scope.names:
                self.invalid(definition, f"argument '{arg_name}' is declared twice")
            if isinstance(declared, ast.QuantumArgument):
                qubits = self.qubits_of(argument)
                size = None if declared.size is None else self.const_int(declared.size, "a size")
                if len(qubits) != (1 if size is None else size):
                    self.invalid(
                        node,
                        f"argument '{arg_name}' of '{name}' takes "
                        f"{1 if size is None else size} qubit(s), got {len(qubits)}",
                    )
                scope.names[arg_name] = QubitSym(list(qubits), size is None)
                continue
            qtype = self.qtype(declared.type)
            value = self.eval(argument)
            if qtype.kind in ("bit", "bool"):
                cells = self._argument_cells(value, qtype, arg_name in written, depth, node)
                for cell in cells:
                    if cell.known is None and cell.clbit is not None:
                        read_clbits.add(cell.clbit)
                scope.names[arg_name] = BitSym(cells, qtype.width is None, qtype)
            elif (
                qtype.kind == "array"
                and declared.access is ast.AccessControl.mutable
                and isinstance(argument, ast.Identifier)
            ):
                source = self.lookup(argument.name)
                if not isinstance(source, ScalarSym) or source.qtype.kind != "array":
                    self.invalid(node, f"argument '{arg_name}' of '{name}' must be an array")
                scope.names[arg_name] = ScalarSym(source.qtype, source.value, False, source.depth)
            else:
                scope.names[arg_name] = self._scalar(arg_name, qtype, value, False, node)
        plan = self._return_plan(definition) if into is not None else None
        if plan is not None and into is not None:
            width = 1 if return_type is None or return_type.width is None else return_type.width
            targets = {c.clbit for c in into if c.clbit is not None}
            if (
                width != len(into)
                or return_type is None
                or return_type.kind != "bit"
                or (targets & read_clbits)
            ):
                plan = None
        self._enter_call("subroutine", name, node)
        saved = (self.scope, self.fn, self.fn_into, self.fn_plan, self._delivered_cells)
        self.scope = scope
        self.fn = FunctionCtx("def", name, depth, return_type)
        self.fn_into = into if plan is not None else None
        self.fn_plan = plan
        self._delivered_cells = into if plan is not None and plan.local is not None else None
        result: Any = None
        try:
            self.lower_stmts(definition.body)
        except ReturnSignal as signal:
            result = signal.value
        finally:
            (self.scope, self.fn, self.fn_into, self.fn_plan, self._delivered_cells) = saved
            self.calls.pop()
        if result is DELIVERED:
            return DELIVERED
        if return_type is None:
            return None
        if result is None:
            self.invalid(node, f"subroutine '{name}' ended without returning a value")
        return self.coerce(result, return_type, node)

    def _argument_cells(
        self, value: Any, qtype: QType, written: bool, depth: int, node: Any
    ) -> list[Cell]:
        coerced = self.coerce(value, qtype, node)
        items = coerced.items if isinstance(coerced, Bits) else (coerced,)
        cells = []
        for item in items:
            if type(item) is bool:
                cells.append(Cell(item, depth))
            elif not written and isinstance(item, expr.Var) and isinstance(item.var, Clbit):
                cells.append(Cell(None, depth, item.var))  # read-only view of the caller's bit
            else:
                cell = Cell(False, depth)
                self.write(cell, item, node)
                cells.append(cell)
        return cells

    def _return(self, node: ast.ReturnStatement) -> None:
        if self.fn.kind != "def":
            self.invalid(node, "'return' outside a subroutine")
        if len(self.frames) > self.fn.depth:
            self.unsupported(node, "'return' under a run-time condition (a measured value)")
        value_node = node.expression
        if value_node is None:
            raise ReturnSignal(None)
        into, plan = self.fn_into, self.fn_plan
        if into is not None and plan is not None and plan.measure:
            assert isinstance(value_node, ast.QuantumMeasurement)
            qubits = self.qubits_of(value_node.qubit)
            if len(qubits) == len(into):
                self._measure_cells(qubits, into, node)
                raise ReturnSignal(DELIVERED)
        if plan is not None and plan.local is not None and into is None:
            symbol = self.lookup(plan.local)
            if isinstance(symbol, BitSym) and symbol.cells is self._delivered_cells:
                raise ReturnSignal(DELIVERED)
        raise ReturnSignal(self.eval(value_node))

    def _assigned_names(self, definition: ast.SubroutineDefinition) -> frozenset[str]:
        """Names a subroutine body assigns or measures into (its arguments need copies then)."""
        key = id(definition)
        cached = self._assigned.get(key)
        if cached is not None:
            return cached
        names: set[str] = set()
        stack: list[Any] = list(definition.body)
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if isinstance(item, tuple):
                stack.extend(item)
                continue
            if not isinstance(item, ast.QASMNode):
                continue
            target = None
            if isinstance(item, ast.ClassicalAssignment):
                target = item.lvalue
            elif isinstance(item, ast.QuantumMeasurementStatement):
                target = item.target
            if target is not None:
                names.add(target.name if isinstance(target, ast.Identifier) else target.name.name)
            if isinstance(item, ast.Statement):
                stack.extend(v for k, v in vars(item).items() if k not in ("span", "annotations"))
        out = frozenset(names)
        self._assigned[key] = out
        return out

    def _return_plan(self, definition: ast.SubroutineDefinition) -> ReturnPlan | None:
        """Whether the result can go straight into the caller's bits: the body ends in its only
        ``return``, of a measurement or of a bit variable declared at the top of the body."""
        key = id(definition)
        if key in self._plans:
            return self._plans[key]
        plan = None
        body = definition.body
        returns = sum(1 for s in _walk(body) if isinstance(s, ast.ReturnStatement))
        if body and returns == 1 and isinstance(body[-1], ast.ReturnStatement):
            value = body[-1].expression
            if isinstance(value, ast.QuantumMeasurement):
                plan = ReturnPlan(True, None)
            elif isinstance(value, ast.Identifier) and any(
                isinstance(s, ast.ClassicalDeclaration)
                and s.identifier.name == value.name
                and isinstance(s.type, ast.BitType)
                for s in body
            ):
                plan = ReturnPlan(False, value.name)
        self._plans[key] = plan
        return plan


def _walk(statements: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = list(statements)
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, ast.Statement):
            out.append(item)
            stack.extend(v for k, v in vars(item).items() if k not in ("span", "annotations"))
    return out
