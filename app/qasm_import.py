"""OpenQASM 3 text to a Qiskit circuit, sized from the AST before anything large is built.

Three steps, each mapping its failures to :mod:`app.qasm_limits` errors:

1. :func:`parse_ast`: openqasm3's reference ANTLR parser, keeping ANTLR's message, line and
   column (``openqasm3.parse`` drops them for most errors and prints lexer errors to stderr).
2. :class:`ProgramBounds`: one walk over the AST that sizes registers, custom gates, gate
   modifiers and loops without expanding anything. The importer (qiskit-qasm3-import 0.6)
   copies a custom gate's whole definition tree on every call, nested definitions included, so
   a chain of gates that each call the previous one twice doubles its cost per level
   (14 levels: 2.9 s and 370 MB; 20 levels exhaust 8 GB). It also allocates registers and
   resolves ``ctrl(n) @`` / ``pow(k) @`` eagerly, and Aer later unrolls ``for`` loops in
   Python. All of that is bounded here, in time linear in the program.
3. :func:`convert`: the importer's visitor, remembering the node it failed on.

A RecursionError (deeply nested blocks or long expressions: the parser uses ~20 Python frames
per nested block) becomes LimitExceeded on ``max_nesting_depth``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from openqasm3 import ast
from openqasm3.parser import (  # type: ignore[attr-defined]  # what openqasm3.parse uses
    QASM3ParsingError,
    QASMNodeVisitor,
    qasm3Lexer,
    qasm3Parser,
)
from qiskit import QuantumCircuit
from qiskit.circuit import ClassicalRegister
from qiskit_qasm3_import.converter import ConvertVisitor
from qiskit_qasm3_import.exceptions import ConversionError

from app.qasm_limits import (
    CircuitLimits,
    LimitExceeded,
    QasmSemanticError,
    QasmSyntaxError,
    UnsupportedProgram,
)

CAP = 1 << 62
"""Counts saturate here: exponential gate chains stay small ints, still far over any limit."""
UNITARY_WEIGHT_DIVISOR = 8192
"""One ``pow @`` operation on n qubits weighs 1 + 4^n / 8192: measured ~0.25 ms of CPU per
operation on small gates and ~1.8 ms on 8-qubit ones (weight 9)."""
CUSTOM_CTRL_FACTOR = 32
"""``ctrl(k) @`` on a custom gate: Qiskit re-synthesises each of its operations with k
controls; measured ~30 operations per control per gate operation after transpiling."""


def _add(a: int, b: int) -> int:
    return min(a + b, CAP)


def _mul(a: int, b: int) -> int:
    return min(a * b, CAP)


@dataclass
class _Tally:
    ops: int = 0
    """Operations after inlining gates and unrolling loops."""
    loop_ops: int = 0
    """Of those, the ones Aer unrolls from ``for`` loops."""
    instances: int = 0
    """Custom-gate objects the importer builds (loop bodies are converted once)."""
    unitary_ops: int = 0
    """Operations the importer multiplies into ``pow @`` matrices, weighted by matrix size."""

    def add(self, other: _Tally) -> None:
        self.ops = _add(self.ops, other.ops)
        self.loop_ops = _add(self.loop_ops, other.loop_ops)
        self.instances = _add(self.instances, other.instances)
        self.unitary_ops = _add(self.unitary_ops, other.unitary_ops)


@dataclass(frozen=True)
class _Gate:
    ops: int
    instances: int
    custom: bool


_STANDARD = _Gate(ops=1, instances=0, custom=False)


def _where(node: ast.QASMNode) -> tuple[int | None, int | None]:
    """1-based (line, column) of a node (ANTLR columns start at 0)."""
    if node.span is None:
        return None, None
    return node.span.start_line, node.span.start_column + 1


def const_int(node: ast.Expression | None) -> int | None:
    """The value of an integer constant expression the importer accepts, else None.

    Covers literals, unary ``-`` and ``+ - * /`` (the importer supports no other integer
    operators and no ``const`` declarations); magnitudes are clamped to :data:`CAP`.
    """
    if isinstance(node, (ast.IntegerLiteral, ast.BitstringLiteral)):
        return max(-CAP, min(node.value, CAP))
    if isinstance(node, ast.UnaryExpression) and node.op.name == "-":
        value = const_int(node.expression)
        return None if value is None else -value
    if isinstance(node, ast.BinaryExpression) and node.op.name in ("+", "-", "*", "/"):
        lhs, rhs = const_int(node.lhs), const_int(node.rhs)
        if lhs is None or rhs is None or (node.op.name == "/" and rhs == 0):
            return None
        if node.op.name == "+":
            value = lhs + rhs
        elif node.op.name == "-":
            value = lhs - rhs
        else:
            value = lhs * rhs if node.op.name == "*" else lhs // rhs
        return max(-CAP, min(value, CAP))
    return None


def loop_iterations(node: ast.QASMNode) -> int | None:
    """How many times a ``for`` loop runs (OpenQASM ranges include their end), or None."""
    if isinstance(node, ast.DiscreteSet):
        return len(node.values)
    if not isinstance(node, ast.RangeDefinition):
        return None
    start, end = const_int(node.start), const_int(node.end)
    step = 1 if node.step is None else const_int(node.step)
    if start is None or end is None or not step:
        return None
    if step > 0:
        return max(0, (end - start) // step + 1)
    return max(0, (start - end) // -step + 1)


class ProgramBounds:
    """One walk over a program's AST, raising the first limit it breaks."""

    def __init__(self, limits: CircuitLimits) -> None:
        self.limits = limits
        self.gates: dict[str, _Gate] = {}
        self.registers: dict[str, int] = {}
        self.qubits = 0
        self.clbits = 0

    def check(self, program: ast.Program) -> _Tally:
        """Walk ``program``; the totals it returns are within the limits."""
        return self._block(program.statements, frozenset())

    def _block(self, statements: Sequence[ast.QASMNode], params: frozenset[str]) -> _Tally:
        tally = _Tally()
        for statement in statements:
            tally.add(self._statement(statement, params))
            self._enforce(tally, statement)
        return tally

    def _enforce(self, tally: _Tally, node: ast.QASMNode) -> None:
        limits = self.limits
        checks = (
            (
                "max_unrolled_loop_operations",
                tally.loop_ops,
                limits.max_unrolled_loop_operations,
                "operations in unrolled for loops",
            ),
            ("max_operations", tally.ops, limits.max_operations, "operations"),
            (
                "max_custom_gate_instances",
                tally.instances,
                limits.max_custom_gate_instances,
                "custom gate instances once gate definitions are expanded",
            ),
            (
                "max_unitary_operations",
                tally.unitary_ops,
                limits.max_unitary_operations,
                "operations to multiply into 'pow @' matrices",
            ),
        )
        for limit, value, maximum, what in checks:
            if value > maximum:
                shown = f"at least {value}" if value < CAP else "more than 4e18"
                line, column = _where(node)
                description = f"program has {shown} {what}"
                raise LimitExceeded(limit, value, maximum, description, line=line, column=column)

    def _statement(self, node: ast.QASMNode, params: frozenset[str]) -> _Tally:
        if isinstance(node, ast.QuantumGate):
            return self._gate_call(node, params)
        if isinstance(node, ast.QuantumGateDefinition):
            inner = frozenset(q.name for q in node.qubits)
            body = self._block(node.body, inner)
            self.gates[node.name.name] = _Gate(body.ops, _add(1, body.instances), custom=True)
            # Defining a gate already instantiates every custom gate its body calls.
            return _Tally(instances=body.instances, unitary_ops=body.unitary_ops)
        if isinstance(node, ast.ForInLoop):
            iterations = loop_iterations(node.set_declaration)
            if iterations is None:
                raise UnsupportedProgram(
                    "for-loop ranges must be integer constants such as [0:9] or {0, 2, 4}",
                    *_where(node),
                )
            body = self._block(node.block, params)
            # Aer unrolls every iteration in Python, an empty one too.
            unrolled = _mul(iterations, max(1, body.ops))
            return _Tally(unrolled, unrolled, body.instances, body.unitary_ops)
        if isinstance(node, ast.WhileLoop):
            raise UnsupportedProgram(
                "'while' loops are not supported: their length cannot be bounded before "
                "simulation (a loop on a bit that never changes would never end); "
                "use a 'for' loop over a fixed range",
                *_where(node),
            )
        if isinstance(node, ast.BranchingStatement):
            tally = _Tally(ops=1)
            tally.add(self._block(node.if_block, params))
            tally.add(self._block(node.else_block, params))
            return tally
        if isinstance(node, ast.Box):
            return self._block(node.body, params)
        if isinstance(node, ast.QubitDeclaration):
            self._declare(node, node.qubit.name, node.size, quantum=True)
        elif isinstance(node, ast.ClassicalDeclaration) and isinstance(node.type, ast.BitType):
            self._declare(node, node.identifier.name, node.type.size, quantum=False)
            if isinstance(node.init_expression, ast.QuantumMeasurement):
                return _Tally(ops=self._width(node.init_expression.qubit, params))
        elif isinstance(node, ast.QuantumMeasurementStatement):
            return _Tally(ops=self._width(node.measure.qubit, params))
        elif isinstance(node, ast.QuantumReset):
            return _Tally(ops=self._width(node.qubits, params))
        elif isinstance(node, ast.AliasStatement):
            self.registers[node.target.name] = self._width(node.value, params)
        elif isinstance(node, ast.DelayInstruction):
            return _Tally(ops=max(1, len(node.qubits)))
        # Anything else is one operation at most; the importer rejects what it cannot convert.
        return _Tally(ops=1)

    def _declare(
        self, node: ast.QASMNode, name: str, size_node: ast.Expression | None, *, quantum: bool
    ) -> None:
        size = 1 if size_node is None else const_int(size_node)
        if size is None:
            raise UnsupportedProgram(
                "register sizes must be integer constants such as qubit[5]", *_where(node)
            )
        self.registers[name] = max(0, size)
        if quantum:
            self.qubits = _add(self.qubits, max(0, size))
            total, limit, maximum, what = self.qubits, "max_qubits", self.limits.max_qubits, ""
        else:
            self.clbits = _add(self.clbits, max(0, size))
            total, limit, maximum = self.clbits, "max_clbits", self.limits.max_clbits
            what = "classical "
        if total > maximum:
            unit = "qubits" if quantum else "bits"
            line, column = _where(node)
            description = f"program has {total} {what}{unit}"
            raise LimitExceeded(limit, total, maximum, description, line=line, column=column)

    def _gate_call(self, node: ast.QuantumGate, params: frozenset[str]) -> _Tally:
        gate = self.gates.get(node.name.name, _STANDARD)
        controls = 0
        power = False
        for modifier in node.modifiers:
            if modifier.modifier.name == "pow":
                power = True
            elif modifier.modifier.name in ("ctrl", "negctrl"):
                count = 1 if modifier.argument is None else const_int(modifier.argument)
                if count is None:
                    raise UnsupportedProgram(
                        "the number of controls must be an integer constant", *_where(modifier)
                    )
                controls += count
        if controls > len(node.qubits):
            raise QasmSemanticError(
                f"the modifiers add {controls} control qubits but the call names only "
                f"{len(node.qubits)} qubits",
                *_where(node),
            )
        if power and len(node.qubits) > self.limits.max_unitary_qubits:
            line, column = _where(node)
            raise LimitExceeded(
                "max_unitary_qubits",
                len(node.qubits),
                self.limits.max_unitary_qubits,
                f"'pow @' builds the full unitary matrix of a {len(node.qubits)}-qubit gate",
                line=line,
                column=column,
            )
        unitary_ops = 0
        if power:
            ops = 1  # Qiskit replaces the gate by one UnitaryGate
            # Built once per statement, multiplying in the gate's operations one by one.
            weight = 1 + (1 << (2 * len(node.qubits))) // UNITARY_WEIGHT_DIVISOR
            unitary_ops = _mul(max(1, gate.ops), weight)
        elif controls:
            ops = _mul(gate.ops, CUSTOM_CTRL_FACTOR * controls if gate.custom else controls)
        else:
            ops = gate.ops
        width = max((self._width(qubit, params) for qubit in node.qubits), default=1)
        return _Tally(_mul(width, ops), 0, _mul(width, gate.instances), unitary_ops)

    def _width(self, node: ast.QASMNode, params: frozenset[str]) -> int:
        """How many qubits an argument names (a broadcast repeats the gate that often)."""
        if isinstance(node, ast.Identifier):
            if node.name in params or node.name.startswith("$"):
                return 1
            return max(1, self.registers.get(node.name, 1))
        if isinstance(node, ast.Concatenation):
            return _add(self._width(node.lhs, params), self._width(node.rhs, params))
        if not isinstance(node, (ast.IndexedIdentifier, ast.IndexExpression)):
            return 1
        if isinstance(node, ast.IndexedIdentifier):
            base = self._width(node.name, params)
            index = node.indices[0] if node.indices else None
        else:
            base, index = self._width(node.collection, params), node.index
        if isinstance(index, ast.DiscreteSet):
            return max(1, min(base, len(index.values)))
        if isinstance(index, list) and len(index) == 1:
            if isinstance(index[0], ast.RangeDefinition):
                start = 0 if index[0].start is None else const_int(index[0].start)
                end = base - 1 if index[0].end is None else const_int(index[0].end)
                step = 1 if index[0].step is None else const_int(index[0].step)
                if start is None or end is None or not step:
                    return base
                count = (end - start) // step + 1
                return max(1, min(base, count))
            return 1
        return base


_POSITION = re.compile(r"^L(\d+):C(\d+): ")
_NODE_POSITION = re.compile(r"^\d+,\d+: ")
_UNSUPPORTED = re.compile(r"support|unhandled|cannot be resolved|is required to handle|in Qiskit")


def import_program(text: str, limits: CircuitLimits) -> QuantumCircuit:
    """Parse prechecked ``text``, bound its AST against ``limits``, convert it to a circuit."""
    program = parse_ast(text, limits)
    try:
        ProgramBounds(limits).check(program)
    except RecursionError:
        raise too_deep(limits) from None
    return convert(program, limits)


class _SyntaxProblem(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


class _RaisingListener(ErrorListener):  # type: ignore[misc]
    """Stop at the first lexer or parser error (ANTLR's default prints and carries on)."""

    def syntaxError(  # ANTLR's method name
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise _SyntaxProblem(line, column + 1, msg)


def _syntax_message(message: str) -> str:
    if " expecting {" in message and len(message) > 120:
        message = message.split(" expecting {")[0]  # ANTLR lists every possible token
    return message.replace("'<EOF>'", "end of program").replace("<EOF>", "end of program")


def parse_ast(text: str, limits: CircuitLimits) -> ast.Program:
    """openqasm3's reference parser, but with ANTLR's messages and positions kept.

    ``openqasm3.parse`` bails out with an empty QASM3ParsingError on most syntax errors and
    prints lexer errors to stderr; the same lexer, parser and AST builder with a raising error
    listener give "line 3, column 6: missing ';' at 'bit'".
    """
    lexer = qasm3Lexer(InputStream(text))
    parser = qasm3Parser(CommonTokenStream(lexer))
    for recognizer in (lexer, parser):
        recognizer.removeErrorListeners()
        recognizer.addErrorListener(_RaisingListener())
    try:
        program: ast.Program = QASMNodeVisitor().visitProgram(parser.program())  # type: ignore[no-untyped-call]
    except _SyntaxProblem as e:
        raise QasmSyntaxError(_syntax_message(e.message), line=e.line, column=e.column) from None
    except QASM3ParsingError as e:
        message = str(e)
        if (match := _POSITION.match(message)) is not None:
            line, column = int(match.group(1)), int(match.group(2)) + 1
            raise QasmSyntaxError(message[match.end() :], line=line, column=column) from None
        raise QasmSyntaxError(message or "the program does not parse") from None
    except RecursionError:
        raise too_deep(limits) from None
    except MemoryError:
        raise out_of_memory(limits) from None
    except Exception as e:  # the AST builder's own bugs on odd input, e.g. a ValueError
        raise QasmSyntaxError(f"the OpenQASM 3 parser could not read this program: {e}") from e
    return program


def too_deep(limits: CircuitLimits) -> LimitExceeded:
    return LimitExceeded(
        "max_nesting_depth",
        None,
        limits.max_nesting_depth,
        "program nests too deeply for the parser (blocks or statements inside one another, or "
        "a very long expression)",
    )


def out_of_memory(limits: CircuitLimits) -> LimitExceeded:
    return LimitExceeded(
        "memory_budget_bytes",
        None,
        limits.memory_budget_bytes,
        "the OpenQASM importer ran out of memory on this program",
    )


class _Converter(ConvertVisitor):
    """The importer's visitor, remembering where it failed and keeping scalar bits in counts."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_at: ast.QASMNode | None = None

    def visit(self, node: ast.QASMNode, context: Any = None) -> Any:
        try:
            return super().visit(node, context)
        except Exception:
            # The innermost node with a position is the one to report.
            if self.failed_at is None and node.span is not None:
                self.failed_at = node
            raise

    def visit_ClassicalDeclaration(self, node: ast.ClassicalDeclaration, context: Any) -> Any:
        context = super().visit_ClassicalDeclaration(node, context)
        if isinstance(node.type, ast.BitType) and node.type.size is None:
            # The importer makes `bit b;` a loose Clbit, which Qiskit leaves out of count keys;
            # a one-bit register named b, added in declaration order, keeps it.
            circuit: QuantumCircuit = context.circuit
            bit = circuit.clbits[-1]
            circuit.add_register(ClassicalRegister(name=node.identifier.name, bits=[bit]))
        return context


def convert(program: ast.Program, limits: CircuitLimits) -> QuantumCircuit:
    converter = _Converter()
    try:
        circuit: QuantumCircuit = converter.convert(program).circuit
    except RecursionError:
        raise too_deep(limits) from None
    except MemoryError:
        raise out_of_memory(limits) from None
    except Exception as e:
        where = converter.failed_at
        line = None if where is None or where.span is None else where.span.start_line
        column = None if where is None or where.span is None else where.span.start_column + 1
        # Qiskit's CircuitError prints its message quoted; .message is the plain text.
        message = _NODE_POSITION.sub("", str(getattr(e, "message", "") or e)) or repr(e)
        if not isinstance(e, ConversionError):
            raise QasmSemanticError(message, line=line, column=column) from e
        if "qelib1.inc" in message or any(
            isinstance(s, ast.Include) and s.filename == "qelib1.inc" for s in program.statements
        ):
            message += ' (this service takes OpenQASM 3: use include "stdgates.inc")'
        if _UNSUPPORTED.search(message):
            raise UnsupportedProgram(message, line=line, column=column) from None
        if "is not defined" in message and not _includes_stdgates(program):
            message += (
                ' The program does not include "stdgates.inc", which defines the standard'
                ' gates (h, x, cx, rz, ...): add `include "stdgates.inc";` after the version line.'
            )
        raise QasmSemanticError(message, line=line, column=column) from None
    return circuit


def _includes_stdgates(program: ast.Program) -> bool:
    statements = program.statements
    return any(isinstance(s, ast.Include) and s.filename == "stdgates.inc" for s in statements)
