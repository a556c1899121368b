"""The process executor: a small pool of warm child processes, one call per child at a time.

Not :class:`concurrent.futures.ProcessPoolExecutor`: that pool cannot kill one worker (for a
hard time limit, or after a crash) without breaking every other call (BrokenProcessPool).
Here each slot owns one child; a child that runs out of time or dies is replaced alone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec
import structlog

from qtasks.errors import (
    ChildProcessDied,
    ConfigError,
    QTasksError,
    TaskError,
    TimeLimitExceeded,
)
from qtasks.executors._call import wait_limited
from qtasks.executors._child import HEADER, child_main, decode_reply, dumps, safe_str, value_of
from qtasks.executors.base import Executor, Resolver, TaskCall

log = structlog.get_logger("qtasks.executors")

START_METHODS = ("spawn", "forkserver")
_READ_CHUNK_BYTES = 1 << 18
#: Tries to hand a call to a child when children die before reading it.
_HANDOVER_ATTEMPTS = 3

#: Children not yet closed, killed at interpreter exit if nobody shut their pool down
#: (multiprocessing's own exit hook would otherwise wait for them forever).
_live_children: set[_Child] = set()


@atexit.register
def _kill_children_at_exit() -> None:
    for child in list(_live_children):
        child.kill()


class _DiedBeforeStart(ChildProcessDied):
    """The child died before it acknowledged the call: the task did not start there."""


class _Child:
    """One child process, the parent's ends of its two pipes, and its reply reader.

    Replies are read with ``loop.add_reader`` on a non-blocking pipe, so the loop never
    blocks on a child; the process sentinel is watched too, so a death is seen at once.
    """

    def __init__(self, process: BaseProcess, requests: Connection, replies: Connection) -> None:
        assert process.pid is not None
        self.process = process
        self.pid: int = process.pid
        self._requests = requests
        self._replies = replies
        self._fd = replies.fileno()
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._during = "the task"
        self.started = True
        """False from sending a call until the child acknowledges it (an empty frame)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.exited = False
        """Set once the child is seen gone (end of file on its pipe, or its sentinel)."""
        self._exitcode: int | None = None
        self._watching = True
        self._closed = False
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)
        self._loop.add_reader(process.sentinel, self._on_exit)
        _live_children.add(self)

    # -- reading (event loop callbacks) --------------------------------------------------------
    def _on_readable(self) -> None:
        if self._read_some() == "eof":
            self._on_exit()

    def _read_some(self) -> str:
        """Read what is there and deliver complete frames: "data", "again" or "eof"."""
        try:
            chunk = os.read(self._fd, _READ_CHUNK_BYTES)
        except BlockingIOError:
            return "again"
        except OSError:
            return "eof"
        if not chunk:
            return "eof"
        self._buffer += chunk
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            end = HEADER.size + size
            if len(self._buffer) < end:
                break
            frame = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            if not frame:  # the child's acknowledgement: it has the call and starts it now
                self.started = True
                continue
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(frame)
            # else: a late reply to a call already given up on; this child is being replaced
        return "data"

    def _on_exit(self) -> None:
        if self.exited:
            return
        self.exited = True
        # A reply written just before the end may still be in the pipe: take it first.
        while self._read_some() == "data":
            pass
        self._unwatch()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            t = self._loop.create_task(self._fail(waiter, self._during))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _fail(self, waiter: asyncio.Future[bytes], during: str) -> None:
        exitcode = await self.reap()
        if not waiter.done():
            if self.started:
                waiter.set_exception(ChildProcessDied(exitcode, self.pid, during))
            else:
                waiter.set_exception(
                    _DiedBeforeStart(exitcode, self.pid, "the hand-over of a task")
                )

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fd)
            self._loop.remove_reader(self.process.sentinel)

    # -- calls -----------------------------------------------------------------------------------
    async def reply(self, timeout_s: float | None, during: str = "the task") -> bytes:
        """Wait for the next frame (the ready handshake or a call's reply)."""
        self._waiter = self._loop.create_future()
        self._during = during
        try:
            if self.exited:
                await self._fail(self._waiter, during)
            return await wait_limited(self._waiter, timeout_s)
        finally:
            self._waiter = None

    async def call(self, request: bytes, time_limit_s: float | None) -> bytes:
        """Send one request and wait for its reply frame.

        Raises ``TimeLimitExceeded`` past ``time_limit_s`` (the child is left running: the
        caller replaces it) and ``ChildProcessDied`` if the child dies first.
        """
        self.started = False
        try:
            # The child is idle in recv_bytes, so this write drains at once even when large.
            self._requests.send_bytes(request)
        except OSError:
            self.kill()  # a broken pipe: it died while idle; the sentinel will report how
        return await self.reply(time_limit_s)

    # -- lifecycle -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the child to exit after its current call."""
        with contextlib.suppress(OSError):
            self._requests.send_bytes(dumps(None))

    def exitcode(self) -> int | None:
        """The exit code if the child has ended (reaping it), else None."""
        if self._exitcode is None and not self._closed:
            self._exitcode = self.process.exitcode
        return self._exitcode

    def kill(self) -> None:
        if not self._closed and self.exitcode() is None:
            self.process.kill()

    async def reap(self, timeout_s: float = 2.0) -> int | None:
        """The exit code, polled without blocking the loop (None if still alive at timeout)."""
        deadline = self._loop.time() + timeout_s
        while (code := self.exitcode()) is None and not self._closed:
            if self._loop.time() >= deadline:
                break
            await asyncio.sleep(0.005)
        return code

    def close(self, during: str = "the task") -> None:
        """Release the pipes and the process handle; a call still waiting fails."""
        if self._closed:
            return
        exitcode = self.exitcode()
        self._closed = True
        self._unwatch()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ChildProcessDied(exitcode, self.pid, during))
        self._requests.close()
        self._replies.close()
        if exitcode is not None:
            self.process.close()  # its sentinel fd; an unkillable child keeps it (rare)
        _live_children.discard(self)


class _Slot:
    """A place for one child; always either free (in the queue), running a call, or being
    refilled by a replacement, and always handed back to the queue."""

    __slots__ = ("child", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.child: _Child | None = None


class ProcessExecutor(Executor):
    """Runs each call in one of ``concurrency`` child processes, started with ``spawn`` (or
    ``forkserver``) and never ``fork``: a fork-based pool deadlocked once the parent had run
    a large Aer simulation.

    :meth:`start` returns once every child has imported the app (``app_spec``, required).
    Only plain data crosses to the child: the task name, args, kwargs and the context's
    fields; the child looks the task up by name. Replies are pickled on a local pipe.

    ``time_limit_s`` is hard: the child running the call is killed and replaced, the pool
    keeps its size, other calls go on, and :meth:`run` raises
    :class:`~qtasks.errors.TimeLimitExceeded`. A child that dies during a call (``os._exit``,
    a crash, the OOM killer) is replaced too, and :meth:`run` raises
    :class:`~qtasks.errors.ChildProcessDied`. A cancelled :meth:`run` kills its child.

    Builtin exception types raised by a task are raised again as themselves (with the
    child's traceback as ``__cause__``), ``Retry`` as ``Retry``; others as
    :class:`~qtasks.errors.TaskError` with the remote type name, message and traceback.

    ``forkserver`` starts children faster, but they see the environment of the moment the
    fork server started, not of the moment they start: ``spawn`` is the default. As with
    any spawn-based pool, each child imports the parent's ``__main__`` module as
    ``__mp_main__``: a script that starts a worker needs ``if __name__ == "__main__":``.
    """

    name = "process"

    def __init__(
        self,
        concurrency: int,
        resolve: Resolver,
        app_spec: str | None = None,
        *,
        start_method: str = "spawn",
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(concurrency, resolve, app_spec)
        if not app_spec:
            raise ConfigError(
                "the process executor needs the app's import path to load it in its child "
                "processes: pass app_spec='module:attribute' (the worker's -A/--app)"
            )
        if start_method not in START_METHODS:
            raise ConfigError(
                f"start method {start_method!r} is not allowed for the process executor; "
                f"use one of {', '.join(START_METHODS)} (fork deadlocks after Aer has run)"
            )
        self.app_spec: str = app_spec
        self.start_method = start_method
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._mp = get_context(start_method)
        self._slots: list[_Slot] = []
        self._free: asyncio.Queue[_Slot] = asyncio.Queue()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._dying: set[_Child] = set()
        """Killed children not reaped yet (their slot is being refilled)."""
        self._closing = False
        self._start_lock = asyncio.Lock()

    @property
    def child_pids(self) -> list[int]:
        """PIDs of the ready children, in slot order (a slot being refilled is left out)."""
        return [s.child.pid for s in self._slots if s.child is not None]

    # -- children ---------------------------------------------------------------------------
    async def _spawn(self, index: int) -> _Child:
        """Start one child and wait until it has imported the app."""
        requests_r, requests_w = self._mp.Pipe(duplex=False)
        replies_r, replies_w = self._mp.Pipe(duplex=False)
        process = self._mp.Process(  # type: ignore[attr-defined]
            target=child_main, args=(requests_r, replies_w, self.app_spec),
            name=f"qtasks-child-{index}",
        )
        try:
            process.start()
        except BaseException:
            requests_w.close()
            replies_r.close()
            raise
        finally:
            # The child holds its own copies; ours would hide its death (no end of file).
            requests_r.close()
            replies_w.close()
        child = _Child(process, requests_w, replies_r)
        try:
            frame = await child.reply(self.start_timeout_s, "start-up (loading the app)")
            reply = decode_reply(frame)
        except TimeLimitExceeded:
            child.kill()
            await child.reap()
            child.close("start-up")
            raise ConfigError(f"a child process did not load the app {self.app_spec!r} within "
                              f"{self.start_timeout_s:g} s") from None
        except BaseException:
            child.kill()
            await child.reap()
            child.close("start-up")
            raise
        if reply[0] != "ready":
            await child.reap()  # it exits by itself after reporting
            child.kill()
            child.close("start-up")
            _, type_name, message, tb, _ = reply
            log.error("child_app_import_failed", app_spec=self.app_spec, traceback=tb)
            raise ConfigError(f"a child process could not load the app {self.app_spec!r}: "
                              f"{type_name}: {message}")
        return child

    def _replace(self, slot: _Slot, reason: str) -> None:
        """Kill the slot's child and refill the slot in the background."""
        old, slot.child = slot.child, None
        if old is not None:
            old.kill()
            self._dying.add(old)
        task = asyncio.get_running_loop().create_task(self._refill(slot, old, reason))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _refill(self, slot: _Slot, old: _Child | None, reason: str) -> None:
        try:
            if old is not None:
                try:
                    exitcode = await old.reap()
                finally:
                    old.close()  # even when shutdown cancels us: its pipes must not leak
                    self._dying.discard(old)
                log.warning("child_replaced", slot=slot.index, pid=old.pid, exitcode=exitcode,
                            reason=reason)
            if not self._closing:
                slot.child = await self._spawn(slot.index)
        except Exception as e:  # the next run() on this slot tries again
            log.error("child_start_failed", slot=slot.index, error=f"{type(e).__name__}: {e}")
        finally:
            self._free.put_nowait(slot)

    # -- Executor ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every child and wait until each has imported the app (the warm-up)."""
        async with self._start_lock:
            await self._start()

    async def _start(self) -> None:
        if self._slots:
            return
        if self._closing:
            raise QTasksError("the process executor is shut down")
        slots = [_Slot(i) for i in range(self.concurrency)]
        results = await asyncio.gather(*(self._spawn(s.index) for s in slots),
                                       return_exceptions=True)
        children = [r for r in results if isinstance(r, _Child)]
        errors = [r for r in results if not isinstance(r, _Child)]
        if errors:
            for c in children:
                c.kill()
            for c in children:
                await c.reap()
                c.close("start-up")
            raise errors[0]
        for slot, child in zip(slots, children, strict=True):
            slot.child = child
            self._free.put_nowait(slot)
        self._slots = slots
        log.info("process_pool_started", children=self.child_pids, start_method=self.start_method)

    async def run(self, call: TaskCall, time_limit_s: float | None = None) -> Any:
        self.resolve(call.task_name)  # an unknown name fails here, without a round trip
        if not self._slots:
            await self.start()
        try:
            request = dumps((call.task_name, call.args, call.kwargs,
                             msgspec.structs.asdict(call.ctx)))
        except Exception as e:  # any pickling failure
            raise TaskError("PicklingError", f"arguments of {call.task_name} cannot be sent to a "
                            f"child process: {type(e).__name__}: {safe_str(e)}") from e
        attempt = 1
        while True:
            try:
                frame = await self._run_in_a_child(request, time_limit_s)
            except _DiedBeforeStart:
                # The task never started (the child was dead or dying while idle): it is
                # safe to hand it to another child, a few times.
                if attempt >= _HANDOVER_ATTEMPTS:
                    raise
                attempt += 1
                continue
            return value_of(decode_reply(frame))

    async def _run_in_a_child(self, request: bytes, time_limit_s: float | None) -> bytes:
        """Take a free child, run the request there, and return its reply frame."""
        slot = await self._free.get()
        handed_off = False
        self._busy += 1
        self._idle.clear()
        try:
            if self._closing:
                raise QTasksError("the process executor is shut down")
            child = slot.child
            if child is None or child.exited:
                # Died while idle, or a refill failed: start one now (its errors are ours).
                slot.child = None
                if child is not None:
                    await child.reap()
                    child.close()
                    log.warning("child_replaced", slot=slot.index, pid=child.pid,
                                exitcode=child.exitcode(), reason="died while idle")
                slot.child = child = await self._spawn(slot.index)
            try:
                frame = await child.call(request, time_limit_s)
            except TimeLimitExceeded:
                handed_off = True
                self._replace(slot, f"time limit of {time_limit_s:g} s")
                raise
            except ChildProcessDied as e:
                handed_off = True
                self._replace(slot, e.message)
                raise
            except asyncio.CancelledError:
                handed_off = True
                self._replace(slot, "call cancelled")
                raise
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()
            if not handed_off:
                self._free.put_nowait(slot)
        return frame

    async def shutdown(self, wait: bool = True) -> None:
        """Stop the children. With ``wait``, running calls finish first and children exit on
        their own (killed after ``stop_timeout_s``); without, they are killed at once and
        pending :meth:`run` calls raise ``ChildProcessDied``."""
        self._closing = True
        if wait:
            await self._idle.wait()
        # Reap the children being replaced before stopping their replacements, so no zombie
        # is left behind.
        await asyncio.gather(*(c.reap() for c in list(self._dying)))
        for t in list(self._replacing):
            t.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        children = [s.child for s in self._slots if s.child is not None]
        if wait:
            for c in children:
                c.stop()
            await asyncio.gather(*(c.reap(self.stop_timeout_s) for c in children))
        for c in children:
            c.kill()
        await asyncio.gather(*(c.reap() for c in children))
        for c in children:
            c.close("the task (the executor shut down)")
        for s in self._slots:
            s.child = None
        self._slots = []
