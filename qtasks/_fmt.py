"""Plain-text rendering for the CLI: aligned tables, times, durations, JSON for scripts."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[str] = ()
) -> str:
    """An aligned table; columns named in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            v.rjust(w) if headers[i] in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    """``key  value`` lines, keys aligned (one record)."""
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {'' if v is None else v}".rstrip() for k, v in items)


def when(t: float | None) -> str | None:
    """A Unix time as ``2026-11-24 08:12:01.123Z`` (UTC)."""
    if not t:
        return None
    stamp = dt.datetime.fromtimestamp(t, dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def seconds(s: float | None) -> str | None:
    """A duration for people: ``0.004 s``, ``2.51 s``, ``3m 05s``, ``2h 01m``."""
    if s is None:
        return None
    if s < 10:
        return f"{s:.3f} s"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def uptime(s: float) -> str:
    """A long duration, to the second: ``42s``, ``3m 05s``, ``2h 01m``, ``3d 04h``."""
    if s < 60:
        return f"{int(s)}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def to_json(value: Any) -> str:
    """JSON for scripts: structs and bytes (base64) included, keys sorted."""
    return json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True, default=str)


def confirm(question: str, *, stream: TextIO | None = None) -> bool:
    """Ask ``question [y/N]`` on the terminal; False when there is no terminal to ask."""
    stream = stream or sys.stdin
    if not stream.isatty():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return stream.readline().strip().lower() in ("y", "yes")
