"""Control flow: blocks, if/else, loops, switch, break/continue/end, before or at run time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, ClassVar

from openqasm3 import ast
from qiskit.circuit import CircuitInstruction, Clbit, Store
from qiskit.circuit.classical import expr

from .core import (
    BlockExit,
    BreakSignal,
    ContinueSignal,
    EndSignal,
    Frame,
    LoopCtx,
    ScalarSym,
    Scope,
    facts_of,
)
from .emit import BREAK, CONTINUE, Block, IfNode, WhileNode
from .quantum import QuantumOps
from .values import Bits, Cell, Item, all_of, any_of, b_and, b_not, b_xor, is_runtime, to_item

# A while loop whose body keeps changing what is known at its start is given up on after this
# many attempts to find a stable state (each attempt marks more bits as run-time values).
_MAX_WHILE_ROUNDS = 16


class ControlFlow(QuantumOps):
    """Blocks and control flow. ``STATEMENTS`` (filled in by the final class) maps each statement
    node type to its handler."""

    STATEMENTS: ClassVar[dict[type, Callable[[Any, Any], None]]] = {}

    # -- blocks ----------------------------------------------------------------------------------
    def lower_block(self, statements: Sequence[Any], kind: str = "block") -> None:
        """Lower statements in a new scope nested in the current one."""
        saved = self.scope
        self.scope = Scope(saved, kind)
        try:
            self.lower_stmts(statements)
        finally:
            self.scope = saved

    def lower_stmts(self, statements: Sequence[Any]) -> None:
        last = len(statements) - 1
        for i, statement in enumerate(statements):
            handler = self.STATEMENTS.get(type(statement))
            if handler is None:
                self.unsupported(statement, f"statement '{type(statement).__name__}'")
            handler(self, statement)
            if i < last and self.fn.loops:
                ctx = self.fn.loops[-1]
                flagged = ctx.brk is not None or ctx.cont is not None
                if (
                    not ctx.native
                    and flagged
                    and self._guard_rest(ctx, statements[i + 1 :], statement)
                ):
                    return

    def _guard_rest(self, ctx: LoopCtx, rest: Sequence[Any], node: Any) -> bool:
        """After a run-time ``break``/``continue`` in an unrolled loop, what follows runs only if
        neither happened: ``if (!brk && !cont) { rest }``. True if the rest was handled here."""
        pending = [c for c in (ctx.brk, ctx.cont) if c is not None and c.known is not False]
        if not pending:
            return False
        if any(c.known is True for c in pending):
            return True  # the rest is dead code
        condition = all_of([b_not(self.read(c)) for c in pending])
        assert isinstance(condition, expr.Expr)
        self.runtime_if(condition, lambda: self.lower_stmts(rest), None, node)
        return True

    # -- if and switch ---------------------------------------------------------------------------
    def _if(self, node: ast.BranchingStatement) -> None:
        condition = self.condition(node.condition)
        if type(condition) is bool:
            self.lower_block(node.if_block if condition else node.else_block)
            return
        assert isinstance(condition, expr.Expr)
        self._no_gate(node, "an if on a measured value")
        else_fn = (lambda: self.lower_block(node.else_block)) if node.else_block else None
        self.runtime_if(condition, lambda: self.lower_block(node.if_block), else_fn, node)

    def runtime_if(
        self,
        condition: expr.Expr,
        then_fn: Callable[[], None],
        else_fn: Callable[[], None] | None,
        node: Any,
    ) -> None:
        """An if/else decided at run time; afterwards, a bit is known only if both branches
        agree on it."""
        if len(self.frames) >= self.limits.max_nesting_depth:
            self.limit(
                "max_nesting_depth",
                len(self.frames) + 1,
                self.limits.max_nesting_depth,
                node,
                "run-time if/while blocks nested",
            )
        parent = self.block
        then_block, then_saved, then_values = self._branch(
            parent, facts_of(condition, True), then_fn
        )
        else_block: Block | None = None
        else_saved: dict[Cell, bool | None] = {}
        else_values: dict[Cell, bool | None] = {}
        if else_fn is not None:
            else_block, else_saved, else_values = self._branch(
                parent, facts_of(condition, False), else_fn
            )
        for cell in then_saved.keys() | else_saved.keys():
            before = then_saved[cell] if cell in then_saved else else_saved[cell]
            then_value = then_values.get(cell, before)
            else_value = else_values.get(cell, before)
            self.set_known(cell, then_value if then_value is else_value else None)
        if then_block or else_block:
            self.count(1, node)
            parent.append(IfNode(condition, then_block, else_block or None))

    def _branch(
        self, parent: Block, facts: dict[Clbit, bool], body: Callable[[], None]
    ) -> tuple[Block, dict[Cell, bool | None], dict[Cell, bool | None]]:
        frame = Frame(parent)
        self.frames.append(frame)
        self.block = []
        try:
            self.apply_facts(facts)
            with suppress(BlockExit):
                body()
            block = self.block
        finally:
            self.frames.pop()
            self.block = parent
        values = {cell: cell.known for cell in frame.saved}
        for cell, old in frame.saved.items():
            cell.known = old
        return block, frame.saved, values

    def _switch(self, node: ast.SwitchStatement) -> None:
        target = self.eval(node.target)
        if not is_runtime(target):
            number = self.const_int(node.target, "a switch target")
            for values, block in node.cases:
                if any(self.const_int(v, "a case value") == number for v in values):
                    self.lower_block(block.statements)
                    return
            if node.default is not None:
                self.lower_block(node.default.statements)
            return
        self._no_gate(node, "switch on a measured value")
        # Copy the target aside so that a case body changing it cannot start another case.
        if isinstance(target, Bits):
            snapshot: Any = Bits(tuple(self._snapshot(i, node) for i in target.items))
        else:
            item = to_item(target)
            if item is None:
                self.invalid(node, "switch needs an integer or bit value")
            snapshot = self._snapshot(item, node)
        matched: list[Item] = []
        for values, block in node.cases:
            options = [
                self.binop("==", snapshot, self.const_int(v, "a case value"), node) for v in values
            ]
            condition = any_of(options)
            matched.append(condition)
            self._case(condition, block.statements, node)
        if node.default is not None:
            default = all_of([b_not(c) for c in matched])
            self._case(default, node.default.statements, node)

    def _case(self, condition: Item, statements: list[Any], node: Any) -> None:
        if condition is False:
            return
        if condition is True:
            self.lower_block(statements)
            return
        assert isinstance(condition, expr.Expr)
        self.runtime_if(condition, lambda: self.lower_block(statements), None, node)

    def _snapshot(self, item: Item, node: Any) -> Item:
        if type(item) is bool:
            return item
        cell = self.new_cell()
        self.write(cell, item, node)
        return self.read(cell)

    def _box(self, node: ast.Box) -> None:
        # A box only groups operations for timing; simulate its contents in place.
        self.lower_block(node.body)

    def _compound(self, node: ast.CompoundStatement) -> None:
        self.lower_block(node.statements)

    # -- loops -----------------------------------------------------------------------------------
    def _loop_ctx(self, node: Any, what: str) -> LoopCtx:
        if not self.fn.loops:
            self.invalid(node, f"'{what}' outside a loop")
        return self.fn.loops[-1]

    def _break(self, node: ast.BreakStatement) -> None:
        ctx = self._loop_ctx(node, "break")
        if ctx.native:
            self.count(1, node)
            self.block.append(BREAK)
            raise BlockExit
        if len(self.frames) == ctx.depth:
            raise BreakSignal
        if ctx.brk is None:
            ctx.brk = Cell(False, ctx.depth)
        self.write(ctx.brk, True, node)
        raise BlockExit

    def _continue(self, node: ast.ContinueStatement) -> None:
        ctx = self._loop_ctx(node, "continue")
        if ctx.native:
            self.count(1, node)
            self.block.append(CONTINUE)
            raise BlockExit
        if len(self.frames) == ctx.depth:
            raise ContinueSignal
        if ctx.cont is None:
            ctx.cont = Cell(False, ctx.depth)
        self.write(ctx.cont, True, node)
        raise BlockExit

    def _end(self, node: ast.EndStatement) -> None:
        if self.frames:
            self.unsupported(node, "'end' under a run-time condition")
        raise EndSignal

    def _count_iterations(self, count: int, node: Any) -> None:
        self.iterations += count
        if self.iterations > self.limits.max_loop_iterations:
            self.limit(
                "max_loop_iterations",
                self.iterations,
                self.limits.max_loop_iterations,
                node,
                "loop iterations unrolled before the run",
            )

    def _iterate(self, ctx: LoopCtx, body: Callable[[], None], node: Any) -> bool:
        """One unrolled iteration; False when the loop is over."""
        if ctx.brk is not None and ctx.brk.known is True:
            return False
        if ctx.cont is not None:
            self.write(ctx.cont, False, node)
        if ctx.brk is not None and ctx.brk.known is None:
            # An earlier iteration may have left the loop at run time: guard this one.
            condition = b_not(self.read(ctx.brk))
            assert isinstance(condition, expr.Expr)
            self.runtime_if(condition, lambda: self._run_guarded(body), None, node)
            return True
        return self._run_body(body)

    def _run_guarded(self, body: Callable[[], None]) -> None:
        # Inside the guard a `break` is a run-time one (it sets the flag), never BreakSignal.
        self._run_body(body)

    @staticmethod
    def _run_body(body: Callable[[], None]) -> bool:
        try:
            body()
        except ContinueSignal:
            pass
        except BreakSignal:
            return False
        return True

    def _for(self, node: ast.ForInLoop) -> None:
        qtype = self.qtype(node.type)
        values = self._loop_values(node.set_declaration, node)
        self._count_iterations(len(values), node)
        ctx = LoopCtx(False, len(self.frames))
        self.fn.loops.append(ctx)
        name = node.identifier.name
        try:
            for value in values:

                def body(value: Any = value) -> None:
                    saved = self.scope
                    self.scope = Scope(saved)
                    try:
                        symbol = ScalarSym(
                            qtype, self.coerce(value, qtype, node), False, len(self.frames)
                        )
                        self.scope.names[name] = symbol
                        self.lower_block(node.block)
                    finally:
                        self.scope = saved

                if not self._iterate(ctx, body, node):
                    break
        finally:
            self.fn.loops.pop()

    def _loop_values(self, declaration: Any, node: Any) -> Sequence[Any]:
        if isinstance(declaration, ast.RangeDefinition):
            if declaration.start is None or declaration.end is None:
                self.invalid(node, "a for-loop range needs a start and an end")
            start = self.const_int(declaration.start, "a range start")
            end = self.const_int(declaration.end, "a range end")
            step = 1 if declaration.step is None else self.const_int(declaration.step, "a step")
            if step == 0:
                self.invalid(node, "range step cannot be 0")
            return range(start, end + (1 if step > 0 else -1), step)
        if isinstance(declaration, ast.DiscreteSet):
            return [self.eval(v) for v in declaration.values]
        value = self.eval(declaration)
        if isinstance(value, Bits):
            return list(value.items)
        if isinstance(value, list):
            return value
        self.invalid(node, "a for loop runs over a range, a set, an array or a bit register")

    def _while(self, node: ast.WhileLoop) -> None:
        self._no_gate(node, "while")
        ctx = LoopCtx(False, len(self.frames))
        self.fn.loops.append(ctx)
        native = False
        try:
            while True:
                if ctx.brk is not None and ctx.brk.known is True:
                    return
                condition = self.condition(node.while_condition)
                broke = ctx.brk is not None and ctx.brk.known is None
                if type(condition) is not bool or broke:
                    native = True
                    break
                if not condition:
                    return
                self._count_iterations(1, node)
                if not self._iterate(ctx, lambda: self.lower_block(node.block), node):
                    return
        finally:
            self.fn.loops.pop()
        if native:
            self._native_while(
                node, ctx.brk if ctx.brk is not None and ctx.brk.known is None else None
            )

    def _native_while(self, node: ast.WhileLoop, broke: Cell | None) -> None:
        """A while loop decided at run time, as a Qiskit while_loop bounded by an iteration
        counter: it stops after ``max_while_iterations`` iterations even if its condition holds.

        The body is lowered once but runs many times, so whatever it changes must be unknown at
        its start: lower it, mark what changed as unknown, and repeat until nothing new changes.
        """
        parent = self.block
        depth = len(self.frames)
        if depth >= self.limits.max_nesting_depth:
            self.limit(
                "max_nesting_depth",
                depth + 1,
                self.limits.max_nesting_depth,
                node,
                "run-time if/while blocks nested",
            )
        for _ in range(_MAX_WHILE_ROUNDS):
            condition = self.condition(node.while_condition)
            if broke is not None:
                condition = b_and(condition, b_not(self.read(broke)))
            if condition is False:
                return
            mark = len(self.temps)
            frame = Frame(parent)
            self.frames.append(frame)
            self.block = []
            self.fn.loops.append(LoopCtx(True, depth + 1))
            try:
                if condition is not True:
                    self.apply_facts(facts_of(condition, True))
                with suppress(BlockExit):
                    self.lower_block(node.block)
                body = self.block
            finally:
                self.fn.loops.pop()
                self.frames.pop()
                self.block = parent
            changed = [cell for cell, old in frame.saved.items() if old is not None]
            for cell, old in frame.saved.items():
                cell.known = old
            if not changed:
                break
            # The discarded round's operations and iterations stay counted: the limits bound the
            # total work, rounds included.
            self._drop_temps(mark, depth + 1)
            for cell in changed:
                self.materialize(cell, True, node)
                self.set_known(cell, None)
        else:
            self.unsupported(node, "while loop: what its body changes did not settle")
        self._emit_while(condition, body, node)

    def _drop_temps(self, start: int, depth: int) -> None:
        kept = self.temps[:start]
        for cell in self.temps[start:]:
            if cell.depth >= depth:
                assert cell.clbit is not None
                del self.cell_of[cell.clbit]
            else:
                kept.append(cell)
        self.temps = kept

    def _emit_while(self, condition: Item, body: Block, node: Any) -> None:
        limit = max(1, self.limits.max_while_iterations)
        width = limit.bit_length()
        counter = [Cell(False, len(self.frames)) for _ in range(width)]
        for cell in counter:
            self.materialize(cell, False, node)
            cell.known = None
            if self.frames:
                self.store(cell, False, node)  # entered again on each outer iteration
        variables = [c.var for c in counter]
        assert all(v is not None for v in variables)
        increment: Block = []
        for i in range(width - 1, 0, -1):
            carry = all_of(variables[:i])
            value = b_xor(variables[i], carry)
            assert isinstance(value, expr.Expr)
            increment.append(CircuitInstruction(Store(variables[i], value), (), ()))
        first = b_not(variables[0])
        assert isinstance(first, expr.Expr)
        increment.append(CircuitInstruction(Store(variables[0], first), (), ()))
        self.count(len(increment) + 1, node)
        pattern = Bits.from_int(limit, width).items
        at_limit = all_of([v if p else b_not(v) for v, p in zip(variables, pattern, strict=True)])
        full = b_and(condition, b_not(at_limit))
        assert isinstance(full, expr.Expr)
        self.block.append(WhileNode(full, increment + body))
