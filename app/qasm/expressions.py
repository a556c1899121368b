"""Evaluating expressions: folded before the run, or run-time conditions on measured bits."""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable
from typing import Any

from openqasm3 import ast
from qiskit.circuit import Qubit

from .conversions import COMPARE, Conversions
from .core import BitSym, DefSym, GateSym, QubitSym, RunTimeValueUsed, ScalarSym
from .values import (
    BUILTIN_CONSTANTS,
    MAX_INT_BITS,
    Bits,
    Item,
    b_and,
    b_eq,
    b_not,
    b_or,
    b_xor,
    check_int_size,
    int_div,
    int_mod,
    is_runtime,
    numeric,
    to_item,
)

_SWAPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_MATH: dict[str, tuple[Callable[[float], Any], Callable[[complex], Any]]] = {
    "sin": (math.sin, cmath.sin),
    "cos": (math.cos, cmath.cos),
    "tan": (math.tan, cmath.tan),
    "arcsin": (math.asin, cmath.asin),
    "arccos": (math.acos, cmath.acos),
    "arctan": (math.atan, cmath.atan),
    "exp": (math.exp, cmath.exp),
    "log": (math.log, cmath.log),
    "sqrt": (math.sqrt, cmath.sqrt),
}


class Evaluator(Conversions):
    """Expression evaluation on top of ``Core``. Statements that expressions can contain
    (subroutine calls, ``measure``) are provided by the subclass."""

    def call_subroutine(self, symbol: DefSym, arguments: list[ast.Expression], node: Any) -> Any:
        raise NotImplementedError

    def measure_value(self, node: ast.QuantumMeasurement) -> Any:
        raise NotImplementedError

    def eval(self, node: Any) -> Any:
        """The value of an expression: a Python value if known before the run, else a run-time
        ``expr`` (or ``Bits`` holding some)."""
        method = _EVAL.get(type(node))
        if method is None:
            self.unsupported(node, f"expression of kind '{type(node).__name__}'")
        return method(self, node)

    def const_int(self, node: Any, what: str) -> int:
        value = self.eval(node)
        if isinstance(value, Bits) and value.known:
            return value.to_int()
        if type(value) is bool or not isinstance(value, int):
            if is_runtime(value):
                self.unsupported(node, f"{what} must be known before the run, not a measured value")
            self.invalid(node, f"{what} must be an integer, not {value!r}")
        return value

    def const_number(self, node: Any, what: str) -> float:
        try:
            value = self.eval(node)
        except RunTimeValueUsed:
            value = None
            runtime = True
        else:
            runtime = is_runtime(value)
        if runtime:
            self.unsupported(
                node,
                f"run-time value (a measurement result) used as {what}; only values known before "
                "the run can be gate parameters",
            )
        number = numeric(value)
        if number is None or isinstance(number, complex):
            self.invalid(node, f"{what} must be a real number, not {value!r}")
        if not math.isfinite(number):
            self.invalid(node, f"{what} is not finite ({number})")
        return float(number)

    def condition(self, node: Any) -> Item:
        """A condition's value: a ``bool`` when known before the run, else a Bool ``expr``."""
        return self.truth(self.eval(node), node)

    def truth(self, value: Any, node: Any) -> Item:
        item = to_item(value)
        if item is not None:
            return item
        if isinstance(value, Bits):
            return self.bits_compare("!=", value, 0, node)
        number = numeric(value)
        if number is None:
            self.invalid(node, f"{value!r} cannot be used as a condition")
        return number != 0

    def _integer(self, node: ast.IntegerLiteral) -> int:
        value: int = node.value
        if value.bit_length() > MAX_INT_BITS:
            check_int_size(value)
        return value

    def _float(self, node: ast.FloatLiteral) -> float:
        return float(node.value)

    def _imaginary(self, node: ast.ImaginaryLiteral) -> complex:
        return complex(0, node.value)

    def _boolean(self, node: ast.BooleanLiteral) -> bool:
        return bool(node.value)

    def _bitstring(self, node: ast.BitstringLiteral) -> Bits:
        return Bits.from_int(node.value, node.width)

    def _duration(self, node: Any) -> Any:
        self.unsupported(node, "timing: durations cannot be simulated")

    def _array(self, node: ast.ArrayLiteral) -> list[Any]:
        return [self.eval(v) for v in node.values]

    def _identifier(self, node: ast.Identifier) -> Any:
        name = node.name
        symbol = self.lookup(name)
        if symbol is None:
            if name in BUILTIN_CONSTANTS:
                return BUILTIN_CONSTANTS[name]
            self.undefined(node, name)
        if isinstance(symbol, ScalarSym):
            return symbol.value
        if isinstance(symbol, BitSym):
            if symbol.single:
                return self.read(symbol.cells[0])
            return Bits(tuple(self.read(c) for c in symbol.cells))
        kind = {QubitSym: "a qubit", GateSym: "a gate", DefSym: "a subroutine"}[type(symbol)]
        self.invalid(node, f"'{name}' is {kind}, not a classical value")

    def undefined(self, node: Any, name: str) -> Any:
        if self.scope is not self.globals and name in self.globals.names:
            self.invalid(
                node,
                f"'{name}' is not visible here: gates and subroutines see only global constants, "
                "gates, subroutines (and, in subroutines, qubits)",
            )
        self.invalid(node, f"'{name}' is not defined")

    def _unary(self, node: ast.UnaryExpression) -> Any:
        value = self.eval(node.expression)
        op = node.op.name
        if op == "!":
            return b_not(self.truth(value, node))
        if op == "~":
            if isinstance(value, Bits):
                return Bits(tuple(b_not(i) for i in value.items))
            item = to_item(value)
            if item is not None:
                return b_not(item)
            if isinstance(value, int):
                return ~value
            self.invalid(node, f"'~' needs bits or an integer, not {value!r}")
        if is_runtime(value):
            self.runtime_misuse(node, "arithmetic on a run-time value (a measurement result)")
        number = numeric(value)
        if number is None:
            self.invalid(node, f"'-' needs a number, not {value!r}")
        return -number

    def _binary(self, node: ast.BinaryExpression) -> Any:
        op = node.op.name
        if op in ("&&", "||"):
            left = self.condition(node.lhs)
            if type(left) is bool and left == (op == "||"):
                return left  # short-circuit, as in C
            right = self.condition(node.rhs)
            return b_and(left, right) if op == "&&" else b_or(left, right)
        left = self.eval(node.lhs)
        right = self.eval(node.rhs)
        if is_runtime(left) or is_runtime(right):
            return self.runtime_binary(op, left, right, node)
        return self.const_binary(op, left, right, node)

    def binop(self, op: str, left: Any, right: Any, node: Any) -> Any:
        """``left <op> right``, folded when both are known before the run."""
        if is_runtime(left) or is_runtime(right):
            return self.runtime_binary(op, left, right, node)
        return self.const_binary(op, left, right, node)

    def const_binary(self, op: str, left: Any, right: Any, node: Any) -> Any:
        if op in ("&", "|", "^", "<<", ">>") and (
            isinstance(left, Bits) or isinstance(right, Bits)
        ):
            return self.bits_binary(op, left, right, node)
        a, b = numeric(left), numeric(right)
        if a is None or b is None:
            if op in ("==", "!=") and isinstance(left, list) and isinstance(right, list):
                return (left == right) == (op == "==")
            self.invalid(node, f"'{op}' cannot combine {left!r} and {right!r}")
        try:
            return self._arith(op, a, b, node)
        except ZeroDivisionError:
            self.invalid(node, "division by zero")
        except (OverflowError, ValueError) as exc:
            self.invalid(node, f"arithmetic error in '{op}': {exc}")

    def _arith(self, op: str, a: Any, b: Any, node: Any) -> Any:
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op in COMPARE:
            if isinstance(a, complex) or isinstance(b, complex):
                self.invalid(node, f"'{op}' cannot order complex numbers")
            return COMPARE[op](a, b)
        both_int = isinstance(a, int) and isinstance(b, int)
        if op in ("&", "|", "^", "<<", ">>"):
            if not both_int:
                self.invalid(node, f"'{op}' needs integers")
            if op == "&":
                return a & b
            if op == "|":
                return a | b
            if op == "^":
                return a ^ b
            if b < 0:
                self.invalid(node, "negative shift")
            if op == ">>":
                return a >> b
            if b > MAX_INT_BITS:
                raise OverflowError(f"shift by {b} bits")
            return check_int_size(a << b)
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        elif op == "/":
            result = int_div(a, b) if both_int else a / b
        elif op == "%":
            result = int_mod(a, b) if both_int else math.fmod(a, b)
        elif op == "**":
            if both_int and b >= 0:
                if abs(a) > 1 and b * max(1, abs(a).bit_length() - 1) > MAX_INT_BITS:
                    raise OverflowError(f"{a} ** {b} is too large")
                result = a**b
            else:
                result = complex(a) ** b if isinstance(a, complex) else float(a) ** b
        else:
            self.invalid(node, f"unknown operator '{op}'")
        if isinstance(result, int):
            return check_int_size(result)
        return result

    def bits_binary(self, op: str, left: Any, right: Any, node: Any) -> Bits:
        """Bitwise operators and shifts on bit registers (known or not), item by item."""
        if op in ("<<", ">>"):
            if not isinstance(left, Bits) or is_runtime(right):
                self.invalid(node, f"'{op}' shifts a bit register by a known amount")
            amount = numeric(right)
            if not isinstance(amount, int) or amount < 0:
                self.invalid(node, f"shift amount must be a non-negative integer, not {right!r}")
            n = len(left.items)
            amount = min(amount, n)
            if op == "<<":
                return Bits((False,) * amount + left.items[: n - amount])
            return Bits(left.items[amount:] + (False,) * amount)
        width = len(left.items) if isinstance(left, Bits) else len(right.items)
        a = self.as_bits(left, width, node)
        b = self.as_bits(right, width, node)
        fn = {"&": b_and, "|": b_or, "^": b_xor}[op]
        return Bits(tuple(fn(x, y) for x, y in zip(a.items, b.items, strict=True)))

    def runtime_binary(self, op: str, left: Any, right: Any, node: Any) -> Any:
        """Operators with a run-time operand: what Qiskit's classical expressions and Aer run."""
        if op in ("&", "|", "^", "<<", ">>"):
            if isinstance(left, Bits) or isinstance(right, Bits):
                return self.bits_binary(op, left, right, node)
            a, b = to_item(left), to_item(right)
            if op in ("&", "|", "^") and a is not None and b is not None:
                return {"&": b_and, "|": b_or, "^": b_xor}[op](a, b)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            if isinstance(right, Bits) and not isinstance(left, Bits):
                left, right, op = right, left, _SWAPPED[op]
            if isinstance(left, Bits):
                return self.bits_compare(op, left, right, node)
            a = to_item(left)
            if a is None:
                left, right, op = right, left, _SWAPPED[op]
                a = to_item(left)
            assert a is not None
            b = to_item(right)
            if b is not None and op in ("==", "!="):
                same = b_eq(a, b)
                return same if op == "==" else b_not(same)
            number = numeric(right)
            if isinstance(number, (int, float)):
                # A bit compared with a number: decide the outcome for 0 and 1.
                outcome = [self._arith(op, v, number, node) for v in (0, 1)]
                if outcome[0] == outcome[1]:
                    return outcome[0]
                return a if outcome[1] else b_not(a)
        self.runtime_misuse(
            node,
            f"'{op}' on a run-time value (a measurement result); at run time only comparisons, "
            "logic and bitwise operations on measured bits are supported",
        )

    def _cast(self, node: ast.Cast) -> Any:
        return self.coerce(self.eval(node.argument), self.qtype(node.type), node, cast=True)

    def _index_expression(self, node: ast.IndexExpression) -> Any:
        collection = node.collection
        if isinstance(collection, ast.Identifier):
            symbol = self.lookup(collection.name)
            if isinstance(symbol, ScalarSym) and symbol.qtype.kind in ("int", "uint"):
                width = symbol.qtype.width
                if width is not None:
                    bits = Bits.from_int(symbol.value, width)
                    return self.index_value(bits, node.index, node)
        return self.index_value(self.eval(collection), node.index, node)

    def _concatenation(self, node: ast.Concatenation) -> Any:
        left, right = self.eval(node.lhs), self.eval(node.rhs)
        if isinstance(left, Bits) and isinstance(right, Bits):
            return Bits(left.items + right.items)
        if isinstance(left, list) and isinstance(right, list):
            return left + right
        self.invalid(node, "'++' joins two bit registers or two arrays")

    def _sizeof(self, node: ast.SizeOf) -> int:
        value = self.eval(node.target)
        dim = 0 if node.index is None else self.const_int(node.index, "a sizeof dimension")
        for _ in range(dim):
            if not isinstance(value, list) or not value:
                self.invalid(node, "sizeof dimension out of range")
            value = value[0]
        if isinstance(value, (list, Bits)):
            return len(value.items) if isinstance(value, Bits) else len(value)
        self.invalid(node, "sizeof needs an array or a bit register")

    def _call(self, node: ast.FunctionCall) -> Any:
        name = node.name.name
        symbol = self.lookup(name)
        if isinstance(symbol, DefSym):
            return self.call_subroutine(symbol, node.arguments, node)
        if symbol is not None:
            self.invalid(node, f"'{name}' is not a subroutine")
        args = [self.eval(a) for a in node.arguments]
        if any(is_runtime(a) for a in args):
            self.runtime_misuse(node, f"'{name}' of a run-time value (a measurement result)")
        try:
            return self._builtin(name, args, node)
        except ZeroDivisionError:
            self.invalid(node, f"division by zero in '{name}'")
        except (ValueError, OverflowError) as exc:
            self.invalid(node, f"'{name}': {exc}")

    def _builtin(self, name: str, args: list[Any], node: Any) -> Any:
        def arity(n: int) -> None:
            if len(args) != n:
                self.invalid(node, f"'{name}' takes {n} argument(s), not {len(args)}")

        if name in _MATH:
            arity(1)
            x = numeric(args[0])
            if x is None:
                self.invalid(node, f"'{name}' needs a number")
            real_fn, complex_fn = _MATH[name]
            return complex_fn(x) if isinstance(x, complex) else real_fn(x)
        if name in ("ceiling", "floor"):
            arity(1)
            x = numeric(args[0])
            if not isinstance(x, (int, float)):
                self.invalid(node, f"'{name}' needs a real number")
            return math.ceil(x) if name == "ceiling" else math.floor(x)
        if name == "mod":
            arity(2)
            return self._arith("%", numeric(args[0]), numeric(args[1]), node)
        if name in ("real", "imag"):
            arity(1)
            z = numeric(args[0])
            if z is None:
                self.invalid(node, f"'{name}' needs a number")
            return float(complex(z).real if name == "real" else complex(z).imag)
        if name == "popcount":
            arity(1)
            value = args[0]
            if isinstance(value, Bits):
                return sum(1 for i in value.items if i is True)
            if isinstance(value, int) and value >= 0:
                return bin(value).count("1")
            self.invalid(node, "popcount needs bits or a non-negative integer")
        if name in ("rotl", "rotr"):
            arity(2)
            value, amount = args
            if not isinstance(value, Bits) or not isinstance(amount, int):
                self.unsupported(node, f"'{name}' is supported on bit registers only")
            n = len(value.items)
            k = amount % n if n else 0
            if name == "rotr":
                k = (n - k) % n if n else 0
            return Bits(value.items[n - k :] + value.items[: n - k])
        if name == "sizeof":
            if not args or len(args) > 2:
                self.invalid(node, "sizeof takes 1 or 2 arguments")
            value = args[0]
            for _ in range(int(args[1]) if len(args) == 2 else 0):
                value = value[0]
            return len(value.items) if isinstance(value, Bits) else len(value)
        self.invalid(node, f"'{name}' is not defined")

    def qubits_of(self, node: Any) -> list[Qubit]:
        """The qubits an operand names (a qubit, register, slice, alias or ``$n``)."""
        if isinstance(node, ast.Identifier):
            return self._qubit_symbol(node).qubits
        if isinstance(node, ast.IndexedIdentifier):
            qubits: list[Qubit] = self._qubit_symbol(node.name).qubits
            indices = node.indices
            if len(indices) == 1:
                index = indices[0]
                if (
                    type(index) is list
                    and len(index) == 1
                    and type(index[0]) is not ast.RangeDefinition
                ):
                    return [qubits[self._one_index(index[0], len(qubits), node)]]
            for index in indices:
                at = self.indices(index, len(qubits), node)
                qubits = [qubits[at]] if isinstance(at, int) else [qubits[i] for i in at]
            return qubits
        if isinstance(node, ast.Concatenation):
            return self.qubits_of(node.lhs) + self.qubits_of(node.rhs)
        if isinstance(node, ast.IndexExpression):
            base = self.qubits_of(node.collection)
            at = self.indices(node.index, len(base), node)
            return [base[at]] if isinstance(at, int) else [base[i] for i in at]
        self.invalid(node, "expected qubits")

    def _qubit_symbol(self, node: ast.Identifier) -> QubitSym:
        name = node.name
        if name.startswith("$"):
            return QubitSym([self.physical_qubit(node)], True)
        symbol = self.lookup(name)
        if symbol is None:
            self.undefined(node, name)
        if not isinstance(symbol, QubitSym):
            self.invalid(node, f"'{name}' is not a qubit")
        return symbol

    def physical_qubit(self, node: ast.Identifier) -> Qubit:
        raise NotImplementedError


_EVAL: dict[type, Callable[[Evaluator, Any], Any]] = {
    ast.IntegerLiteral: Evaluator._integer,
    ast.FloatLiteral: Evaluator._float,
    ast.ImaginaryLiteral: Evaluator._imaginary,
    ast.BooleanLiteral: Evaluator._boolean,
    ast.BitstringLiteral: Evaluator._bitstring,
    ast.DurationLiteral: Evaluator._duration,
    ast.DurationOf: Evaluator._duration,
    ast.ArrayLiteral: Evaluator._array,
    ast.Identifier: Evaluator._identifier,
    ast.UnaryExpression: Evaluator._unary,
    ast.BinaryExpression: Evaluator._binary,
    ast.Cast: Evaluator._cast,
    ast.IndexExpression: Evaluator._index_expression,
    ast.Concatenation: Evaluator._concatenation,
    ast.SizeOf: Evaluator._sizeof,
    ast.FunctionCall: Evaluator._call,
    ast.QuantumMeasurement: lambda self, node: self.measure_value(node),
}
