"""Fault injection: each test starts its own nats-server and redis-server on free loopback
ports, runs real worker subprocesses, breaks something on purpose, and checks that no task
is lost and none runs twice without a crash. Each prints (and with $QTASKS_FAULTS_REPORT,
records) its figures: tasks, lost, duplicate runs, seconds; benchmarks/faults.py turns
them into the README's reliability table.

Runs are counted by the demo tasks themselves in a file (tests.apps.demo, RUN_LOG_ENV),
so the count survives the Redis and NATS outages injected here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from qtasks import State
from qtasks._loop import run_sync
from qtasks.backends.redis import RedisBackend
from qtasks.broker.jetstream import JetStreamBroker
from qtasks.errors import ResultTimeout, TaskError, TaskRevoked
from qtasks.message import decode_result
from qtasks.result import AsyncResult
from qtasks.servers import NatsCluster, NatsServer, RedisServer
from tests.support import Stack, record_fault, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server (JetStream, file storage in the test's directory)."""
    server = NatsServer(data_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with AOF (fsync always), as a deployment keeping results runs."""
    server = RedisServer(data_dir=tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Builds a Stack on given servers; runs are logged to a file, worker logs kept in
    the test's directory; every worker is stopped at the end."""
    stacks: list[Stack] = []

    def make(nats_url: str, redis_url: str, **extra: Any) -> Stack:
        s = Stack(
            nats_url,
            redis_url,
            run_log=tmp_path / f"runs-{len(stacks)}.log",
            log_dir=tmp_path,
            shared=False,
            **extra,
        )
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.close()


@pytest.fixture
def stack(
    nats_server: NatsServer, aof_redis: RedisServer, make_stack: StackFactory
) -> Stack:
    """Private servers, ack_wait 2 s (a redelivery after a crash comes within seconds).

    (Servers first in the signature: fixtures are torn down in reverse, so the workers and
    the caller's connections close before their servers go.)"""
    return make_stack(nats_server.url, aof_redis.url, QTASKS_NATS_ACK_WAIT_S=2)


async def _final_state(r: AsyncResult[Any], deadline: float) -> str:
    try:
        value = await r.aget(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
    except ResultTimeout:
        info = await r.ainfo()
        return f"LOST:{'PENDING' if info is None else info.state.value}"
    if isinstance(value, TaskRevoked):
        return State.REVOKED.value
    return (State.FAILURE if isinstance(value, TaskError) else State.SUCCESS).value


def outcomes(results: Sequence[AsyncResult[Any]], timeout_s: float) -> Counter[str]:
    """The final state of every result, waiting at most ``timeout_s`` in all (``LOST:<state>``
    for one that did not finish in time). Waits run together on the sync bridge's loop."""

    async def all_states() -> list[str]:
        deadline = time.monotonic() + timeout_s
        gate = asyncio.Semaphore(500)  # bounded: each waiter may hold a subscription

        async def one(r: AsyncResult[Any]) -> str:
            async with gate:
                return await _final_state(r, deadline)

        return await asyncio.gather(*(one(r) for r in results))

    return Counter(run_sync(all_states()))


def lost(states: Counter[str]) -> int:
    return sum(n for s, n in states.items() if s != State.SUCCESS.value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def mixed_sleeps(n: int, low_s: float = 0.01, high_s: float = 1.0, seed: int = 5) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(low_s, high_s), 3) for _ in range(n)]


def send_sleeps(s: Stack, durations: Sequence[float]) -> list[AsyncResult[Any]]:
    return s.app.tasks["demo.sleep"].starmap([(d,) for d in durations])


# -- 1. a worker killed with SIGKILL -------------------------------------------------------


@pytest.mark.timeout(120)
def test_kill_9_worker_with_300_tasks_then_new_worker_runs_all(stack: Stack) -> None:
    t0 = time.monotonic()
    w = stack.worker("--concurrency", "16")
    results = send_sleeps(stack, mixed_sleeps(300))
    wait_for(lambda: len(stack.run_lines()) >= 100, 60, "100 tasks to start")
    w.signal(signal.SIGKILL)
    assert w.wait(10) == -signal.SIGKILL
    running_at_kill = len(stack.run_lines())
    # Its heartbeat helper leaves with it, or the dead worker's tasks would never come back.
    helper = w.events("keepalive_started")[0]["pid"]
    wait_for(lambda: not _alive(helper), 10, "the heartbeat helper to exit")
    stack.worker("--concurrency", "16")
    states = outcomes(results, 90)
    duplicates = stack.duplicates(r.id for r in results)
    record_fault(
        "worker killed (SIGKILL) mid-run, new worker started",
        tasks=300,
        lost=lost(states),
        duplicates=duplicates,
        seconds=time.monotonic() - t0,
        note="a duplicate is a task that was running when the worker died (16 slots)",
    )
    assert states == {"SUCCESS": 300}
    assert all(stack.runs(r.id) >= 1 for r in results)
    # Only tasks that were running when the worker died may run again (at most 16).
    assert duplicates <= 16, f"{duplicates} duplicates (runs seen at kill: {running_at_kill})"


# -- 2. nats-server restarted ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_nats_restart_mid_run_loses_nothing_and_everyone_reconnects(
    stack: Stack, nats_server: NatsServer
) -> None:
    t0 = time.monotonic()
    w = stack.worker("--concurrency", "16")
    first = send_sleeps(stack, mixed_sleeps(150, high_s=0.5, seed=1))
    wait_for(lambda: len(stack.run_lines()) >= 50, 60, "50 tasks to start")
    nats_server.kill()  # as a crash would; file storage keeps the stream and consumer
    time.sleep(1.0)
    nats_server.start()  # same port, same data directory
    # The caller's connection reconnects by itself: these publishes go through it.
    second = send_sleeps(stack, mixed_sleeps(150, high_s=0.5, seed=2))
    results = first + second
    states = outcomes(results, 90)
    duplicates = stack.duplicates(r.id for r in results)
    record_fault(
        "nats-server killed and restarted mid-run",
        tasks=300,
        lost=lost(states),
        duplicates=duplicates,
        seconds=time.monotonic() - t0,
        note="150 sent before the crash, 150 after it through the caller's reconnected "
        "connection",
    )
    assert states == {"SUCCESS": 300}
    assert w.events("nats_reconnected"), "the worker did not report a reconnect"
    assert w.proc is not None and w.proc.poll() is None, "the worker died"
    assert duplicates <= 16


@pytest.mark.timeout(90)
def test_nats_restarted_without_its_storage_worker_and_caller_provision_again(
    stack: Stack, nats_server: NatsServer
) -> None:
    """A server that comes back empty (storage lost or wiped): what it held is gone, but the
    worker binds its consumer again and the caller creates the stream again, unrestarted."""
    t0 = time.monotonic()
    w = stack.worker("--concurrency", "8")
    assert outcomes(send_sleeps(stack, [0.01] * 20), 30) == {"SUCCESS": 20}
    nats_server.kill()
    shutil.rmtree(nats_server.data_dir / "js")
    nats_server.start()
    results = send_sleeps(stack, mixed_sleeps(100, high_s=0.1, seed=4))
    states = outcomes(results, 60)
    record_fault(
        "nats-server restarted with its storage wiped; tasks sent after it",
        tasks=100,
        lost=lost(states),
        duplicates=stack.duplicates(r.id for r in results),
        seconds=time.monotonic() - t0,
        note="the caller creates the stream again, the worker binds its consumer again",
    )
    assert states == {"SUCCESS": 100}
    assert w.events("fetch_failed"), "the worker never noticed"


# -- 3. redis-server restarted ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_redis_restart_mid_run_keeps_every_result(stack: Stack, aof_redis: RedisServer) -> None:
    t0 = time.monotonic()
    w = stack.worker("--concurrency", "16")
    results = send_sleeps(stack, mixed_sleeps(300, high_s=0.5, seed=3))
    wait_for(lambda: len(stack.run_lines()) >= 100, 60, "100 tasks to start")
    # The caller is already waiting when Redis goes away: get() must ride through it.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(outcomes, results, 90)
        aof_redis.kill()
        time.sleep(4.0)  # longer than the backend's own retry window (3 s)
        aof_redis.start()  # AOF: every result written before the crash is still there
        states = waiting.result(timeout=100)
    duplicates = stack.duplicates(r.id for r in results)
    record_fault(
        "redis-server killed and restarted mid-run (AOF)",
        tasks=300,
        lost=lost(states),
        duplicates=duplicates,
        seconds=time.monotonic() - t0,
        note=f"down 4 s; the caller's get() waited through it; "
        f"{len(w.events('result_store_retry'))} result writes retried",
    )
    assert states == {"SUCCESS": 300}
    # Readable afterwards too, from a fresh read.
    assert {stack.app.AsyncResult(r.id).state for r in results} == {State.SUCCESS}
    assert w.events("result_store_retry"), "no result write was retried during the outage"
    assert not w.events("result_store_failed")
    assert duplicates <= 16


# -- 4. SIGTERM with running tasks (process executor) -----------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_process_worker_lets_20_running_tasks_finish_and_exits_0(stack: Stack) -> None:
    t0 = time.monotonic()
    w = stack.worker("--executor", "process", "--concurrency", "20")
    results = send_sleeps(stack, [2.0] * 20)
    wait_for(lambda: len(stack.run_lines()) == 20, 60, "20 tasks running")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    states = Counter(r.state.value for r in results)
    duplicates = stack.duplicates(r.id for r in results)
    record_fault(
        "SIGTERM with 20 tasks running (process executor)",
        tasks=20,
        lost=lost(states),
        duplicates=duplicates,
        seconds=time.monotonic() - t0,
        note="all 20 finished, then exit 0",
    )
    assert states == {"SUCCESS": 20}
    assert duplicates == 0


# -- 5. tasks longer than ack_wait --------------------------------------------------------------


@pytest.mark.timeout(90)
def test_tasks_of_3x_and_10x_ack_wait_run_once(
    nats_server: NatsServer, aof_redis: RedisServer, make_stack: StackFactory
) -> None:
    t0 = time.monotonic()
    s = make_stack(nats_server.url, aof_redis.url, QTASKS_NATS_ACK_WAIT_S=1)
    # Two workers: a redelivery after ack_wait would find a second taker at once.
    s.worker("--concurrency", "2")
    s.worker("--concurrency", "2")
    results = send_sleeps(s, [3.0, 10.0])
    states = outcomes(results, 40)
    time.sleep(2.0)  # a late redelivery would show up as a second run
    infos = [r.info() for r in results]
    duplicates = s.duplicates(r.id for r in results)
    record_fault(
        "tasks of 3x and 10x ack_wait (1 s), two workers",
        tasks=2,
        lost=lost(states),
        duplicates=duplicates,
        seconds=time.monotonic() - t0,
        note="one delivery each",
    )
    assert states == {"SUCCESS": 2}
    assert [s.runs(r.id) for r in results] == [1, 1]
    assert [(i.deliveries, i.meta.get("crashes")) for i in infos if i] == [(1, 0), (1, 0)]


def qft_qasm(num_qubits: int, layers: int) -> str:
    """OpenQASM 3: Hadamards, then ``layers`` rounds of a QFT with a rotation per qubit (about
    n^2/2 controlled-phase gates a round): a dense state Aer must simulate in full."""
    n = num_qubits
    lines = ["OPENQASM 3.0;", 'include "stdgates.inc";', f"qubit[{n}] q;", f"bit[{n}] c;"]
    lines += [f"h q[{j}];" for j in range(n)]
    for _ in range(layers):
        for j in range(n):
            lines.append(f"h q[{j}];")
            lines += [f"cp({math.pi / 2 ** (k - j):.12f}) q[{k}], q[{j}];" for k in range(j + 1, n)]
            lines.append(f"ry(0.3) q[{j}];")
    lines.append("c = measure q;")
    return "\n".join(lines)


def _circuit_runs_once(
    make_stack: StackFactory,
    nats_url: str,
    redis_url: str,
    *,
    qubits: int,
    layers: int,
    executor: str,
    ack_wait_s: float,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one circuit through app.tasks.run_circuit on ``workers`` service workers; return
    what happened: result, state, deliveries, crashes, runs seen in the workers' logs."""
    s = make_stack(nats_url, redis_url, QTASKS_NATS_ACK_WAIT_S=ack_wait_s, **(env or {}))
    ws = [
        s.worker("--executor", executor, "--concurrency", "1", app_spec="app.tasks:app")
        for _ in range(workers)
    ]
    t0 = time.monotonic()
    r = s.app.send_task("app.run_circuit", [qft_qasm(qubits, layers), 100], {"seed": 7})
    try:
        value = r.get(timeout=120, propagate=False)
    except ResultTimeout:
        value = None
    elapsed_s = time.monotonic() - t0
    time.sleep(2 * ack_wait_s + 1)  # a redelivery late in the run would start a second run now
    info = r.info()
    starts = [e for w in ws for e in w.events("task_started") if e.get("task_id") == r.id]
    return {
        "id": r.id,
        "value": value,
        "state": info.state.value if info else "PENDING",
        "deliveries": info.deliveries if info else 0,
        "crashes": info.meta.get("crashes") if info else None,
        "runs": len(starts),
        "restarts": sum(
            1 for w in ws for e in w.events("task_restarted") if e.get("task_id") == r.id
        ),
        "workers_that_ran": len({e.get("worker") for e in starts}),
        "seconds": elapsed_s,
        "simulation_s": value.get("simulation_s", 0.0) if isinstance(value, dict) else 0.0,
    }


def _brief(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k != "value"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("qubits", "layers"),
    [
        pytest.param(20, 18, id="20-qubits"),
        pytest.param(23, 2, id="23-qubits", marks=pytest.mark.slow),
    ],
)
def test_circuit_outlasting_3x_ack_wait_runs_once_on_the_service_worker(
    nats_server: NatsServer,
    aof_redis: RedisServer,
    make_stack: StackFactory,
    qubits: int,
    layers: int,
) -> None:
    """The service's default set-up: process executor (Aer holds the GIL in the child, the
    worker's loop keeps heartbeating), ack_wait much shorter than the simulation."""
    ack_wait_s = 1.0
    out = _circuit_runs_once(
        make_stack, nats_server.url, aof_redis.url,
        qubits=qubits, layers=layers, executor="process", ack_wait_s=ack_wait_s,
    )  # fmt: skip
    print(f"\ncircuit {qubits} qubits, process executor: {_brief(out)}")
    record_fault(
        f"{qubits}-qubit circuit, process executor, {out['simulation_s']:.1f} s "
        f"simulation vs ack_wait {ack_wait_s:g} s",
        tasks=1,
        lost=int(out["state"] != "SUCCESS"),
        duplicates=max(0, out["runs"] - 1),
        seconds=out["seconds"],
        note=f"deliveries {out['deliveries']}, runs {out['runs']} (two workers); the "
        "parent's loop beats while the child simulates",
    )
    assert out["state"] == "SUCCESS"
    assert out["simulation_s"] > 3 * ack_wait_s, "the circuit is too small to prove anything"
    assert (out["deliveries"], out["crashes"], out["runs"]) == (1, 0, 1)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("heartbeat_process", "qubits", "layers"),
    [
        # ~0.23 s a layer at 20 qubits on an idle 2-core machine: 18 layers is ~4 s, above
        # 3x ack_wait even when nothing else runs (slower, and safer, under load).
        pytest.param(True, 20, 18, id="helper-process"),
        pytest.param(False, 20, 18, id="loop-only"),
        pytest.param(True, 23, 2, id="helper-process-23-qubits", marks=pytest.mark.slow),
    ],
)
def test_circuit_holding_the_gil_on_the_thread_executor(
    nats_server: NatsServer,
    aof_redis: RedisServer,
    make_stack: StackFactory,
    heartbeat_process: bool,
    qubits: int,
    layers: int,
) -> None:
    """Aer holds the GIL for the whole simulation: the worker's event loop sends nothing.
    With the heartbeat helper process (the default), the delivery is kept alive from outside
    and the circuit runs once. Without it, ack_wait runs out, the other worker gets the
    message, and the circuit runs twice; the second worker logs ``task_restarted`` (the
    last run of that task was never settled) as it starts it."""
    ack_wait_s = 1.0
    out = _circuit_runs_once(
        make_stack, nats_server.url, aof_redis.url,
        qubits=qubits, layers=layers, executor="thread", ack_wait_s=ack_wait_s,
        env={"QTASKS_WORKER_HEARTBEAT_PROCESS": str(heartbeat_process).lower()},
    )  # fmt: skip
    print(f"\ncircuit, thread executor, heartbeat_process={heartbeat_process}: {_brief(out)}")
    assert out["state"] == "SUCCESS"
    if heartbeat_process:
        assert out["simulation_s"] > 3 * ack_wait_s
        record_fault(
            f"{qubits}-qubit circuit holding the GIL, thread executor, "
            f"{out['simulation_s']:.1f} s simulation vs ack_wait {ack_wait_s:g} s",
            tasks=1,
            lost=0,
            duplicates=max(0, out["runs"] - 1),
            seconds=out["seconds"],
            note=f"deliveries {out['deliveries']}, runs {out['runs']} (two workers); the "
            "heartbeat helper process beats while the loop is frozen",
        )
        assert (out["deliveries"], out["crashes"], out["runs"]) == (1, 0, 1)
    else:
        record_fault(
            "the same with the heartbeat helper off (heartbeat_process=false)",
            tasks=1,
            lost=0,
            duplicates=max(0, out["runs"] - 1),
            seconds=out["seconds"],
            note="expected: the frozen loop sends no heartbeat, the other worker runs it "
            "again and logs task_restarted",
        )
        # What the helper prevents: a second run, on the other worker, which says so.
        assert out["runs"] == 2 and out["workers_that_ran"] == 2
        assert out["restarts"] >= 1


# -- 6. poison messages -------------------------------------------------------------------------


def _dead_letters(s: Stack, want: int, timeout_s: float = 20.0) -> list[tuple[bytes, str]]:
    """The queue's dead letters, once there are ``want`` of them (or the time is up)."""

    async def read() -> list[tuple[bytes, str]]:
        broker = await s.app.broker()
        assert isinstance(broker, JetStreamBroker)
        letters: list[tuple[bytes, str]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            letters += await broker.dead_letters("default")  # consumed as read
            if len(letters) >= want:
                break
            await asyncio.sleep(0.2)
        return letters

    return run_sync(read())


def _publish_raw(s: Stack, data: bytes, msg_id: str) -> None:
    async def publish() -> None:
        broker = await s.app.broker()
        await broker.publish("default", data, msg_id=msg_id)

    run_sync(publish())


@pytest.mark.timeout(120)
def test_poison_messages_end_in_failure_or_dead_letters_and_the_worker_serves_on(
    stack: Stack,
) -> None:
    """Process executor: garbage bytes and an unknown task are dead-lettered (the unknown one
    also FAILURE); a task whose child process exits is FAILURE (ChildProcessDied, the child
    replaced), never left STARTED. Then 100 tasks still run."""
    t0 = time.monotonic()
    w = stack.worker("--executor", "process", "--concurrency", "2")
    _publish_raw(stack, b"\xff\x00 not msgpack", "garbage-1")
    unknown = stack.app.send_task("no.such.task", [1])
    suicide = stack.app.tasks["demo.exit"].delay(3)
    after = stack.app.tasks["demo.add"].starmap([(i, i) for i in range(100)])
    states = outcomes([unknown, suicide, *after], 60)
    letters = _dead_letters(stack, 2)
    reasons = sorted(reason.split(":")[0] for _, reason in letters)
    u, k = unknown.info(), suicide.info()
    record_fault(
        "poison: garbage bytes, unknown task, os._exit in a child; then 100 tasks",
        tasks=103,
        # each must end somewhere: SUCCESS (100), FAILURE (2), the dead-letter stream (garbage)
        lost=(100 - states["SUCCESS"]) + (2 - states["FAILURE"]) + ("DecodeError" not in reasons),
        duplicates=max(0, stack.runs(suicide.id) - 1),
        seconds=time.monotonic() - t0,
        note="garbage and unknown task dead-lettered; the dead child is FAILURE "
        "(ChildProcessDied) and replaced",
    )
    assert states == {"SUCCESS": 100, "FAILURE": 2}
    assert [r.get(timeout=1) for r in after] == [2 * i for i in range(100)]
    assert reasons == ["DecodeError", "TaskNotRegistered"]
    assert u is not None and u.error is not None and u.error.type == "TaskNotRegistered"
    assert k is not None and k.error is not None and k.error.type == "ChildProcessDied"
    assert "exit code 3" in k.error.message
    assert stack.runs(suicide.id) == 1  # max_retries=0: a dead child fails the task
    assert w.events("child_replaced"), "the dead child was not replaced"


@pytest.mark.timeout(120)
def test_task_killing_its_thread_worker_is_dead_lettered_after_max_redeliveries(
    nats_server: NatsServer, aof_redis: RedisServer, make_stack: StackFactory
) -> None:
    """Thread executor: os._exit takes the whole worker down. Restarted workers get the task
    again; after ``max_redeliveries`` lost starts it is FAILURE (WorkerLost) and
    dead-lettered instead of killing workers forever. The last worker serves 100 more."""
    t0 = time.monotonic()
    s = make_stack(
        nats_server.url, aof_redis.url, QTASKS_NATS_ACK_WAIT_S=1, QTASKS_WORKER_MAX_REDELIVERIES=1
    )
    killer = s.app.tasks["demo.exit"].delay(3)
    deaths = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a supervisor: restart the worker while it dies
        w = s.worker("--concurrency", "2", allow_exit=True)
        try:
            w.wait(6)
        except subprocess.TimeoutExpired:  # still alive: the task did not kill this one
            break
        deaths += 1
    info = killer.info()
    after = s.app.tasks["demo.add"].starmap([(i, 1) for i in range(100)])
    states = outcomes(after, 60)
    letters = _dead_letters(s, 1)
    record_fault(
        "task calling os._exit on a thread worker (crash loop)",
        tasks=101,
        lost=lost(states) + int(info is None or info.state is not State.FAILURE),
        duplicates=0,
        seconds=time.monotonic() - t0,
        note=f"the task ran {s.runs(killer.id)} times (max_redeliveries=1), each killing its "
        "worker; then FAILURE (WorkerLost) and dead-lettered",
    )
    assert info is not None and info.state is State.FAILURE
    assert info.error is not None and info.error.type == "WorkerLost"
    assert deaths == 2 and s.runs(killer.id) == 2  # max_redeliveries=1: one retry, then stop
    assert [reason.split(":")[0] for _, reason in letters] == ["WorkerLost"]
    assert states == {"SUCCESS": 100}


# -- 7. retries ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_retries_3_runs_4_times_with_growing_delays_then_failure(stack: Stack) -> None:
    t0 = time.monotonic()
    stack.worker("--concurrency", "2")
    r = stack.app.tasks["demo.always_fails"].delay()  # max_retries=3, backoff 0.3 s, no jitter
    states = outcomes([r], 30)
    times = sorted(float(line[2]) for line in stack.run_lines() if line[0] == r.id)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    record_fault(
        "task failing every time, max_retries=3",
        tasks=1,
        lost=int(states != {"FAILURE": 1}),
        duplicates=max(0, len(times) - 4),
        seconds=time.monotonic() - t0,
        note=f"4 runs, then FAILURE; delays {', '.join(f'{g:.2f}' for g in gaps)} s",
    )
    assert states == {"FAILURE": 1}
    assert len(times) == 4, f"runs at {times}"
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 1.2, gaps
    assert gaps[0] < gaps[1] < gaps[2]
    info = r.info()
    assert info is not None and info.retries == 3 and info.error is not None
    assert info.error.message == "fails every time"


# -- 8. a node of a 3-node JetStream cluster killed -------------------------------------------


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(3, tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


def _stream_leader(s: Stack, timeout_s: float = 20.0) -> str:
    """The server name of the stream's leader (asking again while an election runs)."""

    async def leader() -> str:
        broker = await s.app.broker()
        assert isinstance(broker, JetStreamBroker)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info = await broker._js_ctx().stream_info(s.settings.nats.stream)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            except Exception:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError("the stream has no leader")
            await asyncio.sleep(0.2)

    return run_sync(leader())


@pytest.mark.timeout(150)
def test_cluster_node_killed_mid_run_with_3_replicas_loses_nothing(
    nats_cluster: NatsCluster, aof_redis: RedisServer, make_stack: StackFactory
) -> None:
    t0 = time.monotonic()
    s = make_stack(
        nats_cluster.url, aof_redis.url, QTASKS_NATS_ACK_WAIT_S=2, QTASKS_NATS_REPLICAS=3
    )
    s.worker("--concurrency", "16")
    s.worker("--concurrency", "16")
    results = send_sleeps(s, mixed_sleeps(500, high_s=0.3, seed=8))
    wait_for(lambda: len(s.run_lines()) >= 150, 60, "150 tasks to start")
    # The worst node to lose: the stream's leader (a new one must be elected).
    leader = _stream_leader(s)
    victim = next(n for n in nats_cluster.nodes if f"--server_name {leader}" in " ".join(
        n.command()))
    victim.kill()
    states = outcomes(results, 120)
    duplicates = s.duplicates(r.id for r in results)
    record_fault(
        "JetStream cluster (3 nodes, R3): stream leader killed mid-run",
        tasks=500,
        lost=lost(states),
        duplicates=duplicates,
        seconds=time.monotonic() - t0,
        note="clients given all three URLs; a new leader took over",
    )
    assert states == {"SUCCESS": 500}
    assert _stream_leader(s) != leader
    assert duplicates <= 32


# -- 9. load -------------------------------------------------------------------------------------


def watch_states(s: Stack, ids: Sequence[str], timeout_s: float) -> Counter[str]:
    """Final states of ``ids`` read straight from Redis (MGET every 0.2 s, a poll: test code).

    For results with a short TTL: each is seen within a fraction of a second of being
    stored, long before it expires, however far behind a waiter would be. A task never seen
    final counts as ``LOST:<last state seen>``."""
    backend = RedisBackend(s.settings.redis.url, key_prefix=s.settings.redis.key_prefix)
    final: dict[str, str] = {}
    last: dict[str, str] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        still: list[str] = []
        for start in range(0, len(pending), 1000):
            chunk = pending[start : start + 1000]
            for task_id, data in zip(
                chunk, s.redis.mget([backend.result_key(t) for t in chunk]), strict=True
            ):
                res = None if data is None else decode_result(data)
                if res is not None and res.ready:
                    final[task_id] = res.state.value
                else:
                    last[task_id] = res.state.value if res is not None else last.get(
                        task_id, "PENDING")
                    still.append(task_id)
        pending = still
        if pending:
            time.sleep(0.2)
    return Counter(final.values()) + Counter(f"LOST:{last[t]}" for t in pending)


@pytest.mark.timeout(240)
def test_10000_noop_tasks_through_2_workers_all_succeed_and_expire(
    nats_server: NatsServer, aof_redis: RedisServer, make_stack: StackFactory
) -> None:
    ttl_s = 3.0
    s = make_stack(nats_server.url, aof_redis.url, QTASKS_REDIS_RESULT_TTL_S=ttl_s)
    ws = [s.worker("--concurrency", "8"), s.worker("--concurrency", "8")]
    msgs = [s.app.build_message("demo.noop") for _ in range(10_000)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Watching before sending: with a 3 s TTL an early result must not expire unseen.
        watching = pool.submit(watch_states, s, [m.id for m in msgs], 180)
        run_sync(s.app.asend_many(msgs))
        states = watching.result(timeout=200)
    elapsed_s = time.monotonic() - t0
    prefix = s.settings.redis.key_prefix
    time.sleep(ttl_s + 1.0)
    left = sum(1 for _ in s.redis.scan_iter(f"{prefix}:result:*", count=1000))
    starts = Counter(e.get("task_id") for w in ws for e in w.events("task_started"))
    duplicates = sum(n - 1 for n in starts.values())
    record_fault(
        "load: 10,000 no-op tasks, 2 workers",
        tasks=10_000,
        lost=lost(states),
        duplicates=duplicates,
        seconds=elapsed_s,
        note=f"results kept {ttl_s:g} s (TTL): {left} keys left after it",
    )
    assert states == {"SUCCESS": 10_000}, "some never finished (LOST:<state> is where they stuck)"
    assert left == 0
    assert duplicates == 0 and len(starts) == 10_000
