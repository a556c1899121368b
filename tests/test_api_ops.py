"""The service's operations surface: GET /metrics scraped during a real run (API and worker
subprocesses, real NATS and Redis), DELETE /tasks/{task_id}, the task metadata in
GET /tasks/{task_id}, and one JSON log line per request carrying the task id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from fastapi.testclient import TestClient

import app.api as api_module
from app.auth import KeyRing, hash_key
from qtasks.servers import free_port
from tests.support import Stack, log_events, wait_for
from tests.test_integration import BELL, Api
from tests.test_ops_integration import sample, scrape

pytestmark = pytest.mark.integration


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


def api_samples(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }



def test_api_and_worker_metrics_count_a_real_run_and_revoke_stops_a_queued_task(
    stack: Stack,
) -> None:
    api = Api(stack.env)
    try:
        before = api_samples(api)
        # No worker yet: the first task waits in the queue, and is revoked there.
        revoked = api.submit(quantum_circuit=BELL, shots=100).json()["task_id"]
        r = api.client.delete(f"/tasks/{revoked}")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "REVOKED" and r.json()["error"]["type"] == "TaskRevoked"
        assert api.client.delete(f"/tasks/{revoked}").status_code == 200  # idempotent
        assert api.client.delete("/tasks/00000000-0000-4000-8000-000000000000").status_code == 404

        ran = [api.submit(quantum_circuit=BELL, shots=100).json()["task_id"] for _ in range(3)]
        port = free_port()
        worker = stack.worker(
            "--executor", "thread", "--concurrency", "2", "--metrics-port", str(port),
            app_spec="app.tasks:app",
        )
        outs = [api.wait_done(t) for t in ran]
        assert [o["state"] for o in outs] == ["SUCCESS"] * 3
        out = outs[0]
        assert out["executor"] == "thread" and out["attempts"] == 1 and out["retries"] == 0
        assert out["worker"] and out["result"]["method"]
        assert out["timings"]["simulation_s"] is not None and out["timings"]["queued_s"] >= 0

        finished = api.client.delete(f"/tasks/{ran[0]}")
        assert finished.status_code == 409
        assert finished.json()["error"]["type"] == "AlreadyFinished"
        assert api.client.get(f"/tasks/{ran[0]}").json()["state"] == "SUCCESS"
        assert api.client.post("/tasks", json={"quantum_circuit": "nope"}).status_code == 400

        after = api_samples(api)

        def delta(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        assert delta("qtasks_api_tasks_submitted_total") == 4
        assert delta("qtasks_api_tasks_revoked_total") == 1
        assert delta("qtasks_api_requests_total", method="POST", route="/tasks",
                     status="202") == 4
        assert delta("qtasks_api_requests_total", method="POST", route="/tasks",
                     status="400") == 1
        assert delta("qtasks_api_requests_total", method="DELETE", route="/tasks/{task_id}",
                     status="200") == 2
        assert delta("qtasks_api_requests_total", method="DELETE", route="/tasks/{task_id}",
                     status="404") == 1
        assert delta("qtasks_api_requests_total", method="DELETE", route="/tasks/{task_id}",
                     status="409") == 1
        assert delta("qtasks_api_requests_total", method="GET", route="/tasks/{task_id}",
                     status="200") >= 4
        assert delta("qtasks_api_request_duration_seconds_count", method="POST",
                     route="/tasks", status="202") == 4

        # The worker skipped the revoked task and ran the other three.
        def worker_counted() -> bool:
            page = scrape(port)
            labels = {"task": "app.run_circuit", "queue": "default"}
            return (
                sample(page, "qtasks_tasks_total", state="succeeded", **labels) == 3
                and sample(page, "qtasks_tasks_total", state="revoked", **labels) == 1
            )

        wait_for(worker_counted, 10, "the worker's counts")
        page = scrape(port)
        assert sample(page, "qtasks_task_run_seconds_count", task="app.run_circuit",
                      executor="thread") == 3
        assert api.client.get(f"/tasks/{revoked}").json()["state"] == "REVOKED"
        assert any(e.get("task_id") == revoked for e in worker.events("task_already_final"))

        # One JSON line per request, with the task id; the submit's own event has it too.
        api_log = Path(api.log_path).read_text(errors="replace")
        requests = log_events(api_log, "request")
        posts = [e for e in requests if e["method"] == "POST" and e["status"] == 202]
        assert {e["task_id"] for e in posts} == {revoked, *ran}
        assert all(e["route"] == "/tasks" and e["duration_s"] > 0 for e in posts)
        deletes = [e for e in requests if e["method"] == "DELETE"]
        assert {e["task_id"] for e in deletes} >= {revoked, ran[0]}
        assert {e["task_id"] for e in log_events(api_log, "task_submitted")} == {revoked, *ran}
    finally:
        api.close()


def test_metrics_route_can_be_turned_off_or_put_behind_an_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = TestClient(api_module.api)
    assert client.get("/metrics").status_code == 200
    off = msgspec.structs.replace(api_module.service, metrics_enabled=False)
    monkeypatch.setattr(api_module, "service", off)
    assert client.get("/metrics").status_code == 404

    keyed = msgspec.structs.replace(api_module.service, metrics_enabled=True,
                                    metrics_require_key=True)
    monkeypatch.setattr(api_module, "service", keyed)
    monkeypatch.setattr(api_module, "keys", KeyRing([hash_key("scraper-key")]))
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer scraper-key"})
    assert ok.status_code == 200 and "qtasks_api_requests_total" in ok.text


def test_uvicorns_copy_of_an_already_logged_traceback_is_dropped() -> None:
    import logging

    from app.observability import setup_logging

    setup_logging()
    [drop] = logging.getLogger("uvicorn.error").filters
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n", (), None
    )
    assert drop.filter(record) is False
    other = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Started", (), None)
    assert drop.filter(other) is True
    assert logging.getLogger("uvicorn.access").disabled
