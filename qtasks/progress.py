"""Wait for many results, with a progress bar on a terminal.

A tiny built-in printer (no dependency): one line on stderr, redrawn at most ten times a
second, only when stderr is a terminal unless asked otherwise. ::

    from qtasks.progress import wait_all
    outcomes = wait_all(results, timeout=600)            # sync; a bar on a terminal
    outcomes = await await_all(results, timeout=600)     # async
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from qtasks._loop import run_sync
from qtasks.errors import QTasksError
from qtasks.result import AsyncResult

_REDRAW_S = 0.1
_WIDTH = 30


class Progress:
    """``desc [#########.....] 12/40  3.1/s  eta 9 s`` on one line of ``stream``."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.done = 0
        self.failed = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._t0 = time.monotonic()
        self._drawn_at = 0.0

    def update(self, n: int = 1, *, failed: bool = False) -> None:
        self.done += n
        if failed:
            self.failed += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at >= _REDRAW_S or self.done >= self.total):
            self._drawn_at = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * _WIDTH)
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        line = f"{self.desc} [{'#' * filled}{'.' * (_WIDTH - filled)}] {self.done}/{self.total}"
        line += f"  {rate:.1f}/s"
        if self.failed:
            line += f"  {self.failed} failed"
        if eta is not None and self.done < self.total:
            line += f"  eta {eta:.0f} s"
        self.stream.write("\r" + line.strip())
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


async def await_all(
    results: Sequence[AsyncResult[Any]],
    timeout: float | None = None,
    *,
    progress: bool | None = None,
    desc: str = "waiting",
) -> list[Any]:
    """Wait for every result (at most ``timeout`` seconds in all); each outcome in order:
    the value, or the :class:`~qtasks.errors.QTasksError` it ended with (a task's error,
    or :class:`~qtasks.errors.ResultTimeout`). Never raises for one task's failure."""
    bar = Progress(len(results), desc, enabled=progress)
    deadline = None if timeout is None else time.monotonic() + timeout

    async def one(r: AsyncResult[Any]) -> Any:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            value = await r.aget(timeout=left)
        except QTasksError as e:  # the task's error, or ResultTimeout
            bar.update(failed=True)
            return e
        bar.update()
        return value

    try:
        return list(await asyncio.gather(*(one(r) for r in results)))
    finally:
        bar.close()


def wait_all(
    results: Sequence[AsyncResult[Any]],
    timeout: float | None = None,
    *,
    progress: bool | None = None,
    desc: str = "waiting",
) -> list[Any]:
    """Sync :func:`await_all`."""
    return run_sync(await_all(results, timeout, progress=progress, desc=desc))
