"""Source text to the ``openqasm3`` reference AST, with bounded recursion and located errors.

``openqasm3.parse`` is fine for trusted input, but on hostile input it prints lexer errors to
stderr, reports parser errors without a position, and recurses once per nesting level (about 45
nested blocks or 300 nested parentheses exhaust the interpreter's stack). This module runs the same
ANTLR lexer/parser and AST builder with a nesting check first and errors that carry line and column.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from antlr4.atn.PredictionMode import PredictionMode
from antlr4.error.ErrorListener import ErrorListener
from antlr4.error.Errors import ParseCancellationException, RecognitionException
from antlr4.error.ErrorStrategy import BailErrorStrategy
from openqasm3 import ast
from openqasm3.parser import (  # type: ignore[attr-defined]
    QASM3ParsingError,
    QASMNodeVisitor,
    qasm3Lexer,
    qasm3Parser,
)

from .errors import LimitExceeded, QasmSyntaxError

# Comments and strings are skipped so brackets inside them do not count.
_BRACKETS = re.compile(r'//[^\n]*|/\*.*?\*/|"[^"\n]*"|[{}()\[\]]', re.S)
_OPEN = frozenset("{([")
_LOCATED = re.compile(r"^L(\d+):C(\d+): (.*)$", re.S)
# ANTLR's Python runtime shares its prediction caches between parser instances without locking,
# and the API parses in worker threads. Parsing is pure Python under the GIL anyway, so taking
# turns costs no throughput.
_ANTLR_LOCK = threading.Lock()


def nesting_depth(source: str) -> int:
    """The deepest nesting of ``{``, ``(`` and ``[`` together, ignoring comments and strings."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(source):
        token = match.group()
        if len(token) != 1:
            continue
        if token in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


class _RaiseOnError(ErrorListener):  # type: ignore[misc]
    def syntaxError(
        self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        # Control characters (NUL, binary junk) are shown escaped, not raw.
        raise QasmSyntaxError(msg.encode("unicode_escape").decode("ascii"), line, column + 1)


def parse_program(source: str, *, max_nesting_depth: int) -> ast.Program:
    """Parse ``source`` into an ``openqasm3.ast.Program``.

    Raises ``QasmSyntaxError`` with line and (1-based) column for anything that does not parse, and
    ``LimitExceeded("max_nesting_depth", ...)`` for programs nested too deeply to parse safely.
    """
    if not source.strip():
        raise QasmSyntaxError("empty program")
    depth = nesting_depth(source)
    if depth > max_nesting_depth:
        raise LimitExceeded(
            "max_nesting_depth",
            depth,
            max_nesting_depth,
            f"brackets nest {depth} deep",
        )
    with _ANTLR_LOCK:
        return _parse(source, depth, max_nesting_depth)


def _parse(source: str, depth: int, max_nesting_depth: int) -> ast.Program:
    lexer = qasm3Lexer(InputStream(source))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaiseOnError())
    tokens = CommonTokenStream(lexer)
    parser = None
    try:
        try:
            # ANTLR's two-stage strategy: the faster SLL prediction parses nearly every program;
            # only if it fails is the full LL prediction run, which also gives the exact error.
            parser = _parser(tokens, PredictionMode.SLL)
            tree = parser.program()
        except (ParseCancellationException, RecognitionException):
            tokens.seek(0)
            parser = _parser(tokens, PredictionMode.LL)
            tree = parser.program()
        return QASMNodeVisitor().visitProgram(tree)  # type: ignore[no-untyped-call,no-any-return]
    except QasmSyntaxError:
        raise
    except ParseCancellationException as exc:
        raise _syntax_error(exc, parser) from None
    except RecognitionException as exc:
        raise _syntax_error(exc, parser) from None
    except QASM3ParsingError as exc:
        match = _LOCATED.match(str(exc))
        if match:
            raise QasmSyntaxError(
                match.group(3), int(match.group(1)), int(match.group(2)) + 1
            ) from None
        raise QasmSyntaxError(str(exc) or "invalid program") from None
    except RecursionError:
        # The true depth is unknown here (the parser gave up on it): report "more than allowed".
        raise LimitExceeded(
            "max_nesting_depth",
            max(depth, max_nesting_depth + 1),
            max_nesting_depth,
            "the program nests too deeply for the parser (a very long chain of operators counts "
            "as nesting too)",
        ) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # The AST builder trusts the grammar; odd-but-grammatical input can trip it. That is
        # still the program's fault, so it gets the same error class as any syntax error.
        raise QasmSyntaxError(f"invalid program ({type(exc).__name__}: {exc})") from None


def _parser(tokens: CommonTokenStream, mode: Any) -> Any:
    parser = qasm3Parser(tokens)
    parser.removeErrorListeners()
    parser._errHandler = BailErrorStrategy()
    parser._interp.predictionMode = mode
    return parser


def _syntax_error(exc: Exception, parser: Any) -> QasmSyntaxError:
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    token = getattr(inner, "offendingToken", None) or parser.getCurrentToken()
    if token is None:
        return QasmSyntaxError("invalid program")
    text = token.text
    if text == "<EOF>":
        what = "unexpected end of program (a missing ';' or '}'?)"
    else:
        what = f"unexpected {text!r}"
    return QasmSyntaxError(what, token.line, token.column + 1)
