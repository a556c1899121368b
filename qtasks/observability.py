"""Logging (structlog) set-up shared by the worker, the CLI, the API and applications.

JSON lines in production (stderr is not a terminal: a container, systemd, a file), a
readable console when attached to a terminal; ``QTASKS_LOG_FORMAT=json|console`` or the
``json`` argument override the guess, ``QTASKS_LOG_LEVEL`` sets the level. Standard-library
loggers (uvicorn, asyncio, nats) are rendered the same way, so one process writes one format.

Prometheus metrics of a worker live in :mod:`qtasks.metrics`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import msgspec
import structlog

#: Marks the root handler this module installed, so a second call replaces it.
_HANDLER_FLAG = "_qtasks_handler"


class _NamedPrintLogger(structlog.PrintLogger):
    """structlog's fast PrintLogger, knowing the name given to ``get_logger(name)`` (so
    ``add_logger_name`` can put it on each event as ``logger``)."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


def _logger_factory(*args: object) -> _NamedPrintLogger:
    return _NamedPrintLogger(str(args[0]) if args else "")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a redirect, pytest's
    capture), not to the stream of the moment it was configured."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _json_from_env() -> bool | None:
    fmt = os.environ.get("QTASKS_LOG_FORMAT", "").strip().lower()
    if fmt in ("json", "1", "true"):
        return True
    if fmt in ("console", "text", "0", "false"):
        return False
    return None


def _json_dumps(event: Any, **_: Any) -> str:
    # msgspec: an eighth of json.dumps's time per line; what it cannot encode becomes str().
    return msgspec.json.encode(event, enc_hook=str).decode()


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog and the standard library's root logger.

    ``level``: DEBUG, INFO, WARNING or ERROR (default ``$QTASKS_LOG_LEVEL`` or INFO).
    ``json``: JSON lines (True), console (False), or None: ``$QTASKS_LOG_FORMAT``, else
    JSON unless stderr is a terminal. Exceptions are rendered once, with the event that
    carries them (``exception`` field in JSON).
    """
    level = level or os.environ.get("QTASKS_LOG_LEVEL") or "INFO"
    tty = sys.stderr.isatty()
    if json is None:
        json = _json_from_env()
    if json is None:
        json = not tty
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if json:
        # The console renderer formats exc_info itself (prettily); JSON needs it as text.
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
