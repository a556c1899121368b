"""The overhead benchmark's app: one no-op task. Settings come from QTASKS_* env vars, so
the benchmark can point its worker and client at an isolated stream and key prefix."""

from __future__ import annotations

from typing import Any

from qtasks import QTasks

app = QTasks("bench-noop")


@app.task(name="bench.noop")
def noop(x: Any) -> Any:
    """Return the argument: all the time a run takes is the framework's."""
    return x
