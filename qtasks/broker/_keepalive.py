"""Heartbeats from a helper process, for deliveries whose worker loop may be frozen.

A task that holds the GIL (Qiskit Aer while it simulates) stops every Python thread of the
worker process: its event loop sends no ``in_progress()``, so JetStream redelivers the
message after ``ack_wait`` and a second worker runs it too. No thread of that process can
help. This helper is a separate process with its own NATS connection: the worker tells it,
through a pipe, which deliveries are running (their reply subjects); it sends the same
progress acknowledgement (``+WPI``) for each, every ``interval_s``, until told to stop.

It exits when the pipe closes, so a worker that dies (even by SIGKILL) stops its
heartbeats at once and its tasks are redelivered after ``ack_wait``, as they must be.

Pipe protocol, one line each: a JSON config first (``servers``, ``interval_s``, ``name``),
then ``+<reply subject>`` to start and ``-<reply subject>`` to stop beating for a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from qtasks.broker.base import Delivery, KeepAlive

log = structlog.get_logger("qtasks.broker")

#: The directory holding the qtasks package.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])

#: JetStream's "work in progress" acknowledgement (what ``Msg.in_progress()`` sends).
_PROGRESS = b"+WPI"
#: Stop lines wait this long to share a pipe write with later lines (a stop that comes
#: late only risks one harmless extra beat; a start is always written at once).
_UNTRACK_DELAY_S = 0.05
#: How often the helper reads the worker's lines (and checks whether a beat is due).
_READ_EVERY_S = 0.05


class KeepAliveProcess(KeepAlive):
    """The worker's side: start the helper, name the deliveries to keep alive, close it.

    :meth:`track` and :meth:`untrack` never block and never raise: if the helper is gone, the
    worker's own heartbeats still run (they only stop while its loop is frozen).
    """

    def __init__(self, servers: list[str], interval_s: float, *, name: str) -> None:
        self._config = {"servers": servers, "interval_s": interval_s, "name": name}
        self._proc: asyncio.subprocess.Process | None = None
        self._broken = False
        self._lines: list[str] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        # qtasks importable in the helper even when the worker found it on a sys.path entry
        # of its own (a source checkout run with -m): put its parent directory first.
        root = _PACKAGE_PARENT
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "qtasks.broker._keepalive",
            stdin=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        # The config (with any credentials in the URLs) goes through the pipe, not argv.
        self._write(json.dumps(self._config))

    def track(self, d: Delivery) -> None:
        reply = getattr(d, "reply", None)
        if reply:
            # Written now, with any stops waiting: the task may freeze this loop once it runs.
            self._lines.append(f"+{reply}")
            self._flush()

    def untrack(self, d: Delivery) -> None:
        reply = getattr(d, "reply", None)
        if reply:
            self._lines.append(f"-{reply}")
            if self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(_UNTRACK_DELAY_S, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            self._write("\n".join(lines))

    def _write(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or self._broken:
            return
        if proc.returncode is not None or proc.stdin.is_closing():
            self._broken = True
            log.warning("keepalive_process_gone", returncode=proc.returncode)
            return
        # A pipe write: done at once unless the helper stopped reading (then buffered).
        proc.stdin.write(line.encode() + b"\n")

    async def close(self, timeout_s: float = 5.0) -> None:
        self._flush()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of file: the helper exits
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# -- the helper process -------------------------------------------------------------------


async def _connect(config: dict[str, Any]) -> Any:
    """Connect, retrying while the servers are down (the worker may start before them)."""
    import nats

    while True:
        try:
            return await nats.connect(
                config["servers"],
                name=str(config.get("name") or "qtasks-keepalive"),
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # then ride through restarts, as the worker does
                reconnect_time_wait=0.5,
            )
        except Exception as e:
            print(f"qtasks keepalive: cannot connect to NATS: {e}", file=sys.stderr)
            await asyncio.sleep(1.0)


def _read_available(fd: int) -> tuple[bytes, bool]:
    """What the non-blocking pipe ``fd`` holds now, and whether its writer closed it."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


async def _serve(config: dict[str, Any], fd: int, pending: bytes = b"") -> None:
    interval_s = float(config["interval_s"])
    # reply subject -> monotonic time of its last beat (or of when it was read as running)
    active: dict[str, float] = {}
    connecting = asyncio.create_task(_connect(config))
    try:
        while True:
            # Polled, not woken by each line: at thousands of tasks a second a wake-up per
            # line cost this process more CPU than the worker spends on a no-op task, and a
            # task needs its first beat only interval_s after it starts.
            await asyncio.sleep(_READ_EVERY_S)
            data, closed = _read_available(fd)
            now = time.monotonic()
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                text = line.decode().strip()
                if text.startswith("+"):
                    active[text[1:]] = now
                elif text.startswith("-"):
                    active.pop(text[1:], None)
            if closed:
                return  # the worker closed us or died: its deliveries are its business now
            if not connecting.done():
                continue  # NATS is not up yet: keep draining the pipe meanwhile
            nc = connecting.result()
            for reply, last in list(active.items()):
                if now - last >= interval_s:
                    active[reply] = now
                    # While reconnecting, nats-py buffers it and sends it on reconnect.
                    with contextlib.suppress(Exception):
                        await nc.publish(reply, _PROGRESS)
    finally:
        connecting.cancel()
        with contextlib.suppress(BaseException):
            nc = await connecting
            await nc.close()


async def _main() -> None:
    fd = sys.stdin.fileno()
    # The config line, read unbuffered so that nothing after it is taken from the pipe.
    head = b""
    while b"\n" not in head:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        head += chunk
    first, _, rest = head.partition(b"\n")
    os.set_blocking(fd, False)
    await _serve(json.loads(first), fd, rest)


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group; the helper leaves when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from qtasks._loop import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_main())
