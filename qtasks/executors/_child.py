"""What runs inside a process-executor child, and the wire format both sides share.

Parent -> child: one pickled request per call, ``(task_name, args, kwargs, ctx_fields)``,
through a :class:`multiprocessing.connection.Connection` (``None`` asks the child to stop).
Child -> parent: frames of an 8-byte big-endian length and a pickled reply, written on a
plain pipe so the parent can read them without blocking its event loop. Replies:

- ``("ready", pid)`` once the app is imported (the warm-up handshake),
- an empty frame when a call is received, before it starts,
- ``("ok", value)``,
- ``("err", type_name, message, traceback_text, rebuild)``, where ``rebuild`` says how the
  parent may recreate the exception as its own type (``None``: as a ``TaskError``).

Pickle is fine here: the bytes only travel between the worker and its own children on
local pipes, never over the network.
"""

from __future__ import annotations

import builtins
import contextlib
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from qtasks.context import TaskContext
from qtasks.errors import Retry, TaskError
from qtasks.executors._call import call_in_context

HEADER = struct.Struct("!Q")


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def write_frame(fd: int, payload: bytes) -> None:
    """Write one length-prefixed frame on a blocking fd."""
    for part in (HEADER.pack(len(payload)), payload):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the error itself
        return f"<unprintable {type(exc).__name__}>"


def error_reply(exc: BaseException) -> bytes:
    """The reply for an exception, with what the parent needs to raise it again."""
    type_name = type(exc).__name__
    message = safe_str(exc)
    tb = "".join(traceback.format_exception(exc))
    rebuild: tuple[Any, ...] | None = None
    if isinstance(exc, Retry):
        # The worker reads countdown_s from it, so it must come back as a Retry.
        rebuild = ("retry", exc.countdown_s, exc.reason)
    elif isinstance(exc, TaskError):
        # A failure the task passed on (e.g. from a result it waited for): keep its details,
        # as the in-process executors do.
        rebuild = ("task_error", exc.exc_type, exc.message, exc.traceback)
    elif isinstance(exc, Exception) and getattr(builtins, type_name, None) is type(exc):
        args = exc.args
        if isinstance(exc, OSError) and exc.filename is not None and len(args) == 2:
            # The file name is not in args, but it is in the message.
            args = (*args, exc.filename, None, exc.filename2)
        rebuild = ("builtin", args)
    try:
        return dumps(("err", type_name, message, tb, rebuild))
    except Exception:  # args that do not pickle: name and message still go
        return dumps(("err", type_name, message, tb, None))


def serve_one(app: Any, request: tuple[str, list[Any], dict[str, Any], dict[str, Any]]) -> bytes:
    """Run one request in this process and return the reply frame's payload."""
    task_name, args, kwargs, ctx_fields = request
    try:
        fn = app.resolve(task_name)
        value = call_in_context(fn, args, kwargs, TaskContext(**ctx_fields))
    except BaseException as e:  # sys.exit() in a task is a failure, not a stop
        return error_reply(e)
    try:
        return dumps(("ok", value))
    except Exception as e:  # any pickling failure
        message = (
            f"result of type {type(value).__name__} cannot be sent back from the child "
            f"process: {type(e).__name__}: {safe_str(e)}"
        )
        return dumps(("err", "PicklingError", message, "".join(traceback.format_exception(e)),
                      None))


# -- in the parent -------------------------------------------------------------------------


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of an exception re-raised from a child: the child's traceback."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def rebuild_exception(
    type_name: str, message: str, tb: str, rebuild: tuple[Any, ...] | None
) -> Exception:
    """The exception to raise in the worker for a child's error reply.

    Builtin exception types come back as themselves (same args, same message) and
    ``Retry`` as a ``Retry``; anything else as ``TaskError(type_name, message, tb)``, as
    user classes may not exist or unpickle in the worker.
    """
    kind, *data = rebuild or (None,)
    exc: Exception | None = None
    if kind == "task_error":
        return TaskError(data[0], data[1], data[2] or tb)
    if kind == "retry":
        exc = Retry(countdown_s=data[0], reason=data[1])
    elif kind == "builtin":
        cls: Any = getattr(builtins, type_name, None)
        candidate: Any = None
        if isinstance(cls, type) and issubclass(cls, Exception):
            with contextlib.suppress(Exception):  # then it becomes a TaskError
                candidate = cls(*data[0])
        if isinstance(candidate, Exception) and safe_str(candidate) == message:
            exc = candidate
    if exc is None:
        return TaskError(type_name, message, tb)
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def decode_reply(frame: bytes) -> tuple[Any, ...]:
    try:
        reply = pickle.loads(frame)
    except Exception as e:  # e.g. a result class the worker cannot import
        raise TaskError(type(e).__name__,
                        f"the reply of the child process cannot be unpickled: {safe_str(e)}") from e
    assert isinstance(reply, tuple)
    return reply


def value_of(reply: tuple[Any, ...]) -> Any:
    if reply[0] == "ok":
        return reply[1]
    _, type_name, message, tb, rebuild = reply
    raise rebuild_exception(type_name, message, tb, rebuild)


# -- in the child --------------------------------------------------------------------------


def _exit_with_parent() -> None:
    """Exit when the parent dies, even in the middle of a long task (no orphans)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(70)

    threading.Thread(target=watch, name="qtasks-parent-watch", daemon=True).start()


def child_main(requests: Connection, replies: Connection, app_spec: str) -> None:
    """A child's entry point: import the app once, say ready, then serve calls until told to
    stop (or the parent goes away)."""
    # Ctrl-C reaches the whole process group; the worker decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    out_fd = replies.fileno()
    try:
        from qtasks.app import load_app  # here, not at the top: executors do not import the app

        app = load_app(app_spec)
    except BaseException as e:  # reported to the parent's start()
        write_frame(out_fd, error_reply(e))
        return
    write_frame(out_fd, dumps(("ready", os.getpid())))
    while True:
        try:
            request = pickle.loads(requests.recv_bytes())
        except EOFError:
            return
        if request is None:
            return
        # An empty frame first: if this child dies before it, the parent knows the task did
        # not start and may give it to another child.
        write_frame(out_fd, b"")
        write_frame(out_fd, serve_one(app, request))
