"""The errors the lowering raises: the service's own error tree.

They are defined in ``app.qasm_limits`` (``app.circuits`` re-exports them); importing them from
there, not from ``app.circuits``, keeps ``app.circuits -> app.qasm`` free of an import cycle.
Kinds: ``QasmSyntaxError`` (does not parse), ``QasmSemanticError`` (parses, but names something
undefined, mismatches arguments...), ``UnsupportedProgram`` (valid OpenQASM 3 that cannot be
simulated; names the construct and its line), ``LimitExceeded`` (``limit``, ``value``,
``maximum``). All are ``CircuitError``, a ``ValueError`` with ``kind``, ``line`` and ``column``.
"""

from __future__ import annotations

from app.qasm_limits import (
    CircuitError,
    LimitExceeded,
    QasmSemanticError,
    QasmSyntaxError,
    UnsupportedProgram,
)

__all__ = [
    "CircuitError",
    "LimitExceeded",
    "QasmSemanticError",
    "QasmSyntaxError",
    "UnsupportedProgram",
]
