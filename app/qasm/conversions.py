"""Types, conversions and indexing: what casts, declarations and assignments need."""

from __future__ import annotations

import math
from typing import Any

from openqasm3 import ast
from qiskit.circuit.classical import expr, types

from .core import Core, ScalarSym
from .values import (
    MAX_INT_BITS,
    Bits,
    Item,
    QType,
    all_of,
    any_of,
    b_and,
    b_eq,
    b_not,
    is_runtime,
    numeric,
    to_item,
    wrap_int,
)

COMPARE = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_EXPR_COMPARE = {
    "<": expr.less,
    "<=": expr.less_equal,
    ">": expr.greater,
    ">=": expr.greater_equal,
}


def _less_than(items: tuple[Item, ...], number: int) -> Item:
    """Unsigned ``bits < number`` for 0 <= number < 2**len(items): some bit i where number has a
    1 and the value a 0, with all higher bits equal."""
    options: list[Item] = []
    higher_equal: Item = True
    for i in range(len(items) - 1, -1, -1):
        bit = items[i]
        if (number >> i) & 1:
            options.append(b_and(higher_equal, b_not(bit)))
            higher_equal = b_and(higher_equal, bit)
        else:
            higher_equal = b_and(higher_equal, b_not(bit))
    return any_of(options)


class Conversions(Core):
    """Classical types and conversions between values, and indexing of registers and arrays."""

    # -- types and conversions -------------------------------------------------------------------
    def qtype(self, node: Any) -> QType:
        """The ``QType`` of an AST type node; sizes are evaluated (they must be constants)."""
        if isinstance(node, (ast.DurationType, ast.StretchType)):
            name = "duration" if isinstance(node, ast.DurationType) else "stretch"
            self.unsupported(node, f"timing type '{name}' cannot be simulated")
        if isinstance(node, ast.BoolType):
            return QType("bool")
        if isinstance(node, ast.ComplexType):
            return QType("complex")
        if isinstance(node, (ast.ArrayType, ast.ArrayReferenceType)):
            base = self.qtype(node.base_type)
            if isinstance(node.dimensions, list):
                dims = tuple(self.const_int(d, "an array dimension") for d in node.dimensions)
            else:
                dims = (-1,) * self.const_int(node.dimensions, "an array rank")
            if any(d == 0 or d < -1 for d in dims):
                self.invalid(node, "array dimensions must be positive")
            return QType("array", base=base, dims=dims)
        kinds = {
            ast.BitType: "bit",
            ast.IntType: "int",
            ast.UintType: "uint",
            ast.FloatType: "float",
            ast.AngleType: "angle",
        }
        kind = kinds.get(type(node))
        if kind is None:
            self.unsupported(node, f"type '{type(node).__name__}'")
        size = getattr(node, "size", None)
        width = None if size is None else self.const_int(size, "a type width")
        if width is not None:
            if width <= 0:
                self.invalid(node, f"type width must be positive, not {width}")
            if kind == "bit" and width > self.limits.max_clbits:
                self.limit("max_clbits", width, self.limits.max_clbits, node, "bits in a register")
            if kind in ("int", "uint") and width > MAX_INT_BITS:
                self.unsupported(node, f"{kind}[{width}]: integers wider than {MAX_INT_BITS} bits")
        return QType(kind, width)

    def coerce(self, value: Any, qtype: QType, node: Any, cast: bool = False) -> Any:
        """``value`` converted to ``qtype`` (for declarations, assignments, arguments, casts)."""
        kind = qtype.kind
        if (kind == "bit" and qtype.width is None) or kind == "bool":
            item = to_item(value)
            if item is not None:
                return item
            if isinstance(value, Bits):
                if kind == "bool" or cast:
                    return self.bits_compare("!=", value, 0, node)
                self.invalid(node, f"cannot assign bit[{len(value.items)}] to a single bit")
            number = numeric(value)
            if number is None:
                self.invalid(node, f"cannot convert {value!r} to {qtype.pretty()}")
            return number != 0
        if kind == "bit":
            assert qtype.width is not None
            width = qtype.width
            if isinstance(value, Bits) and len(value.items) != width:
                if not cast:
                    self.invalid(node, f"cannot assign bit[{len(value.items)}] to bit[{width}]")
                items = value.items[:width] + (False,) * (width - len(value.items))
                return Bits(items)
            if isinstance(value, int) and not isinstance(value, bool):
                return Bits.from_int(value, width)
            return self.as_bits(value, width, node)
        if kind in ("int", "uint"):
            if isinstance(value, Bits):
                if not value.known:
                    if qtype.width is None:
                        return value
                    width = qtype.width
                    return Bits(value.items[:width] + (False,) * (width - len(value.items)))
                signed = kind == "int" and qtype.width == len(value.items)
                return wrap_int(value.to_int(signed), kind, qtype.width)
            item = to_item(value)
            if isinstance(item, expr.Expr):
                return (
                    Bits((item,))
                    if qtype.width is None
                    else self.coerce(Bits((item,)), qtype, node, cast)
                )
            number = numeric(value)
            if number is None or isinstance(number, complex):
                self.invalid(node, f"cannot convert {value!r} to {qtype.pretty()}")
            if isinstance(number, float):
                if not math.isfinite(number):
                    self.invalid(node, f"cannot convert {number} to {qtype.pretty()}")
                number = int(number)
            try:
                return wrap_int(number, kind, qtype.width)
            except ValueError as exc:
                self.invalid(node, str(exc))
        if kind in ("float", "angle", "complex"):
            if is_runtime(value):
                self.runtime_misuse(
                    node, f"a run-time value (a measurement result) converted to {kind}"
                )
            if isinstance(value, Bits) and kind == "angle":
                self.unsupported(node, "casting bits to angle")
            number = numeric(value)
            if number is None:
                self.invalid(node, f"cannot convert {value!r} to {qtype.pretty()}")
            if kind == "complex":
                return complex(number)
            if isinstance(number, complex):
                self.invalid(node, f"cannot convert complex {number} to {kind}")
            return float(number)
        if kind == "array":
            return self._coerce_array(value, qtype, qtype.dims, node)
        self.invalid(node, f"cannot convert to {qtype.pretty()}")

    def _coerce_array(self, value: Any, qtype: QType, dims: tuple[int, ...], node: Any) -> Any:
        assert qtype.base is not None
        if not dims:
            return self.coerce(value, qtype.base, node)
        if not isinstance(value, list):
            self.invalid(node, f"expected an array, not {value!r}")
        if dims[0] != -1 and len(value) != dims[0]:
            self.invalid(node, f"array has {len(value)} elements, expected {dims[0]}")
        return [self._coerce_array(v, qtype, dims[1:], node) for v in value]

    def as_bits(self, value: Any, width: int, node: Any) -> Bits:
        if isinstance(value, Bits):
            if len(value.items) != width:
                self.invalid(node, f"bit widths differ ({len(value.items)} and {width})")
            return value
        item = to_item(value)
        if item is not None and width == 1:
            return Bits((item,))
        if isinstance(value, int) and not isinstance(value, bool):
            return Bits.from_int(value, width)
        self.invalid(node, f"{value!r} is not a bit[{width}] value")

    def bits_compare(self, op: str, bits: Bits, other: Any, node: Any) -> Item:
        """``bits <op> other`` for a bit register, as an ``expr`` over its clbits."""
        width = len(bits.items)
        if isinstance(other, Bits):
            if op not in ("==", "!="):
                if not other.known:
                    self.unsupported(node, f"'{op}' between two run-time bit registers")
                other = other.to_int()
            else:
                if len(other.items) != width:
                    self.invalid(node, f"comparing bit[{width}] with bit[{len(other.items)}]")
                same = all_of([b_eq(a, b) for a, b in zip(bits.items, other.items, strict=True)])
                return same if op == "==" else b_not(same)
        number = numeric(other)
        if is_runtime(other) or number is None or isinstance(number, complex):
            self.unsupported(node, f"'{op}' between a bit register and {other!r}")
        if isinstance(number, float):
            if not number.is_integer():
                if op in ("==", "!="):
                    return op == "!="
                number = math.floor(number) if op in ("<=", ">") else math.ceil(number)
            number = int(number)
        register = self.register_for(bits.items)
        if op in ("==", "!="):
            if number < 0:
                number &= (1 << width) - 1  # the two's-complement pattern, as int[n](c) gives
            if number >> width:
                return op == "!="
            if register is not None:
                out: Item = expr.equal(register, expr.lift(number, types.Uint(width)))
            else:
                pattern = Bits.from_int(number, width).items
                out = all_of(
                    [a if p else b_not(a) for a, p in zip(bits.items, pattern, strict=True)]
                )
            return out if op == "==" else b_not(out)
        # Orderings compare unsigned values; decide the out-of-range cases here.
        top = (1 << width) - 1
        if COMPARE[op](0, number) and COMPARE[op](top, number):
            return True
        if not COMPARE[op](0, number) and not COMPARE[op](top, number):
            return False
        if register is None:
            # Not a whole declared register (a slice, or some bits known): compare bit by bit.
            if op == "<":
                return _less_than(bits.items, number)
            if op == "<=":
                return _less_than(bits.items, number + 1)
            if op == ">":
                return b_not(_less_than(bits.items, number + 1))
            return b_not(_less_than(bits.items, number))
        return _EXPR_COMPARE[op](register, expr.lift(number, types.Uint(width)))

    def _default(self, qtype: QType) -> Any:
        if qtype.kind == "array":
            assert qtype.base is not None

            def build(dims: tuple[int, ...]) -> Any:
                if not dims:
                    return self._default(qtype.base)  # type: ignore[arg-type]
                return [build(dims[1:]) for _ in range(dims[0])]

            return build(qtype.dims)
        return {"float": 0.0, "angle": 0.0, "complex": 0j}.get(qtype.kind, 0)

    def _scalar(self, name: str, qtype: QType, value: Any, const: bool, node: Any) -> ScalarSym:
        if qtype.kind == "array" and math.prod(qtype.dims) > self.limits.max_operations:
            self.limit(
                "max_operations",
                math.prod(qtype.dims),
                self.limits.max_operations,
                node,
                "array elements",
            )
        value = self.coerce(value, qtype, node)
        if is_runtime(value):
            value = self.held(name, qtype, value, node)
        return ScalarSym(qtype, value, const, len(self.frames))

    def held(self, name: str, qtype: QType, value: Any, node: Any) -> Bits:
        """A run-time value kept in an int/uint variable (``int x = c;``, as Qiskit's exporter
        writes before a switch): its bits are copied aside, so measuring into ``c`` later does
        not change ``x``. Such a variable can be compared and switched on, not computed with."""
        if qtype.kind not in ("int", "uint") or not isinstance(value, Bits):
            self.unsupported(
                node,
                f"'{name}' ({qtype.pretty()}) gets a run-time value (a measurement result); only "
                "bit, bool, int and uint variables can hold run-time values",
            )
        items: list[Item] = []
        for item in value.items:
            if type(item) is bool:
                items.append(item)
            else:
                cell = self.new_cell()
                self.write(cell, item, node)
                items.append(self.read(cell))
        return Bits(tuple(items))

    # -- indexing --------------------------------------------------------------------------------
    def indices(self, index: Any, length: int, node: Any) -> int | list[int]:
        """Resolve one index element against a collection of ``length``: an int, or a list for a
        range or set. Negative indices count from the end."""
        if isinstance(index, ast.DiscreteSet):
            return [self._one_index(v, length, node) for v in index.values]
        if isinstance(index, list):
            if len(index) != 1:
                self.unsupported(node, "multi-dimensional indexing of this value")
            index = index[0]
        if isinstance(index, ast.RangeDefinition):
            step = 1 if index.step is None else self.const_int(index.step, "a range step")
            if step == 0:
                self.invalid(node, "range step cannot be 0")
            default_start, default_end = (0, length - 1) if step > 0 else (length - 1, 0)
            start = (
                default_start
                if index.start is None
                else self._norm(self.const_int(index.start, "a range start"), length, node)
            )
            end = (
                default_end
                if index.end is None
                else self._norm(self.const_int(index.end, "a range end"), length, node)
            )
            return list(range(start, end + (1 if step > 0 else -1), step))
        return self._one_index(index, length, node)

    def _one_index(self, index: Any, length: int, node: Any) -> int:
        if type(index) is ast.IntegerLiteral:  # the common case, kept fast
            value = index.value
            if 0 <= value < length:
                return value
            return self._norm(value, length, node)
        value = self.eval(index)
        if is_runtime(value):
            self.runtime_misuse(node, "indexing with a run-time value (a measurement result)")
        if isinstance(value, Bits):
            value = value.to_int()
        if type(value) is bool or not isinstance(value, int):
            self.invalid(node, f"index must be an integer, not {value!r}")
        return self._norm(value, length, node)

    def _norm(self, value: int, length: int, node: Any) -> int:
        if value < 0:
            value += length
        if not 0 <= value < length:
            self.invalid(node, f"index {value} out of range for length {length}")
        return value

    def index_value(self, value: Any, index: Any, node: Any) -> Any:
        """``value[index]`` for bit registers, integers (their bits) and arrays."""
        if isinstance(index, list) and len(index) > 1:
            for sub in index:
                value = self.index_value(value, [sub], node)
            return value
        if isinstance(value, Bits):
            at = self.indices(index, len(value.items), node)
            if isinstance(at, int):
                return value.items[at]
            return Bits(tuple(value.items[i] for i in at))
        if isinstance(value, list):
            at = self.indices(index, len(value), node)
            return value[at] if isinstance(at, int) else [value[i] for i in at]
        if isinstance(value, int) and not isinstance(value, bool):
            # Bit access on an integer: OpenQASM allows `a_in[i]` on an int/uint.
            width = max(value.bit_length() + 1, 1)
            at = self.indices(index, max(width, 64), node)
            if isinstance(at, int):
                return bool((value >> at) & 1)
            return Bits(tuple(bool((value >> i) & 1) for i in at))
        self.invalid(node, f"{value!r} cannot be indexed")
