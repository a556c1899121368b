"""The quantum service end to end: API and worker subprocesses, real NATS and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qtasks.servers import free_port
from tests.support import ROOT, WorkerProcess, isolated_env, wait_for

pytestmark = pytest.mark.integration

BELL = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; cx q[0],q[1]; '
    "c[0] = measure q[0]; c[1] = measure q[1];"
)
GHZ5 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[5] q;
bit[5] c;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
cx q[3], q[4];
c = measure q;
"""


class Api:
    """uvicorn app.api:api as a subprocess on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = f"/tmp/qtasks-api-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "app.api:api",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env={**os.environ, **env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        wait_for(self._up, 60, "API start")

    def _up(self) -> bool:
        assert self.proc.poll() is None, Path(self.log_path).read_text()
        try:
            self.client.get("/docs")
            return True
        except httpx.TransportError:
            return False

    def submit(self, **body: Any) -> httpx.Response:
        return self.client.post("/tasks", json=body)

    def wait_done(self, task_id: str, timeout_s: float = 60) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def done() -> bool:
            nonlocal out
            out = self.client.get(f"/tasks/{task_id}").json()
            return out.get("state") in ("SUCCESS", "FAILURE", "REVOKED")

        wait_for(done, timeout_s, f"task {task_id}", interval_s=0.1)
        return out

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(20)
        os.unlink(self.log_path)


@pytest.fixture(scope="module")
def service() -> Iterator[Api]:
    env = isolated_env(QTASKS_WORKER_MAX_CONCURRENT_TASKS=2)
    worker = WorkerProcess(env, "app.tasks:app", "--executor", "process").start()
    api = Api(env)
    yield api
    api.close()
    worker.stop()


def test_bell_circuit_gives_only_00_and_11_in_balance(service: Api) -> None:
    r = service.submit(quantum_circuit=BELL, shots=1024)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "PENDING" and body["task_id"]
    out = service.wait_done(body["task_id"])
    assert out["state"] == "SUCCESS", out
    counts = out["result"]["counts"]
    assert set(counts) <= {"00", "11"}
    assert sum(counts.values()) == 1024
    assert all(400 <= n <= 624 for n in counts.values()), counts
    assert out["result"]["num_qubits"] == 2 and out["result"]["shots"] == 1024
    assert out["result"]["method"]
    t = out["timings"]
    assert t["submitted_at"] <= t["started_at"] <= t["finished_at"]
    assert t["simulation_s"] is not None and out["worker"]


def test_same_seed_gives_identical_counts(service: Api) -> None:
    ids = [
        service.submit(quantum_circuit=BELL, shots=1000, seed=7).json()["task_id"] for _ in range(2)
    ]
    a, b = (service.wait_done(i)["result"]["counts"] for i in ids)
    assert a == b


def test_ghz_5_gives_only_all_zeros_and_all_ones(service: Api) -> None:
    out = service.wait_done(service.submit(quantum_circuit=GHZ5, shots=500).json()["task_id"])
    assert set(out["result"]["counts"]) <= {"00000", "11111"}
    assert sum(out["result"]["counts"].values()) == 500


def test_unknown_task_id_is_404_and_malformed_id_too(service: Api) -> None:
    r = service.client.get("/tasks/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"
    assert service.client.get("/tasks/..%2F..%2Fetc").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"quantum_circuit": "OPENQASM 3.0; qubit[2] q; h q[0]", "shots": 10}, 400, "line 1"),
        ({"quantum_circuit": BELL, "shots": 0}, 422, "shots"),
        ({"quantum_circuit": BELL, "shots": 10**9}, 422, "shots"),
        ({"quantum_circuit": BELL.replace("qubit[2]", "qubit[60]"), "shots": 10}, 422, "60"),
        ({"shots": 10}, 422, "quantum_circuit"),
        (
            {"quantum_circuit": 'OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; h q[0];'},
            400,
            "measure",
        ),
    ],
    ids=[
        "syntax-error",
        "zero-shots",
        "billion-shots",
        "60-qubits",
        "missing-field",
        "no-measurement",
    ],
)
def test_bad_requests_get_a_4xx_with_a_clear_message(
    service: Api, body: dict[str, Any], status: int, words: str
) -> None:
    r = service.submit(**body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"], err


def test_invalid_json_and_oversized_body_and_wrong_method(service: Api) -> None:
    r = service.client.post(
        "/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "error" in r.json()
    r = service.client.post("/tasks", json={"quantum_circuit": "x" * 2_000_000})
    assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLarge"
    r = service.client.put("/tasks")
    assert r.status_code == 405 and "error" in r.json()


def test_service_keeps_serving_after_bad_input(service: Api) -> None:
    service.submit(quantum_circuit="\x00\xff" * 100, shots=10)
    out = service.wait_done(service.submit(quantum_circuit=BELL, shots=64).json()["task_id"])
    assert out["state"] == "SUCCESS"


def test_run_circuit_delay_from_python(service: Api) -> None:
    # The same app the API uses, from a plain Python caller in another process.
    code = (
        "from app.tasks import run_circuit\n"
        f"r = run_circuit.delay({BELL!r}, 256, 3)\n"
        "out = r.get(timeout=60)\n"
        "print(sum(out['counts'].values()), sorted(out['counts']))\n"
    )
    env = {**os.environ, **service.env}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    total, keys = res.stdout.split(" ", 1)
    assert total == "256" and set(json.loads(keys.replace("'", '"'))) <= {"00", "11"}


def test_health_is_200_with_both_servers(service: Api) -> None:
    r = service.client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "nats": "ok", "redis": "ok"}


def test_health_is_503_naming_redis_when_redis_is_unreachable() -> None:
    env = isolated_env(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    api = Api(env)
    try:
        r = api.client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["nats"] == "ok" and body["redis"].startswith("unreachable")
    finally:
        api.close()


def test_with_api_keys_a_task_is_visible_only_to_the_key_that_sent_it(service: Api) -> None:
    from app.auth import hash_key

    hashes = f"{hash_key('alice-key')},{hash_key('bob-key')}"
    api = Api({**service.env, "QTASKS_APP_API_KEY_HASHES": hashes})
    alice = {"Authorization": "Bearer alice-key"}
    bob = {"Authorization": "Bearer bob-key"}
    try:
        assert api.client.post("/tasks", json={"quantum_circuit": BELL}).status_code == 401
        wrong = api.client.post(
            "/tasks", json={"quantum_circuit": BELL}, headers={"Authorization": "Bearer mallory"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "Unauthorized"
        r = api.client.post("/tasks", json={"quantum_circuit": BELL, "shots": 32}, headers=alice)
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        wait_for(
            lambda: api.client.get(f"/tasks/{task_id}", headers=alice).json()["state"] == "SUCCESS",
            60,
            "alice's task",
        )
        assert api.client.get(f"/tasks/{task_id}", headers=bob).status_code == 404
        assert api.client.get(f"/tasks/{task_id}").status_code == 401
        assert api.client.get("/health").status_code == 200
    finally:
        api.close()
