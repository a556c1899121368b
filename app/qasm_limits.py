"""Limits on OpenQASM 3 programs, the errors they raise, and the checks that run before Qiskit.

Pure quantum-input code (no qtasks, no FastAPI). ``app.circuits`` re-exports the public names;
import them from there.

Two checks run before the importer builds anything, because the importer itself is where
hostile programs do their harm (numbers measured with qiskit-qasm3-import 0.6):

* :func:`precheck` reads the *text*: size, encoding, control characters, bracket nesting and
  literal register sizes. ``qubit[10000000] q;`` costs the importer 8 s and 1.9 GB; here it is
  a regular-expression scan.
* ``app.qasm`` (the lowering) bounds every expansion as it builds the circuit: custom gates,
  loops, subroutine calls and registers are counted before they are expanded.

Error tree::

    CircuitError (ValueError)       kind
    ├── QasmSyntaxError             syntax_error     the text does not parse
    ├── QasmSemanticError           semantic_error   parses, but means nothing (undefined gate)
    ├── UnsupportedProgram          unsupported      valid OpenQASM 3 we cannot run (``while``)
    ├── LimitExceeded               limit_exceeded   names the limit, the value and the maximum
    ├── NoMeasurements              no_measurements  nothing measured, so no counts
    └── SimulationFailed            simulation_failed Aer reported success=False
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

STATEVECTOR_BYTES_PER_AMPLITUDE = 16
"""One complex128 amplitude: Aer's statevector needs 16 bytes x 2^n."""
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 1024**3


def max_qubits_for_memory(budget_bytes: int, concurrency: int = 1) -> int:
    """The most qubits whose statevector fits ``budget_bytes`` when ``concurrency`` run at once.

    ``max_qubits_for_memory(4 * 1024**3) == 28``: 2^28 amplitudes x 16 bytes = 4 GiB.
    """
    per_run = budget_bytes // (STATEVECTOR_BYTES_PER_AMPLITUDE * max(1, concurrency))
    return max(0, per_run.bit_length() - 1)


class CircuitLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one program may ask for. Every limit names itself in the error that enforces it.

    The defaults bound one request on a 2-core, 23 GB machine to seconds of parsing, at most
    4 GiB of statevector and a few minutes of simulation.
    """

    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    """Statevector memory one simulation may use (16 bytes x 2^qubits must fit)."""
    max_qubits: int = max_qubits_for_memory(DEFAULT_MEMORY_BUDGET_BYTES)
    """28 = the largest statevector inside the 4 GiB default budget."""
    max_clbits: int = 256
    """Each count key holds one character per clbit; 1M shots x 256 bits is 256 MB of keys."""
    max_shots: int = 1_000_000
    min_shots: int = 1
    max_program_bytes: int = 256 * 1024
    """The pure-Python ANTLR parser takes ~20 us per byte: 256 KiB parses in 5-11 s."""
    max_nesting_depth: int = 32
    """Brackets open at once. One nested block is ~20 parser frames; Python stops at 1,000."""
    max_operations: int = 1_000_000
    """Operations after inlining custom gates and unrolling ``for`` loops."""
    max_unrolled_loop_operations: int = 100_000
    """Operations Aer unrolls from ``for`` loops in Python (~85 us and ~5 KB each, measured);
    an empty iteration counts as one."""
    max_custom_gate_instances: int = 10_000
    """Gate objects the importer builds for calls of ``gate`` definitions, nested ones
    included (~0.1-0.3 ms and ~10 KB each, measured)."""
    max_unitary_qubits: int = 8
    """``pow(k) @`` makes Qiskit build the gate's full 4^n-entry unitary matrix."""
    max_unitary_operations: int = 2_000
    """Operations Qiskit multiplies into ``pow @`` matrices (~0.25 ms of CPU each, measured;
    an operation of an 8-qubit gate counts 9): about a second at the limit."""
    max_work: int = 200_000_000_000
    """Operations x simulated shots x 2^qubits (amplitude updates). Measured ~1.35 ns each on
    2 cores, so the default is ~5 minutes. A dynamic circuit (mid-circuit measurement,
    control flow, reset) simulates every shot, so shots multiply its work."""


def _format_number(value: int | None) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"more than 10^{len(text) - 1}"


class CircuitError(ValueError):
    """A program or request the circuit service cannot run, with a message that says why.

    ``kind`` is a short machine-readable code; ``line`` and ``column`` (1-based) locate the
    problem in the program when known, and then ``str(error)`` starts with them.
    """

    kind: str = "circuit_error"

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        *,
        kind: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.column = column
        if kind is not None:
            self.kind = kind
        if line is None:
            super().__init__(message)
        elif column is None:
            super().__init__(f"line {line}: {message}")
        else:
            super().__init__(f"line {line}, column {column}: {message}")

    def to_dict(self) -> dict[str, Any]:
        """The error as plain data, for an API error body or a stored task failure."""
        out = {"kind": self.kind, "message": str(self), "line": self.line, "column": self.column}
        return out | {k: v for k, v in vars(self).items() if k in ("limit", "value", "maximum")}

    def __reduce__(self) -> tuple[Any, ...]:
        # Our __init__ takes keywords, so the default pickling (cls(*args)) would lose them; the
        # process executor pickles exceptions across processes.
        return (_restore_error, (type(self), self.args, dict(vars(self))))


def _restore_error(cls: type[CircuitError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    vars(error).update(state)
    return error


class QasmSyntaxError(CircuitError):
    """The text is not OpenQASM 3: bad bytes, or the parser stopped at ``line``/``column``."""

    kind = "syntax_error"


class QasmSemanticError(CircuitError):
    """The program parses but is wrong: an undefined gate or name, mismatched arguments."""

    kind = "semantic_error"


class UnsupportedProgram(CircuitError):
    """Valid OpenQASM 3 that the importer or simulator cannot run; the message names it."""

    kind = "unsupported"


class NoMeasurements(CircuitError):
    """The program measures nothing, so a run would have no counts."""

    kind = "no_measurements"


class SimulationFailed(CircuitError):
    """Aer could not run the circuit (e.g. "Insufficient memory"); Aer's message is kept."""

    kind = "simulation_failed"


class LimitExceeded(CircuitError):
    """A program or request over one of :class:`CircuitLimits`.

    ``limit`` is the field name (``"max_qubits"``), ``value`` what the request needs (``None``
    when it could not be counted) and ``maximum`` the limit's value (the minimum for ``min_*``).
    """

    kind = "limit_exceeded"

    def __init__(
        self,
        limit: str,
        value: int | None,
        maximum: int,
        description: str | None = None,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.limit = limit
        self.value = value
        self.maximum = maximum
        bound = "minimum" if limit.startswith("min_") else "limit"
        description = description or f"the program needs {_format_number(value)}"
        text = f"{description}; the {bound} is {_format_number(maximum)} ({limit})"
        super().__init__(text, line=line, column=column)


def position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of ``text[index]``."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


# ---------------------------------------------------------------------------------------------
# Text precheck: linear scans, no parser.

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Line comments and strings (which end on their line in OpenQASM 3) are matched whole; a quote
# without its closing partner is left to the lexer to report.
_SCAN = re.compile(r"//[^\n]*|/\*|\"[^\"\r\n]*\"|'[^'\r\n]*'|[{}()\[\]]")
_NOT_NEWLINE = re.compile(r"[^\n]")
_INT = r"(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)"
_REGISTER = re.compile(
    rf"\b(qubit|bit)\s*\[\s*{_INT}\s*\]|\b(qreg|creg)\s+[^\W\d]\w*\s*\[\s*{_INT}\s*\]"
    r"|\b(qubit|bit|qreg|creg)\s+[^\W\d]\w*\s*[;=]"
)
_HARDWARE_QUBIT = re.compile(r"\$([0-9]+)")


def _int_literal(text: str) -> int:
    digits = text.replace("_", "")
    if len(digits) > 40:  # int() refuses >4300 digits, and any such register is too large
        return 10**40
    base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
    return int(digits[2:] if base != 10 else digits, base)


def decode_program(source: str | bytes) -> str:
    """The program as text, or QasmSyntaxError for bytes that are not UTF-8 text."""
    if isinstance(source, bytes):
        try:
            return source.decode("utf-8")
        except UnicodeDecodeError as e:
            line, column = position(source[: e.start].decode("utf-8", "replace"), e.start)
            raise QasmSyntaxError(
                f"the program is not UTF-8 text (byte 0x{source[e.start]:02x})",
                line=line,
                column=column,
            ) from None
    return source


def precheck(source: str | bytes, limits: CircuitLimits) -> None:
    """Reject hostile or broken text before any parser sees it; milliseconds for 256 KiB.

    Checks size in UTF-8 bytes, that it is text (no NUL, control characters or lone
    surrogates), bracket nesting outside comments and strings, and the qubits and clbits its
    literal register declarations add up to. Raises a :class:`CircuitError` subclass.
    """
    checked_text(source, limits)


def checked_text(source: str | bytes, limits: CircuitLimits) -> str:
    """:func:`precheck`, returning the decoded text."""
    size = len(source)
    if size > limits.max_program_bytes:  # every character is at least one byte
        raise LimitExceeded(
            "max_program_bytes", size, limits.max_program_bytes, f"program has {size} bytes"
        )
    text = decode_program(source)
    if (match := _CONTROL.search(text)) is not None:
        line, column = position(text, match.start())
        raise QasmSyntaxError(
            f"the program contains the control character U+{ord(match.group()):04X}; "
            "OpenQASM programs are text",
            line=line,
            column=column,
        )
    size = len(text.encode("utf-8"))
    if size > limits.max_program_bytes:
        raise LimitExceeded(
            "max_program_bytes", size, limits.max_program_bytes, f"program has {size} bytes"
        )
    code = _strip_and_check_nesting(text, limits)
    _check_declared_sizes(code, limits)
    return text


def _strip_and_check_nesting(text: str, limits: CircuitLimits) -> str:
    """The text with comments and strings blanked (newlines kept); raises on deep nesting."""
    pieces: list[str] = []
    depth = deepest = 0
    first_too_deep = -1
    copied = pos = 0
    while (match := _SCAN.search(text, pos)) is not None:
        token, start = match.group(), match.start()
        if token in "{([":
            depth += 1
            if depth > deepest:
                deepest = depth
                if depth > limits.max_nesting_depth and first_too_deep < 0:
                    first_too_deep = start
            pos = start + 1
            continue
        if token in ")]}":
            depth = max(0, depth - 1)
            pos = start + 1
            continue
        end = match.end()
        if token == "/*":
            end = text.find("*/", start + 2)
            if end < 0:
                line, column = position(text, start)
                raise QasmSyntaxError("unterminated /* comment", line=line, column=column)
            end += 2
        # A comment or a string: blank it so brackets and declarations inside do not count.
        pieces += [text[copied:start], _NOT_NEWLINE.sub(" ", text[start:end])]
        copied = pos = end
    if first_too_deep >= 0:
        line, column = position(text, first_too_deep)
        raise LimitExceeded(
            "max_nesting_depth",
            deepest,
            limits.max_nesting_depth,
            f"program nests brackets {deepest} levels deep",
            line=line,
            column=column,
        )
    pieces.append(text[copied:])
    return "".join(pieces)


def _check_declared_sizes(code: str, limits: CircuitLimits) -> None:
    qubits = clbits = 0
    for match in _REGISTER.finditer(code):
        keyword = match.group(1) or match.group(3) or match.group(5)
        literal = match.group(2) or match.group(4)
        size = 1 if literal is None else _int_literal(literal)
        if keyword in ("qubit", "qreg"):
            qubits += size
            if qubits > limits.max_qubits:
                line, column = position(code, match.start())
                raise LimitExceeded(
                    "max_qubits",
                    qubits,
                    limits.max_qubits,
                    f"program has {_format_number(qubits)} qubits",
                    line=line,
                    column=column,
                )
        else:
            clbits += size
            if clbits > limits.max_clbits:
                line, column = position(code, match.start())
                raise LimitExceeded(
                    "max_clbits",
                    clbits,
                    limits.max_clbits,
                    f"program has {_format_number(clbits)} classical bits",
                    line=line,
                    column=column,
                )
    for match in _HARDWARE_QUBIT.finditer(code):
        if (needed := _int_literal(match.group(1)) + 1) > limits.max_qubits:
            line, column = position(code, match.start())
            raise LimitExceeded(
                "max_qubits",
                needed,
                limits.max_qubits,
                f"hardware qubit {match.group()} needs {_format_number(needed)} qubits",
                line=line,
                column=column,
            )
