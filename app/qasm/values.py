"""Values the lowering computes with: compile-time scalars, bit cells, and run-time expressions.

A classical value is known before the run (a Python ``bool``/``int``/``float``/``complex``, a
``list`` for arrays, a ``Bits`` of ``bool``) or only at run time, as a Qiskit classical ``expr`` of
type Bool built from measured clbits. Bit registers are ``Bits`` whose items may mix the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

from qiskit.circuit import Clbit
from qiskit.circuit.classical import expr

# Sized integers wider than this are refused: arithmetic on them (x ** y, x << y) could otherwise
# build numbers of gigabytes from a few characters of source.
MAX_INT_BITS = 4096

Item: TypeAlias = bool | expr.Expr


class Cell:
    """One classical bit of a program variable (``bit``, ``bit[n]`` element or ``bool``).

    ``known`` is its value when the lowering knows it, else None (then ``clbit`` holds it at run
    time). ``clbit`` is None until the bit has to exist in the circuit; ``depth`` is how many
    run-time blocks (if/while bodies) enclosed its declaration. The lowering keeps one invariant:
    where ``clbit`` exists and ``known`` is not None, the clbit holds ``known`` at run time, so a
    write of the value it already holds needs no store.
    """

    __slots__ = ("clbit", "depth", "known", "var")

    def __init__(self, known: bool | None, depth: int, clbit: Clbit | None = None) -> None:
        self.known = known
        self.depth = depth
        self.clbit = clbit
        self.var: expr.Var | None = None if clbit is None else expr.lift(clbit)

    def attach(self, clbit: Clbit) -> None:
        self.clbit = clbit
        self.var = expr.lift(clbit)


@dataclass(frozen=True, slots=True)
class Bits:
    """A bit-register value; ``items[0]`` is bit 0 (the rightmost in a bitstring)."""

    items: tuple[Item, ...]

    @property
    def known(self) -> bool:
        return all(type(i) is bool for i in self.items)

    def to_int(self, signed: bool = False) -> int:
        value = sum(1 << i for i, b in enumerate(self.items) if b is True)
        if signed and self.items and self.items[-1] is True:
            value -= 1 << len(self.items)
        return value

    @staticmethod
    def from_int(value: int, width: int) -> Bits:
        return Bits(tuple(bool((value >> i) & 1) for i in range(width)))


@dataclass(frozen=True, slots=True)
class QType:
    """A classical type: ``kind`` is bit/bool/int/uint/float/angle/complex/array."""

    kind: str
    width: int | None = None
    base: QType | None = None
    dims: tuple[int, ...] = ()

    def pretty(self) -> str:
        if self.kind == "array" and self.base is not None:
            return f"array[{self.base.pretty()}, {', '.join(map(str, self.dims))}]"
        return self.kind if self.width is None else f"{self.kind}[{self.width}]"


def is_runtime(value: Any) -> bool:
    """Whether ``value`` is known only at run time (wholly or in part)."""
    if isinstance(value, expr.Expr):
        return True
    return isinstance(value, Bits) and not value.known


def wrap_int(value: int, kind: str, width: int | None) -> int:
    """Two's-complement wrap of ``value`` into ``int[width]`` / ``uint[width]``."""
    if width is None:
        if kind == "uint" and value < 0:
            raise ValueError(f"negative value {value} for an unsized uint")
        return value
    mask = (1 << width) - 1
    value &= mask
    if kind == "int" and value >> (width - 1):
        value -= 1 << width
    return value


def check_int_size(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise OverflowError(f"integer result wider than {MAX_INT_BITS} bits")
    return value


# -- run-time Boolean algebra with constant folding ----------------------------------------------
def b_not(a: Item) -> Item:
    if type(a) is bool:
        return not a
    assert isinstance(a, expr.Expr)
    if isinstance(a, expr.Unary) and a.op is expr.Unary.Op.LOGIC_NOT:
        return a.operand
    return expr.logic_not(a)


def b_and(a: Item, b: Item) -> Item:
    if type(a) is bool:
        return b if a else False
    if type(b) is bool:
        return a if b else False
    return expr.logic_and(a, b)


def b_or(a: Item, b: Item) -> Item:
    if type(a) is bool:
        return True if a else b
    if type(b) is bool:
        return True if b else a
    return expr.logic_or(a, b)


def b_xor(a: Item, b: Item) -> Item:
    if type(a) is bool:
        return b_not(b) if a else b
    if type(b) is bool:
        return b_not(a) if b else a
    return expr.bit_xor(a, b)


def b_eq(a: Item, b: Item) -> Item:
    return b_not(b_xor(a, b))


def all_of(items: list[Item]) -> Item:
    out: Item = True
    for item in items:
        out = b_and(out, item)
        if out is False:
            return False
    return out


def any_of(items: list[Item]) -> Item:
    out: Item = False
    for item in items:
        out = b_or(out, item)
        if out is True:
            return True
    return out


def to_item(value: Any) -> Item | None:
    """A single bit/bool value as a Boolean item, or None if ``value`` is not one."""
    if type(value) is bool or isinstance(value, expr.Expr):
        return value
    if isinstance(value, Bits) and len(value.items) == 1:
        return value.items[0]
    return None


# -- compile-time arithmetic ---------------------------------------------------------------------
def int_div(a: int, b: int) -> int:
    """Integer division truncating toward zero, as C and OpenQASM do (Python floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def int_mod(a: int, b: int) -> int:
    return a - b * int_div(a, b)


def numeric(value: Any) -> int | float | complex | None:
    """``value`` as a Python number for arithmetic (bits and bools count as integers)."""
    if type(value) is bool:
        return int(value)
    if isinstance(value, (int, float, complex)):
        return value
    if isinstance(value, Bits) and value.known:
        return value.to_int()
    return None


BUILTIN_CONSTANTS: dict[str, float] = {
    "pi": math.pi,
    "π": math.pi,
    "tau": math.tau,
    "τ": math.tau,
    "euler": math.e,
    "ℇ": math.e,
}
