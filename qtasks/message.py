"""Wire formats: the task message and the stored result, as msgspec structs.

Everything that crosses the network is msgpack (or JSON for humans); never pickle.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Any

import msgspec

from qtasks.errors import DecodeError

SCHEMA_VERSION = 1


class State(enum.StrEnum):
    """Task states, with Celery's names."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


READY_STATES = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


def new_task_id() -> str:
    """A random, unguessable task id (UUID4, 122 random bits)."""
    return str(uuid.uuid4())


def is_valid_task_id(task_id: str) -> bool:
    """True when ``task_id`` is a plausible id: 1-128 chars of [A-Za-z0-9._:-]."""
    if not 0 < len(task_id) <= 128:
        return False
    return all(c.isascii() and (c.isalnum() or c in "._:-") for c in task_id)


class TaskMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One request to run a task; the bytes of a broker message."""

    id: str
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str = "default"
    eta: float | None = None
    """Earliest time to run, Unix seconds (from ``countdown``/``eta``)."""
    expires: float | None = None
    """After this Unix time the task is not run (state REVOKED, reason expired)."""
    headers: dict[str, str] = {}
    created_at: float = 0.0
    v: int = SCHEMA_VERSION


class ErrorInfo(msgspec.Struct, frozen=True):
    """A remote exception, reduced to text."""

    type: str
    message: str
    traceback: str | None = None


class TaskResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the backend stores for a task: its state, and its outcome when done."""

    id: str
    state: State
    task: str | None = None
    result: Any = None
    error: ErrorInfo | None = None
    retries: int = 0
    """How many times the task asked to be run again (RETRY transitions)."""
    deliveries: int = 0
    """How many times the broker delivered the message (crash redeliveries included)."""
    queue: str | None = None
    sent_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    """``hostname:pid`` of the worker that last touched the task."""
    executor: str | None = None
    meta: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


_msg_encoder = msgspec.msgpack.Encoder()
_msg_decoder = msgspec.msgpack.Decoder(TaskMessage)
_res_decoder = msgspec.msgpack.Decoder(TaskResult)


def encode_message(msg: TaskMessage) -> bytes:
    """Encode a task message as msgpack.

    Raises ``TypeError`` (wrapped by callers) when args are not msgpack-serialisable.
    """
    return _msg_encoder.encode(msg)


def decode_message(data: bytes) -> TaskMessage:
    """Decode a task message; anything malformed raises ``DecodeError``."""
    try:
        msg = _msg_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DecodeError(f"not a task message: {e}") from e
    if msg.v != SCHEMA_VERSION:
        raise DecodeError(
            f"unsupported message schema version {msg.v} (this worker reads {SCHEMA_VERSION})"
        )
    return msg


def encode_result(res: TaskResult) -> bytes:
    return _msg_encoder.encode(res)


def decode_result(data: bytes) -> TaskResult:
    try:
        return _res_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DecodeError(f"not a task result: {e}") from e


def now_s() -> float:
    """Wall-clock Unix time in seconds (timestamps that cross machines)."""
    return time.time()
