"""QTasks: settings, the task registry, and the broker and backend connections."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from qtasks.backends.base import ResultBackend
from qtasks.broker.base import Broker
from qtasks.config import Settings, load_settings
from qtasks.errors import ConfigError, MessageTooLarge, QTasksError, TaskNotRegistered
from qtasks.message import (
    State,
    TaskMessage,
    TaskResult,
    encode_message,
    is_valid_task_id,
    new_task_id,
    now_s,
)

if TYPE_CHECKING:
    from qtasks.result import AsyncResult
    from qtasks.task import Task

P = ParamSpec("P")
R = TypeVar("R")

_apps: weakref.WeakSet[QTasks] = weakref.WeakSet()


class _Clients:
    """A broker and a backend connected on one event loop."""

    def __init__(self, broker: Broker, backend: ResultBackend) -> None:
        self.broker = broker
        self.backend = backend
        self.ready = asyncio.Event()


class QTasks:
    """A task application: ``app = QTasks("name")``, then ``@app.task``.

    ``broker`` and ``backend`` are URLs (``nats://``, ``redis://``/``rediss://``,
    ``memory://``) or instances; by default they come from the settings
    (config.toml, then ``QTASKS_NATS_URL`` / ``QTASKS_REDIS_URL``).
    URL-made clients are created per event loop (nats-py and redis.asyncio bind to one);
    an instance you pass is used on whichever loop first connects it.
    """

    def __init__(
        self,
        name: str = "qtasks",
        *,
        broker: str | Broker | None = None,
        backend: str | ResultBackend | None = None,
        settings: Settings | None = None,
        eager: bool = False,
    ) -> None:
        self.name = name
        self.settings = settings or load_settings()
        self.eager = eager
        """Run tasks in place on ``delay()`` (tests, notebooks); no broker is used."""
        self._broker_spec: str | Broker = broker or self.settings.nats.url
        self._backend_spec: str | ResultBackend = backend or self.settings.redis.url
        self._shared: dict[str, Any] = {}
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: dict[str, Task[Any, Any]] = {}
        _apps.add(self)

    def __repr__(self) -> str:
        return f"<QTasks {self.name!r} tasks={len(self._tasks)}>"

    # -- registry --------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str = "default",
        max_retries: int = 0,
        retry_backoff: float | bool = True,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: Sequence[type[BaseException]] = (),
        time_limit: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # mypy misreads the ParamSpec-only return of overload 2
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        max_retries: int = 0,
        retry_backoff: float | bool = True,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: Sequence[type[BaseException]] = (),
        time_limit: float | None = None,
    ) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options.

        ``max_retries``: extra runs after a failure (any exception, or only
        ``autoretry_for`` types when given; ``raise task.retry()`` always counts).
        ``retry_backoff``: True for 1 s, or the base in seconds, doubled per retry up to
        ``retry_backoff_max``, with jitter. ``time_limit``: seconds (hard limit in the
        process executor; thread/asyncio mark FAILURE and abandon the call).
        """
        from qtasks.task import Task

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name in self._tasks and self._tasks[task_name].fn is not f:
                existing = self._tasks[task_name].fn
                # Re-importing the same module (e.g. __main__ vs module name) is harmless.
                if (existing.__module__, existing.__qualname__) != (f.__module__, f.__qualname__):
                    raise ConfigError(f"task name {task_name!r} is already registered")
            t: Task[Any, Any] = Task(
                self,
                f,
                name=task_name,
                queue=queue,
                max_retries=max_retries,
                retry_backoff=retry_backoff,
                retry_backoff_max=retry_backoff_max,
                retry_jitter=retry_jitter,
                autoretry_for=tuple(autoretry_for),
                time_limit_s=time_limit,
            )
            self._tasks[task_name] = t
            return t

        return register(fn) if fn is not None else register

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """Registered tasks by name."""
        return self._tasks

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotRegistered(
                f"no task named {name!r} is registered in {self.name}"
            ) from None

    def resolve(self, name: str) -> Callable[..., Any]:
        """The plain function of task ``name`` (what executors call)."""
        return self.get_task(name).fn

    # -- connections -------------------------------------------------------------------------
    def make_broker(self) -> Broker:
        """A new, unconnected broker for the configured spec (the shared one for memory://)."""
        spec = self._broker_spec
        if isinstance(spec, Broker):
            return spec
        if spec.startswith("memory://"):
            from qtasks.broker.memory import MemoryBroker

            shared = self._shared.setdefault("broker", MemoryBroker())
            assert isinstance(shared, MemoryBroker)
            return shared
        from qtasks.broker.jetstream import JetStreamBroker

        return JetStreamBroker(spec, self.settings.nats)

    def make_backend(self) -> ResultBackend:
        """A new, unconnected backend for the configured spec (the shared one for memory://)."""
        spec = self._backend_spec
        if isinstance(spec, ResultBackend):
            return spec
        if spec.startswith("memory://"):
            from qtasks.backends.memory import MemoryBackend

            shared = self._shared.setdefault(
                "backend", MemoryBackend(result_ttl_s=self.settings.redis.result_ttl_s)
            )
            assert isinstance(shared, MemoryBackend)
            return shared
        from qtasks.backends.redis import RedisBackend

        r = self.settings.redis
        return RedisBackend(spec, key_prefix=r.key_prefix, result_ttl_s=r.result_ttl_s)

    async def clients(self) -> _Clients:
        """Broker and backend connected on the running loop (connecting on first use)."""
        loop = asyncio.get_running_loop()
        c = self._clients.get(loop)
        if c is None:
            c = _Clients(self.make_broker(), self.make_backend())
            self._clients[loop] = c
            try:
                await asyncio.gather(c.broker.connect(), c.backend.connect())
            except BaseException:
                del self._clients[loop]
                await asyncio.gather(c.broker.close(), c.backend.close(), return_exceptions=True)
                c.ready.set()
                raise
            c.ready.set()
        else:
            await c.ready.wait()
        return c

    async def broker(self) -> Broker:
        return (await self.clients()).broker

    async def backend(self) -> ResultBackend:
        return (await self.clients()).backend

    async def aclose(self) -> None:
        """Close this loop's connections."""
        c = self._clients.pop(asyncio.get_running_loop(), None)
        if c is not None:
            await asyncio.gather(c.broker.close(), c.backend.close(), return_exceptions=True)

    def close(self) -> None:
        """Close the sync bridge's connections."""
        from qtasks._loop import run_sync

        run_sync(self._close_on_bridge())

    async def _close_on_bridge(self) -> None:
        await self.aclose()

    # -- sending ---------------------------------------------------------------------------------
    def build_message(
        self,
        task_name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: float | None = None,
        expires: float | None = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskMessage:
        """A message for ``task_name``.

        ``countdown`` and ``expires`` are seconds from now; ``eta`` is a Unix time.
        """
        if task_id is None:
            task_id = new_task_id()
        elif not is_valid_task_id(task_id):
            raise QTasksError(f"invalid task id {task_id!r}: 1-128 characters of [A-Za-z0-9._:-]")
        now = now_s()
        if countdown is not None:
            eta = now + countdown
        if queue is None:
            t = self._tasks.get(task_name)
            queue = t.queue if t is not None else "default"
        return TaskMessage(
            id=task_id,
            task=task_name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            queue=queue,
            eta=eta,
            expires=None if expires is None else now + expires,
            headers=dict(headers or {}),
            created_at=now,
        )

    def _encode(self, msg: TaskMessage, broker: Broker | None) -> bytes:
        try:
            data = encode_message(msg)
        except (TypeError, ValueError, OverflowError) as e:
            raise QTasksError(f"arguments of {msg.task} cannot be sent (msgpack only): {e}") from e
        if broker is not None and len(data) > broker.max_payload_bytes:
            raise MessageTooLarge(len(data), broker.max_payload_bytes)
        return data

    async def asend(self, msg: TaskMessage) -> AsyncResult[Any]:
        """Publish a built message and return its result handle."""
        from qtasks.result import AsyncResult

        if self.eager:
            await self._run_eagerly(msg)
            return AsyncResult(msg.id, self)
        c = await self.clients()
        data = self._encode(msg, c.broker)
        await c.broker.publish(msg.queue, data, msg_id=msg.id)
        return AsyncResult(msg.id, self, sent_at=time.monotonic())

    async def asend_many(self, msgs: Sequence[TaskMessage]) -> list[AsyncResult[Any]]:
        """Publish many messages with pipelined publishes (much faster than one by one)."""
        from qtasks.result import AsyncResult

        if self.eager:
            for m in msgs:
                await self._run_eagerly(m)
        else:
            c = await self.clients()
            items = [(m.queue, self._encode(m, c.broker), m.id) for m in msgs]
            await c.broker.publish_many(items)
        sent_at = time.monotonic()
        return [AsyncResult(m.id, self, sent_at=sent_at) for m in msgs]

    def send_task(
        self,
        task_name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name, without importing its code (sync)."""
        from qtasks._loop import run_sync

        return run_sync(self.asend(self.build_message(task_name, args, kwargs, **options)))

    async def asend_task(
        self,
        task_name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name, without importing its code (async)."""
        return await self.asend(self.build_message(task_name, args, kwargs, **options))

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        from qtasks.result import AsyncResult

        return AsyncResult(task_id, self)

    async def _run_eagerly(self, msg: TaskMessage) -> None:
        """Eager mode: run in place and store the outcome like a worker would."""
        from qtasks.message import ErrorInfo

        backend = await self.backend()
        task = self.get_task(msg.task)
        started = now_s()
        try:
            value = task.fn(*msg.args, **msg.kwargs)
            if inspect.isawaitable(value):
                value = await value
            res = TaskResult(
                id=msg.id,
                state=State.SUCCESS,
                task=msg.task,
                result=value,
                sent_at=msg.created_at,
                started_at=started,
                finished_at=now_s(),
                executor="eager",
            )
        except Exception as e:
            import traceback

            res = TaskResult(
                id=msg.id,
                state=State.FAILURE,
                task=msg.task,
                error=ErrorInfo(type(e).__name__, str(e), traceback.format_exc()),
                sent_at=msg.created_at,
                started_at=started,
                finished_at=now_s(),
                executor="eager",
            )
        await backend.set(res)


async def _close_all_on_loop(loop: asyncio.AbstractEventLoop) -> None:
    for app in list(_apps):
        await app.aclose()


def load_app(spec: str) -> QTasks:
    """Import ``module[:attribute]`` and return the QTasks app it names.

    Without ``:attribute``, the module's ``app`` attribute, else its only QTasks instance.
    """
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import app module {module_name!r}: {e}") from e
    if attr:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        if not isinstance(obj, QTasks):
            raise ConfigError(f"{spec!r} is not a QTasks app")
        return obj
    found = getattr(module, "app", None)
    if isinstance(found, QTasks):
        return found
    apps = [v for v in vars(module).values() if isinstance(v, QTasks)]
    if len(apps) != 1:
        raise ConfigError(
            f"module {module_name!r} has {len(apps)} QTasks apps; name one: {spec}:attr"
        )
    return apps[0]
