"""State shared by the lowering: symbols and scopes, classical bit cells, emission and limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias

from openqasm3 import ast
from qiskit.circuit import (
    CircuitInstruction,
    ClassicalRegister,
    Clbit,
    Measure,
    Operation,
    QuantumRegister,
    Qubit,
    Store,
)
from qiskit.circuit.classical import expr

from .emit import Block
from .errors import LimitExceeded, QasmSemanticError, UnsupportedProgram
from .gates import StdGate
from .values import Cell, Item, QType

MEASURE = Measure()


class RunTimeValueUsed(UnsupportedProgram):
    """A measured value used where only a value known before the run will do (an angle, an
    index, arithmetic); the evaluation of a gate parameter says so in its own words."""


# -- symbols -------------------------------------------------------------------------------------
@dataclass(slots=True)
class QubitSym:
    """A qubit, a qubit register, or an alias of some qubits."""

    qubits: list[Qubit]
    single: bool


@dataclass(slots=True)
class BitSym:
    """A ``bit``, ``bit[n]`` or ``bool`` variable (or an alias of bits): one cell per bit."""

    cells: list[Cell]
    single: bool
    qtype: QType


@dataclass(slots=True)
class ScalarSym:
    """A classical variable known before the run: numbers, angles, arrays; or an int/uint that
    holds a copy of measured bits (``value`` is then a ``Bits``, see ``Conversions.held``)."""

    qtype: QType
    value: Any
    const: bool
    depth: int


@dataclass(slots=True)
class GateSym:
    """A gate: Qiskit's (``std``) or defined in the program (``node``)."""

    name: str
    std: StdGate | None = None
    node: ast.QuantumGateDefinition | None = None
    qiskit_name: str = ""
    memo: dict[tuple[float, ...], tuple[Operation, int]] = field(default_factory=dict)
    building: bool = False


@dataclass(slots=True)
class DefSym:
    """A subroutine (``def``); inlined at each call."""

    node: ast.SubroutineDefinition


Symbol: TypeAlias = QubitSym | BitSym | ScalarSym | GateSym | DefSym


class Scope:
    """Names declared in one block; ``boundary`` marks a gate or subroutine body, which sees only
    the global scope's constants, gates, subroutines (and, for subroutines, qubits)."""

    __slots__ = ("boundary", "kind", "names", "parent")

    def __init__(self, parent: Scope | None, kind: str = "block", boundary: bool = False) -> None:
        self.names: dict[str, Symbol] = {}
        self.parent = parent
        self.kind = kind
        self.boundary = boundary


# -- control-flow context ------------------------------------------------------------------------
class Frame:
    """A run-time block (if branch, while body) being lowered.

    ``parent`` is the block the if/while will be appended to once its body is done, so a cell that
    must start existing in the circuit can still be initialised just before it. ``saved`` holds the
    known value, at entry, of each outer cell changed inside, to restore and merge afterwards.
    """

    __slots__ = ("parent", "saved")

    def __init__(self, parent: Block) -> None:
        self.parent = parent
        self.saved: dict[Cell, bool | None] = {}


class LoopCtx:
    """A loop being lowered: ``native`` for a Qiskit while loop, else unrolled.

    An unrolled loop's ``break``/``continue`` under a run-time condition sets the ``brk``/``cont``
    cell, and what follows is guarded by ``if (!brk && !cont)``.
    """

    __slots__ = ("brk", "cont", "depth", "native")

    def __init__(self, native: bool, depth: int) -> None:
        self.native = native
        self.depth = depth
        self.brk: Cell | None = None
        self.cont: Cell | None = None


class FunctionCtx:
    """The program, a subroutine or a gate body being lowered."""

    __slots__ = ("depth", "kind", "loops", "name", "return_type")

    def __init__(self, kind: str, name: str, depth: int, return_type: QType | None = None) -> None:
        self.kind = kind
        self.name = name
        self.depth = depth
        self.return_type = return_type
        self.loops: list[LoopCtx] = []


class BreakSignal(Exception):
    """``break`` decided before the run."""


class ContinueSignal(Exception):
    """``continue`` decided before the run."""


class EndSignal(Exception):
    """``end`` decided before the run."""


class BlockExit(Exception):
    """The rest of this run-time branch is dead (it ended in break/continue)."""


class ReturnSignal(Exception):
    """``return`` decided before the run."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


@dataclass(slots=True)
class Limits:
    """The limits of ``lower_to_circuit`` (see its docstring)."""

    max_operations: int
    max_loop_iterations: int
    max_while_iterations: int
    max_nesting_depth: int
    max_call_depth: int
    max_qubits: int
    max_clbits: int


def line_of(node: Any) -> int | None:
    """The 1-based source line of an AST node, if the parser recorded it."""
    span = getattr(node, "span", None)
    return None if span is None else int(span.start_line)


class Core:
    """Symbols, cells and emission; the evaluator and the statement lowering build on it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.globals = Scope(None, "global")
        self.scope = self.globals
        self.block: Block = []
        self.frames: list[Frame] = []
        self.fn = FunctionCtx("program", "", 0)
        self.calls: list[tuple[str, str, int | None]] = []
        self.ops = 0
        self.iterations = 0
        self.version = 3
        self.physical: list[Qubit] | None = None
        self.qubit_decls: list[Qubit | QuantumRegister] = []
        self.num_qubits = 0
        self.bit_decls: list[tuple[str, list[Clbit], ClassicalRegister | None]] = []
        self.num_clbits = 0
        self.temps: list[Cell] = []
        self.cell_of: dict[Clbit, Cell] = {}
        self.reg_of: dict[tuple[Clbit, ...], ClassicalRegister] = {}
        self.global_phase = 0.0
        self.gate_phase = 0.0
        self.touched: set[Qubit] = set()

    # -- provided by the mixins built on Core -----------------------------------------------------
    def eval(self, node: Any) -> Any:
        """An expression's value (``expressions.Evaluator``)."""
        raise NotImplementedError

    def const_int(self, node: Any, what: str) -> int:
        """An expression that must be an integer known before the run (``Evaluator``)."""
        raise NotImplementedError

    def lower_stmts(self, statements: Sequence[Any]) -> None:
        """Lower statements in the current scope (``control.ControlFlow``)."""
        raise NotImplementedError

    # -- errors ----------------------------------------------------------------------------------
    def _where(self) -> str:
        if not self.calls:
            return ""
        kind, name, line = self.calls[-1]
        at = f" on line {line}" if line is not None else ""
        return f" (in {kind} '{name}' called{at})"

    def unsupported(self, node: Any, message: str) -> NoReturn:
        raise UnsupportedProgram(message + self._where(), line_of(node))

    def runtime_misuse(self, node: Any, message: str) -> NoReturn:
        """A measured value where only a value known before the run will do."""
        raise RunTimeValueUsed(message + self._where(), line_of(node))

    def invalid(self, node: Any, message: str) -> NoReturn:
        raise QasmSemanticError(message + self._where(), line_of(node))

    def limit(self, name: str, value: int, maximum: int, node: Any, what: str) -> NoReturn:
        raise LimitExceeded(name, value, maximum, f"{what}: {value}", line=line_of(node))

    def _enter_call(self, kind: str, name: str, node: Any) -> None:
        if len(self.calls) >= self.limits.max_call_depth:
            self.limit(
                "max_call_depth",
                len(self.calls) + 1,
                self.limits.max_call_depth,
                node,
                "gates and subroutines calling each other",
            )
        self.calls.append((kind, name, line_of(node)))

    def _no_gate(self, node: Any, what: str) -> None:
        if self.fn.kind == "gate":
            self.unsupported(node, f"{what} inside a gate definition (gates must be unitary)")

    # -- scopes ----------------------------------------------------------------------------------
    def lookup(self, name: str) -> Symbol | None:
        scope: Scope | None = self.scope
        while scope is not None:
            symbol = scope.names.get(name)
            if symbol is not None:
                return symbol
            if scope.boundary:
                symbol = self.globals.names.get(name)
                if symbol is None or self._visible_across(symbol, scope.kind):
                    return symbol
                return None
            scope = scope.parent
        return None

    @staticmethod
    def _visible_across(symbol: Symbol, kind: str) -> bool:
        if isinstance(symbol, (GateSym, DefSym)):
            return True
        if isinstance(symbol, ScalarSym):
            return symbol.const
        return isinstance(symbol, QubitSym) and kind == "def"

    def declare(self, name: str, symbol: Symbol, node: Any) -> None:
        existing = self.scope.names.get(name)
        if existing is not None:
            if isinstance(existing, GateSym) and existing.std is not None:
                self.invalid(node, f"'{name}' is already declared: it is a standard gate")
            self.invalid(node, f"'{name}' is already declared in this scope")
        if self.scope is self.globals and name in ("U", "gphase"):
            self.invalid(node, f"'{name}' is a built-in gate")
        self.scope.names[name] = symbol

    # -- emission --------------------------------------------------------------------------------
    def count(self, cost: int, node: Any) -> None:
        self.ops += cost
        if self.ops > self.limits.max_operations:
            self.limit(
                "max_operations",
                self.ops,
                self.limits.max_operations,
                node,
                "operations after unrolling loops and expanding gate definitions",
            )

    def emit(
        self,
        op: Operation,
        qubits: tuple[Qubit, ...],
        clbits: tuple[Clbit, ...] = (),
        cost: int = 1,
        node: Any = None,
    ) -> None:
        self.count(cost, node)
        self.touched.update(qubits)
        self.block.append(CircuitInstruction(op, qubits, clbits))

    def store(self, cell: Cell, value: Item, node: Any) -> None:
        assert cell.var is not None
        rvalue = expr.lift(value) if type(value) is bool else value
        assert isinstance(rvalue, expr.Expr)
        self.emit(Store(cell.var, rvalue), (), (), 1, node)

    # -- cells -----------------------------------------------------------------------------------
    def new_clbit(self, node: Any, declared: bool = False) -> Clbit:
        """A new clbit. ``max_clbits`` bounds the declared (output) bits, the width of a count
        key; each scratch bit counts as an operation instead."""
        if not declared:
            self.count(1, node)
            return Clbit()
        self.num_clbits += 1
        if self.num_clbits > self.limits.max_clbits:
            self.limit("max_clbits", self.num_clbits, self.limits.max_clbits, node, "declared bits")
        return Clbit()

    def new_cell(self, known: bool = False) -> Cell:
        return Cell(known, len(self.frames))

    def read(self, cell: Cell) -> Item:
        if cell.known is not None:
            return cell.known
        assert cell.var is not None
        return cell.var

    def set_known(self, cell: Cell, value: bool | None) -> None:
        if cell.known is value:
            return
        if self.frames and cell.depth < len(self.frames):
            saved = self.frames[-1].saved
            if cell not in saved:
                saved[cell] = cell.known
        cell.known = value

    def materialize(self, cell: Cell, init: bool, node: Any) -> None:
        """Give ``cell`` a (scratch) clbit; with ``init``, make it hold its known value from the
        point where it may first be read at run time."""
        if cell.clbit is not None:
            return
        cell.attach(self.new_clbit(node))
        self.temps.append(cell)
        assert cell.clbit is not None and cell.var is not None
        self.cell_of[cell.clbit] = cell
        if not init or (cell.known is False and cell.depth == 0):
            return  # a fresh clbit outside any run-time block is already 0
        assert cell.known is not None
        self.count(1, node)
        instruction = CircuitInstruction(Store(cell.var, expr.lift(cell.known)), (), ())
        if cell.depth >= len(self.frames):
            self.block.append(instruction)
        else:
            # Just before the outermost run-time block entered since the declaration: the
            # branch not taken must see the value too.
            self.frames[cell.depth].parent.append(instruction)

    def write(self, cell: Cell, value: Item, node: Any) -> None:
        if type(value) is bool:
            if cell.clbit is None:
                if cell.depth >= len(self.frames):
                    self.set_known(cell, value)
                    return
                self.materialize(cell, True, node)
            if cell.known is value:
                return
            self.store(cell, value, node)
            self.set_known(cell, value)
            return
        if cell.clbit is None:
            self.materialize(cell, cell.depth < len(self.frames), node)
        self.store(cell, value, node)
        self.set_known(cell, None)

    def measure_into(self, qubit: Qubit, cell: Cell, node: Any) -> None:
        if cell.clbit is None:
            self.materialize(cell, cell.depth < len(self.frames), node)
        assert cell.clbit is not None
        self.emit(MEASURE, (qubit,), (cell.clbit,), 1, node)
        self.set_known(cell, None)

    def apply_facts(self, facts: dict[Clbit, bool]) -> None:
        for clbit, value in facts.items():
            cell = self.cell_of.get(clbit)
            if cell is not None:
                self.set_known(cell, value)

    def register_for(self, items: tuple[Item, ...]) -> ClassicalRegister | None:
        """The declared register whose bits are exactly ``items``, if there is one."""
        bits = []
        for item in items:
            if not (isinstance(item, expr.Var) and isinstance(item.var, Clbit)):
                return None
            bits.append(item.var)
        return self.reg_of.get(tuple(bits))


def facts_of(condition: Item, positive: bool) -> dict[Clbit, bool]:
    """What a run-time condition being ``positive`` says about single clbits."""
    out: dict[Clbit, bool] = {}
    stack: list[tuple[Item, bool]] = [(condition, positive)]
    while stack:
        node, value = stack.pop()
        if isinstance(node, expr.Var) and isinstance(node.var, Clbit):
            out[node.var] = value
        elif isinstance(node, expr.Unary) and node.op is expr.Unary.Op.LOGIC_NOT:
            stack.append((node.operand, not value))
        elif isinstance(node, expr.Binary):
            if (node.op is expr.Binary.Op.LOGIC_AND and value) or (
                node.op is expr.Binary.Op.LOGIC_OR and not value
            ):
                stack.append((node.left, value))
                stack.append((node.right, value))
            elif (
                node.op is expr.Binary.Op.EQUAL
                and value
                and isinstance(node.left, expr.Var)
                and isinstance(node.left.var, ClassicalRegister)
                and isinstance(node.right, expr.Value)
            ):
                number = int(node.right.value)
                for i, bit in enumerate(node.left.var):
                    out[bit] = bool((number >> i) & 1)
    return out
