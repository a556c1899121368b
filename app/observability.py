"""The API's observability: Prometheus metrics for ``GET /metrics`` and one log line per request.

:class:`RequestObservability` is a plain ASGI middleware (no per-request task or body
copy). After each HTTP request it counts it and times it by method, route *template*
(``/tasks/{task_id}``, never the raw path, so ids do not explode the series) and status, and
logs one ``request`` event carrying the task id: from the path, or bound by the handler with
``structlog.contextvars.bind_contextvars(task_id=...)`` (POST /tasks does).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qtasks.observability import configure_logging

log = structlog.get_logger("app.api")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

REQUESTS = Counter(
    "qtasks_api_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "qtasks_api_request_duration_seconds",
    "Time to answer an HTTP request, seconds, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
IN_PROGRESS = Gauge(
    "qtasks_api_requests_in_progress", "HTTP requests being answered now.", registry=REGISTRY
)
TASKS_SUBMITTED = Counter(
    "qtasks_api_tasks_submitted", "Tasks queued through POST /tasks.", registry=REGISTRY
)
TASKS_REVOKED = Counter(
    "qtasks_api_tasks_revoked", "Tasks revoked through DELETE /tasks/{task_id}.", registry=REGISTRY
)

#: Requests logged at DEBUG only (probes and scrapes every few seconds).
QUIET_ROUTES = frozenset({"/health", "/metrics"})
#: The route label of a path that matched no route (a scanner's random paths stay one series).
UNMATCHED = "<unmatched>"

_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _children(method: str, route: str, status: int) -> tuple[Any, Any]:
    key = (method, route, status)
    pair = _series.get(key)
    if pair is None:
        labels = {"method": method, "route": route, "status": str(status)}
        pair = _series[key] = (
            REQUESTS.labels(**labels),
            REQUEST_SECONDS.labels(**labels),
        )
    return pair


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestObservability:
    """Counts, times and logs every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        IN_PROGRESS.inc()
        # Each request runs in its own copy of the context: what the handler binds (task_id)
        # is visible here afterwards and gone for the next request.
        structlog.contextvars.clear_contextvars()
        try:
            await self.app(scope, receive, send_status)
        finally:
            IN_PROGRESS.dec()
            duration_s = time.perf_counter() - t0
            method = scope.get("method", "")
            route = _route(scope)
            count, latency = _children(method, route, status)
            count.inc()
            latency.observe(duration_s)
            task_id = (scope.get("path_params") or {}).get("task_id")
            level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
            fields: dict[str, Any] = {
                "method": method,
                "route": route,
                "status": status,
                "duration_s": round(duration_s, 6),
            }
            if task_id is not None and "task_id" not in structlog.contextvars.get_contextvars():
                fields["task_id"] = task_id
            log.log(level, "request", **fields)
            structlog.contextvars.clear_contextvars()


def metrics_response() -> Response:
    """The Prometheus text exposition of the API process's metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class _DropDuplicateTraceback(logging.Filter):
    """uvicorn logs "Exception in ASGI application" with the traceback of an error the API's
    500 handler has already logged (Starlette re-raises it after answering): drop that copy,
    so each error's traceback is logged once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().strip() != "Exception in ASGI application"


def setup_logging() -> None:
    """JSON lines (or console on a terminal; ``QTASKS_LOG_FORMAT``) for the API process, with
    uvicorn's own loggers rendered the same way and its access log replaced by ours."""
    configure_logging()
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDuplicateTraceback) for f in error_log.filters):
        error_log.addFilter(_DropDuplicateTraceback())
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True  # RequestObservability logs each request, with its task id
