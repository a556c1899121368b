"""Operating qtasks on the real servers: worker metrics scraped during a run, the operator
commands (status, inspect, purge, revoke, dlq) as a user runs them, and revoke end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qtasks import State, TaskRevoked
from qtasks.broker.jetstream import JetStreamBroker
from qtasks.message import ErrorInfo, TaskMessage, TaskResult, encode_message, now_s
from qtasks.servers import free_port
from tests.support import ROOT, Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(QTASKS_NATS_ACK_WAIT_S=5)
    yield s
    s.close()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(page: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


def cli(stack: Stack, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """``qtasks ARGS`` as a user runs it, with the stack's settings in the environment."""
    return subprocess.run(
        [sys.executable, "-m", "qtasks", *args],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


async def _broker(stack: Stack) -> JetStreamBroker:
    b = JetStreamBroker(stack.settings.nats.url, stack.settings.nats)
    await b.connect()
    return b


def publish_garbage(stack: Stack, data: bytes = b"\xff\x00 not msgpack") -> None:
    async def go() -> None:
        b = await _broker(stack)
        await b.publish("default", data, msg_id=f"garbage-{time.time_ns()}")
        await b.close()

    asyncio.run(go())


# -- metrics ----------------------------------------------------------------------------------
def test_worker_metrics_move_as_tasks_are_received_run_and_finished(stack: Stack) -> None:
    port = free_port()
    stack.worker("--concurrency", "2", "--metrics-port", str(port))
    page = scrape(port)
    assert sample(page, "qtasks_worker_concurrency") == 2
    assert sample(page, "qtasks_tasks_in_flight") == 0

    sleep = stack.app.tasks["demo.sleep"]
    # 2 s each: longer than the 1 s the queue figures may be cached, so the scrape sees it.
    results = [sleep.delay(2.0) for _ in range(6)]

    def busy() -> bool:
        p = scrape(port)
        return (
            sample(p, "qtasks_tasks_in_flight") == 2
            and sample(p, "qtasks_queue_pending_messages", queue="default") == 4
            and sample(p, "qtasks_queue_ack_pending_messages", queue="default") == 2
        )

    wait_for(busy, 10, "2 tasks running and 4 pending in the scrape")
    assert [r.get(timeout=30) for r in results] == [2.0] * 6

    def settled() -> bool:
        p = scrape(port)
        return (
            sample(p, "qtasks_tasks_total", task="demo.sleep", queue="default",
                   state="succeeded") == 6
            and sample(p, "qtasks_queue_ack_pending_messages", queue="default") == 0
        )

    wait_for(settled, 10, "6 successes and an empty queue in the scrape")
    page = scrape(port)
    labels = {"task": "demo.sleep", "queue": "default"}
    assert sample(page, "qtasks_tasks_total", state="received", **labels) == 6
    assert sample(page, "qtasks_tasks_total", state="failed", **labels) == 0
    assert sample(page, "qtasks_task_run_seconds_count", task="demo.sleep",
                  executor="thread") == 6
    assert sample(page, "qtasks_task_run_seconds_sum", task="demo.sleep",
                  executor="thread") >= 12.0
    assert sample(page, "qtasks_task_queue_wait_seconds_count", **labels) == 6
    # Four of them waited for a slot: two for 2 s, two for 4 s.
    assert sample(page, "qtasks_task_queue_wait_seconds_sum", **labels) >= 10.0
    assert sample(page, "qtasks_queue_pending_messages", queue="default") == 0
    assert sample(page, "qtasks_tasks_in_flight") == 0

    with pytest.raises(Exception, match="always fails"):
        stack.app.tasks["demo.flaky"].delay().get(timeout=30)  # max_retries=2
    with pytest.raises(Exception, match="boom"):
        stack.app.tasks["demo.fail"].delay("boom").get(timeout=30)
    publish_garbage(stack)

    def failures_counted() -> bool:
        p = scrape(port)
        return (
            sample(p, "qtasks_dead_letters_total", queue="default", reason="DecodeError") == 1
            # Queue figures are read at most once a second: this one may lag a scrape.
            and sample(p, "qtasks_queue_dead_letter_messages", queue="default") == 1
        )

    wait_for(failures_counted, 10, "the dead letter in the scrape")
    page = scrape(port)
    flaky = {"task": "demo.flaky", "queue": "default"}
    assert sample(page, "qtasks_tasks_total", state="received", **flaky) == 3
    assert sample(page, "qtasks_tasks_total", state="retried", **flaky) == 2
    assert sample(page, "qtasks_tasks_total", state="failed", **flaky) == 1
    assert sample(page, "qtasks_tasks_total", task="demo.fail", queue="default",
                  state="failed") == 1
    assert sample(page, "process_resident_memory_bytes") > 0


def test_worker_without_metrics_port_serves_no_metrics(stack: Stack) -> None:
    w = stack.worker("--concurrency", "1")
    assert w.events("metrics_serving") == []


# -- status -------------------------------------------------------------------------------------
def test_status_shows_state_timings_worker_and_result_or_error(stack: Stack) -> None:
    stack.worker("--concurrency", "2")
    ok = stack.app.tasks["demo.add"].delay(2, 3)
    assert ok.get(timeout=30) == 5
    bad = stack.app.tasks["demo.fail"].delay("broken")
    with pytest.raises(Exception, match="broken"):
        bad.get(timeout=30)

    out = cli(stack, "status", ok.id)
    assert out.returncode == 0, out.stderr
    for line in ("state     SUCCESS", "task      demo.add", "executor  thread", "result    5",
                 "attempts  1 deliveries, 0 retries"):
        assert line in out.stdout
    assert "queued" in out.stdout and "ran" in out.stdout

    out = cli(stack, "status", bad.id, "--traceback")
    assert "state     FAILURE" in out.stdout
    assert "error     ValueError: broken" in out.stdout
    assert "raise ValueError(message)" in out.stdout

    rec = json.loads(cli(stack, "status", ok.id, "--json").stdout)
    assert rec["state"] == "SUCCESS" and rec["result"] == 5 and rec["attempts"] == 1
    assert rec["executor"] == "thread" and rec["pid"] > 0 and rec["hostname"]
    assert rec["sent_at"] <= rec["started_at"] <= rec["finished_at"]
    assert rec["queued_s"] >= 0 and rec["run_s"] >= 0

    out = cli(stack, "status", "no-such-task")
    assert out.returncode == 1 and "no record" in out.stdout


def test_status_wait_waits_for_many_tasks(stack: Stack) -> None:
    stack.worker("--concurrency", "4")
    ids = [stack.app.tasks["demo.sleep"].delay(0.3).id for _ in range(8)]
    out = cli(stack, "status", *ids, "--wait", "30", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["state"] for r in json.loads(out.stdout)] == ["SUCCESS"] * 8


# -- inspect and purge -------------------------------------------------------------------------
def test_inspect_shows_queue_depths_and_the_live_workers(stack: Stack) -> None:
    port = free_port()
    w = stack.worker("--concurrency", "2", "--metrics-port", str(port))
    results = [stack.app.tasks["demo.sleep"].delay(3.0) for _ in range(5)]
    wait_for(lambda: stack.runs(results[0].id) + stack.runs(results[1].id) >= 2, 10,
             "two tasks running")
    data = json.loads(cli(stack, "inspect", "--json").stdout)
    [queue] = [q for q in data["queues"] if q["queue"] == "default"]
    assert (queue["pending"], queue["ack_pending"]) == (3, 2)
    [worker] = data["workers"]
    assert worker["pid"] == w.pid and worker["concurrency"] == 2
    assert worker["in_flight"] == 2 and len(worker["running"]) == 2
    assert worker["metrics_port"] == port and worker["queues"] == ["default"]

    text = cli(stack, "inspect").stdout
    assert "QUEUE    PENDING  ACK-PENDING  REDELIVERED  WAITING-PULLS  DEAD-LETTERS" in text
    assert f":{w.pid}" in text and f":{port}" in text


def test_purge_asks_for_yes_then_deletes_a_queues_messages(stack: Stack) -> None:
    for i in range(5):
        stack.app.tasks["demo.add"].delay(i, i)
    refused = cli(stack, "purge")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    out = cli(stack, "purge", "--yes", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"purged": {"default": 5}}
    data = json.loads(cli(stack, "inspect", "--json", "--timeout", "0.2").stdout)
    assert [q["pending"] for q in data["queues"] if q["queue"] == "default"] == [0]


# -- revoke -------------------------------------------------------------------------------------
def test_task_revoked_before_it_starts_is_never_run(stack: Stack) -> None:
    r = stack.app.tasks["demo.sleep"].delay(0.1)
    out = cli(stack, "revoke", r.id, "--json")
    assert json.loads(out.stdout) == {"task_id": r.id, "state": "REVOKED", "revoked": True}
    w = stack.worker("--concurrency", "1")
    assert stack.app.tasks["demo.add"].delay(1, 1).get(timeout=30) == 2  # queue drained past it
    assert stack.runs(r.id) == 0
    assert r.state is State.REVOKED
    with pytest.raises(TaskRevoked):
        r.get(timeout=1)
    assert any(e["task_id"] == r.id for e in w.events("task_already_final"))


def test_running_task_in_the_process_executor_is_killed_by_revoke(stack: Stack) -> None:
    w = stack.worker("--executor", "process", "--concurrency", "1")
    pid_before = stack.app.tasks["demo.pid"].delay().get(timeout=30)
    r = stack.app.tasks["demo.sleep"].delay(60.0)
    wait_for(lambda: stack.runs(r.id) == 1, 20, "the task to start")
    t0 = time.monotonic()
    assert r.revoke() is State.REVOKED
    with pytest.raises(TaskRevoked):
        r.get(timeout=5)
    # One slot: the next task runs at once only if the sleeping child was stopped.
    pid_after = stack.app.tasks["demo.pid"].delay().get(timeout=30)
    assert time.monotonic() - t0 < 30
    assert pid_after != pid_before  # the killed child was replaced
    assert r.state is State.REVOKED
    [event] = [e for e in w.events("task_revoked") if e["task_id"] == r.id]
    assert event["running"] is True and event["duration_s"] > 0


def test_running_task_in_the_thread_executor_is_left_to_finish_but_stays_revoked(
    stack: Stack,
) -> None:
    w = stack.worker("--executor", "thread", "--concurrency", "1")
    r = stack.app.tasks["demo.sleep"].delay(2.0)
    wait_for(lambda: stack.runs(r.id) == 1, 20, "the task to start")
    assert r.revoke() is State.REVOKED
    # The slot is given back at once (the thread pool is replaced), so this runs meanwhile.
    assert stack.app.tasks["demo.add"].delay(2, 2).get(timeout=10) == 4
    time.sleep(2.5)  # the abandoned thread has returned by now; its result was discarded
    info = r.info()
    assert info is not None and info.state is State.REVOKED and info.result is None
    assert any(e["task_id"] == r.id for e in w.events("task_revoked"))


def test_revoking_a_finished_task_leaves_it_alone(stack: Stack) -> None:
    stack.worker("--concurrency", "1")
    r = stack.app.tasks["demo.add"].delay(1, 2)
    assert r.get(timeout=30) == 3
    assert r.revoke() is State.SUCCESS
    out = cli(stack, "revoke", r.id)
    assert "SUCCESS (already finished)" in out.stdout
    assert r.get(timeout=1) == 3


# -- dead letters --------------------------------------------------------------------------------
def _dead_letter_a_task(stack: Stack, msg: TaskMessage, reason: str) -> None:
    """What the worker does with a message that cannot run: FAILURE, then a dead letter."""

    async def go() -> None:
        b = await _broker(stack)
        await b.dead_letter("default", encode_message(msg), reason)
        await b.close()

    asyncio.run(go())
    err_type, _, err_message = reason.partition(": ")
    asyncio.run(_store(stack, TaskResult(
        id=msg.id, state=State.FAILURE, task=msg.task, queue="default",
        error=ErrorInfo(err_type, err_message), finished_at=now_s(),
    )))


async def _store(stack: Stack, res: TaskResult) -> None:
    backend = await stack.app.backend()
    await backend.set(res)
    await stack.app.aclose()


def _letters(stack: Stack) -> list[dict[str, Any]]:
    out = cli(stack, "dlq", "list", "--json")
    assert out.returncode == 0, out.stderr
    letters: list[dict[str, Any]] = json.loads(out.stdout)
    return letters


def test_dlq_list_shows_dead_letters_with_their_reason(stack: Stack) -> None:
    stack.worker("--concurrency", "1")
    publish_garbage(stack)
    stack.app.send_task("demo.no_such_task", [1])
    wait_for(lambda: len(_letters(stack)) == 2, 20, "two dead letters")
    garbage, unknown = _letters(stack)
    assert garbage["decodable"] is False and garbage["reason"].startswith("DecodeError")
    assert unknown["task"] == "demo.no_such_task"
    assert unknown["reason"].startswith("TaskNotRegistered")
    text = cli(stack, "dlq", "list").stdout
    assert "undecodable" in text and "demo.no_such_task" in text and "TaskNotRegistered" in text


def test_dlq_replay_runs_a_letter_again_under_its_task_id(stack: Stack) -> None:
    msg = stack.app.build_message("demo.add", [2, 3])
    _dead_letter_a_task(stack, msg, "WorkerLost: started 6 times without finishing")
    r = stack.app.AsyncResult(msg.id)
    assert r.state is State.FAILURE
    [letter] = _letters(stack)
    stack.worker("--concurrency", "1")
    out = cli(stack, "dlq", "replay", str(letter["seq"]), "--wait", "30", "--json")
    assert out.returncode == 0, out.stderr
    replayed = json.loads(out.stdout)["replayed"]
    assert replayed == [{"seq": letter["seq"], "queue": "default", "task_id": msg.id,
                         "state": "SUCCESS"}]
    assert r.get(timeout=5) == 5
    info = r.info()
    assert info is not None and info.meta["replays"] == 1
    assert _letters(stack) == []


def test_dlq_replay_with_new_id_and_drop(stack: Stack) -> None:
    msg = stack.app.build_message("demo.add", [4, 4])
    _dead_letter_a_task(stack, msg, "TaskNotRegistered: not on that worker")
    publish_garbage(stack)  # no worker yet: this one stays a message, not a letter
    stack.worker("--concurrency", "1")
    wait_for(lambda: len(_letters(stack)) == 2, 20, "two dead letters")
    out = cli(stack, "dlq", "replay", "--all", "--yes", "--new-id", "--json")
    assert out.returncode == 1  # the undecodable one cannot be replayed
    body = json.loads(out.stdout)
    [done] = body["replayed"]
    assert done["task_id"] != msg.id and len(body["skipped"]) == 1
    assert stack.app.AsyncResult(done["task_id"]).get(timeout=30) == 8
    assert stack.app.AsyncResult(msg.id).state is State.FAILURE  # the old record stays
    refused = cli(stack, "dlq", "drop", "--all")
    assert refused.returncode == 2
    out = cli(stack, "dlq", "drop", "--all", "--yes", "--json")
    assert len(json.loads(out.stdout)["dropped"]) == 1
    assert _letters(stack) == []
