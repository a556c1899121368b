"""Does a long simulation stay with one worker? Per executor: two workers, a short ack_wait,
one circuit that simulates for longer than it; how often was it delivered and run?

    python benchmarks/heartbeat.py                   # qv-23, ack_wait 2 s
    python benchmarks/heartbeat.py --circuit qv-22 --ack-wait 1

A worker keeps its message with ``in_progress()`` every ack_wait/3, from its event loop.
Aer holds the GIL while it simulates, so a thread (or asyncio) executor freezes that loop:
no heartbeat goes out, the server redelivers the message to the other worker after
ack_wait, and the circuit runs twice, unless the worker's heartbeat helper process
(``[worker] heartbeat_process``, on by default) beats for it. The process executor simulates
in a child process and its own loop keeps beating.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cleanup, isolated_env, markdown_table, start_worker
from benchmarks.suite import build


def trial(executor: str, keepalive: bool, circuit: str, ack_wait_s: float) -> list[str]:
    family, _, width = circuit.rpartition("-")
    c = build(family, int(width))
    env = isolated_env(QTASKS_NATS_ACK_WAIT_S=ack_wait_s,
                       QTASKS_WORKER_HEARTBEAT_PROCESS="true" if keepalive else "false")
    os.environ.update(env)
    from app.tasks import app, run_circuit
    from qtasks.config import load_settings

    # Each trial has its own stream and ack_wait: the app reads them when it next connects.
    app.settings = load_settings(env["QTASKS_CONFIG"], env=os.environ)
    workers = [start_worker(env, "app.tasks:app", "--executor", executor, "--concurrency", "1",
                            timeout_s=300) for _ in range(2)]
    try:
        t0 = time.perf_counter()
        r = run_circuit.delay(c.qasm, c.shots, c.seed)
        out = r.get(timeout=900)
        wall = time.perf_counter() - t0
        time.sleep(ack_wait_s + 1)  # a late redelivery would start a second run by now
        info = r.info()
        assert info is not None
        runs = sum(w.log().count('"task_started"') for w in workers)
    finally:
        for w in workers:
            w.stop()
        app.close()
        asyncio.run(cleanup(env))
    helper = ("n/a (loop stays free)" if executor == "process"
              else "on" if keepalive else "off")
    return [executor, helper, f"{out['simulation_s']:.1f}", f"{wall:.1f}",
            str(info.deliveries), str(runs)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--circuit", default="qv-23", help="family-width from the suite")
    p.add_argument("--ack-wait", type=float, default=2.0, help="the consumer's ack_wait, s")
    p.add_argument("--trials", default="thread:off,thread:on,asyncio:off,asyncio:on,process:on",
                   help="executor:keepalive pairs (keepalive: the heartbeat helper process, "
                   "[worker] heartbeat_process)")
    args = p.parse_args(argv)
    rows = []
    for spec in args.trials.split(","):
        executor, _, helper = spec.partition(":")
        rows.append(trial(executor, helper != "off", args.circuit, args.ack_wait))
    print(f"{args.circuit}, ack_wait {args.ack_wait:g} s, two workers of concurrency 1\n")
    print(markdown_table(["Executor", "Heartbeat helper process", "Simulation s", "Wall s",
                          "Deliveries", "Runs"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
