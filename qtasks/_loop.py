"""The sync bridge: one background event-loop thread per process for sync callers.

nats-py and redis.asyncio are asyncio-only. Sync callers (scripts, notebooks) run the
same coroutines as async callers, on this loop, and block on the outcome.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from qtasks.errors import ConfigError

T = TypeVar("T")

#: The accepted values of ``[worker] event_loop``.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(kind: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """How to make the event loop qtasks runs on: uvloop for "uvloop", and for "auto" when it
    is installed (it takes about a third less CPU per task than asyncio's own loop, most of
    it in socket I/O and callbacks); asyncio's own loop for "asyncio"."""
    if kind not in EVENT_LOOPS:
        raise ConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("event_loop is 'uvloop' but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's bridge loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            _loop = loop_factory()()
            _thread = threading.Thread(target=_loop.run_forever, name="qtasks-loop", daemon=True)
            _thread.start()
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run ``coro`` on the bridge loop and wait for its result from a sync caller."""
    loop = background_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("a sync qtasks call was made from inside the qtasks loop thread")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout_s)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise
    except BaseException:
        if not future.done():
            future.cancel()
        raise


def _shutdown() -> None:
    global _loop
    loop = _loop
    if loop is None or loop.is_closed():
        return
    from qtasks.app import _close_all_on_loop  # late: app imports this module

    fut = asyncio.run_coroutine_threadsafe(_close_all_on_loop(loop), loop)
    with contextlib.suppress(Exception):
        fut.result(5)
    loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)
