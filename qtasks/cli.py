"""The ``qtasks`` command: ``qtasks worker -A module[:app]`` and the operator commands
(``status``, ``inspect``, ``purge``, ``revoke`` in :mod:`qtasks.cli_ops`, ``dlq`` in
:mod:`qtasks.cli_dlq`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from qtasks._loop import EVENT_LOOPS, loop_factory
from qtasks.app import QTasks, load_app
from qtasks.config import load_settings
from qtasks.errors import QTasksError
from qtasks.observability import configure_logging


def _worker_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker that executes tasks",
        description="Fetch tasks from NATS JetStream, run them, store results in Redis. "
        "Flags override QTASKS_* environment variables, which override config.toml.",
    )
    p.add_argument(
        "-A",
        "--app",
        required=True,
        metavar="MODULE[:ATTR]",
        help="the module holding the QTasks app, e.g. tasks or app.tasks:app",
    )
    p.add_argument(
        "--executor",
        choices=["thread", "process", "asyncio"],
        help="where tasks run: threads (default), child processes (spawned, "
        "hard time limits), or the event loop (async def tasks)",
    )
    p.add_argument(
        "-c",
        "--concurrency",
        type=int,
        metavar="N",
        help="tasks run at once; also how many messages are fetched (default: CPU count)",
    )
    p.add_argument(
        "-Q", "--queues", metavar="A,B", help="comma-separated queues to consume (default: default)"
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running tasks may finish before they are "
        "handed back to the queue (default 30)",
    )
    p.add_argument(
        "--health-file",
        metavar="PATH",
        help="touch this file every 5 s while the worker's event loop is alive "
        "(for container health checks: stale file = stuck worker)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: off; [worker] metrics_port)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help="address for the metrics server (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    p.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        help="event loop (default auto: uvloop when installed; [worker] event_loop)",
    )
    p.add_argument("--config", metavar="PATH", help="config.toml to read (default ./config.toml)")
    _log_args(p)


def _log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    p.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a terminal; QTASKS_LOG_FORMAT)",
    )


async def _touch_forever(path: str, interval_s: float = 5.0) -> None:
    from pathlib import Path

    while True:
        await asyncio.to_thread(Path(path).touch)
        await asyncio.sleep(interval_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qtasks", description="qtasks: tasks on NATS JetStream")
    sub = parser.add_subparsers(dest="command", required=True)
    _worker_parser(sub)
    from qtasks import cli_dlq, cli_ops

    cli_ops.add_parsers(sub)
    cli_dlq.add_parsers(sub)
    return parser


def _worker_app(args: argparse.Namespace) -> QTasks:
    """The app to serve, its worker settings overridden by the flags."""
    app = load_app(args.app)
    overrides = {
        "worker": {
            "executor": args.executor,
            "max_concurrent_tasks": args.concurrency,
            "queues": args.queues.split(",") if args.queues else None,
            "shutdown_grace_s": args.shutdown_grace,
            "metrics_port": args.metrics_port,
            "metrics_host": args.metrics_host,
            "event_loop": args.loop,
        }
    }
    if args.config or any(v is not None for v in overrides["worker"].values()):
        import msgspec

        fresh = load_settings(args.config, overrides=overrides)
        # Keep the app's own broker/backend choices; flags only change worker settings.
        app.settings = msgspec.structs.replace(app.settings, worker=fresh.worker)
    return app


async def _run_worker(args: argparse.Namespace, app: QTasks) -> int:
    from qtasks.worker import Worker

    worker = Worker(app, app_spec=args.app)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            worker.stop()
        else:  # a second Ctrl-C: stop waiting for running tasks
            worker.shutdown_grace_s = 0
            worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    health = asyncio.create_task(_touch_forever(args.health_file)) if args.health_file else None
    try:
        await worker.run()
    finally:
        if health is not None:
            health.cancel()
        await app.aclose()
    return 0


async def _run_op(args: argparse.Namespace) -> int:
    from qtasks.cli_ops import ops_app

    app = ops_app(args)
    try:
        rc: int = await args.op(app, args)
        return rc
    finally:
        await app.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "worker":
            configure_logging(args.log_level, args.log_json)
            app = _worker_app(args)
            with asyncio.Runner(loop_factory=loop_factory(app.settings.worker.event_loop)) as r:
                return r.run(_run_worker(args, app))
        # Operator commands print for people (or --json); only warnings are logged.
        configure_logging("WARNING")
        return asyncio.run(_run_op(args))
    except QTasksError as e:
        print(f"qtasks: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
