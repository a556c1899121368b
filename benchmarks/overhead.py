"""Framework overhead on a no-op task, beside a floor of plain nats-py + redis-py.

    python benchmarks/overhead.py            # 2,000 / 200 / 2,000 tasks, results saved
    python benchmarks/overhead.py --quick    # small counts (CI smoke test), nothing saved

Rows (one invocation, same servers, each on its own stream and key prefix):

- **floor**: a minimal worker written with nats-py and redis-py alone (pull from a durable
  consumer, LPUSH the result with a TTL, ack) and a client that publishes with ack and
  reads results with BLPOP. No framework: what the two servers cost.
- **qtasks**: ``python -m qtasks worker -A benchmarks.noop_app:app`` with 4 slots, and a
  client using ``noop.adelay(...)`` / ``AsyncResult.aget()`` / ``noop.amap(...)``.

Measurements:

- throughput: N tasks sent one awaited ``adelay`` at a time, then every result read back;
  tasks/s over the whole (send + read).
- latency: sequential round trips (send one, wait for its result); p50/p90/p99 ms.
- batch: N tasks sent with pipelined publishes (``noop.amap(xs)``), then every result read
  back; tasks/s for the send alone and for send + results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS,
    RssSampler,
    cleanup,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    percentile,
    start_worker,
)

TARGETS = {"throughput": 3500.0, "p50_ms": 1.0, "p99_ms": 3.0, "batch_send": 7000.0}
#: The issue's own floor on its reference machine (same method): 5,949 tasks/s, p50 0.79 ms.
#: The targets as ratios to it, for a machine whose floor is slower or faster.
REFERENCE_FLOOR = {"throughput": 5949.0, "p50_ms": 0.79}
_PIPELINE_WINDOW = 512
_RESULT_TTL_MS = 600_000


# -- the floor: nats-py and redis-py alone ---------------------------------------------------
def floor_names(env: dict[str, str]) -> dict[str, str]:
    tag = env["QTASKS_REDIS_KEY_PREFIX"]
    return {"stream": f"F{tag}", "subject": f"f{tag}.noop", "durable": f"f{tag}",
            "prefix": f"f{tag}"}


def run_on(loop: str, coro: Any) -> Any:
    """Run ``coro`` on the event loop ``loop`` names (auto, asyncio or uvloop)."""
    from qtasks._loop import loop_factory

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(coro)


def loop_name(loop: str) -> str:
    from qtasks._loop import loop_factory

    return "uvloop" if loop_factory(loop).__module__.startswith("uvloop") else "asyncio"


async def floor_worker(env: dict[str, str], slots: int) -> None:
    """The floor's worker: fetch up to ``slots`` messages, write each result, ack it."""
    import nats
    import nats.errors
    import redis.asyncio as aioredis

    names = floor_names(env)
    nc = await nats.connect(env["QTASKS_NATS_URL"])
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=names["durable"], stream=names["stream"])
    r = aioredis.Redis.from_url(env["QTASKS_REDIS_URL"])
    print("floor_worker_started", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def handle(msg: Any) -> None:
        task_id, _, payload = msg.data.partition(b"|")
        async with r.pipeline(transaction=False) as pipe:
            pipe.lpush(f"{names['prefix']}:{task_id.decode()}", payload)
            pipe.pexpire(f"{names['prefix']}:{task_id.decode()}", _RESULT_TTL_MS)
            await pipe.execute()
        await msg.ack()

    while not stop.is_set():
        try:
            msgs = await sub.fetch(slots, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        await asyncio.gather(*(handle(m) for m in msgs))
    await r.aclose()
    await nc.close()


async def provision_floor(env: dict[str, str]) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    names = floor_names(env)
    nc = await nats.connect(env["QTASKS_NATS_URL"])
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=names["stream"], subjects=[names["subject"]],
                                     retention=RetentionPolicy.WORK_QUEUE,
                                     duplicate_window=120.0))
    await js.add_consumer(names["stream"], ConsumerConfig(
        durable_name=names["durable"], ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0,
        filter_subject=names["subject"], max_ack_pending=-1))
    await nc.close()


async def delete_floor(env: dict[str, str]) -> None:
    import contextlib

    import nats
    import nats.js.errors

    nc = await nats.connect(env["QTASKS_NATS_URL"])
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(floor_names(env)["stream"])
    await nc.close()


async def measure_floor(env: dict[str, str], n: int, n_latency: int, n_batch: int
                        ) -> dict[str, Any]:
    import nats
    import redis.asyncio as aioredis

    names = floor_names(env)
    nc = await nats.connect(env["QTASKS_NATS_URL"])
    js = nc.jetstream()
    r = aioredis.Redis.from_url(env["QTASKS_REDIS_URL"])

    async def send(x: int) -> str:
        task_id = uuid.uuid4().hex
        await js.publish(names["subject"], f"{task_id}|{x}".encode(),
                         headers={"Nats-Msg-Id": task_id}, stream=names["stream"])
        return task_id

    async def read(task_id: str) -> bytes:
        got = await r.blpop([f"{names['prefix']}:{task_id}"], timeout=30)
        assert got is not None, f"no result for {task_id}"
        return bytes(got[1])

    async def send_many(xs: range) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(xs), _PIPELINE_WINDOW):
            ids += await asyncio.gather(*(send(x) for x in xs[start:start + _PIPELINE_WINDOW]))
        return ids

    async def check(ids: list[str], xs: range) -> None:
        values = [await read(t) for t in ids]
        assert values == [str(x).encode() for x in xs]

    out = await measure(send, read, send_many, check, n, n_latency, n_batch)
    await r.aclose()
    await nc.close()
    return out


# -- qtasks ---------------------------------------------------------------------------------
def queue_of(row: str) -> str:
    return f"noop-{row.split(':')[1]}"


async def measure_qtasks(queue: str, n: int, n_latency: int, n_batch: int) -> dict[str, Any]:
    from benchmarks.noop_app import app, noop

    noop.queue = queue  # adelay and amap send to the task's queue

    async def send(x: int) -> Any:
        return await noop.adelay(x)

    async def read(handle: Any) -> Any:
        return await handle.aget(timeout=30)

    async def send_many(xs: range) -> list[Any]:
        return await noop.amap(xs)

    async def check(handles: list[Any], xs: range) -> None:
        values = [await h.aget(timeout=60) for h in handles]
        assert values == list(xs)

    try:
        return await measure(send, read, send_many, check, n, n_latency, n_batch)
    finally:
        await app.aclose()


async def measure(send: Any, read: Any, send_many: Any, check: Any,
                  n: int, n_latency: int, n_batch: int) -> dict[str, Any]:
    """The three measurements, with the same steps for the floor and for qtasks."""
    # Warm-up: connections, consumer, first-use code paths.
    for x in range(20):
        await read(await send(x))

    t0 = time.perf_counter()
    handles = [await send(x) for x in range(n)]
    t_sent = time.perf_counter()
    await check(handles, range(n))
    t1 = time.perf_counter()

    latencies: list[float] = []
    for x in range(n_latency):
        t = time.perf_counter()
        value = await read(await send(x))
        latencies.append(time.perf_counter() - t)
        assert value in (x, str(x).encode())
    latencies.sort()

    b0 = time.perf_counter()
    handles = await send_many(range(n_batch))
    b_sent = time.perf_counter()
    await check(handles, range(n_batch))
    b1 = time.perf_counter()

    return {
        "throughput_tasks_s": n / (t1 - t0),
        "send_one_by_one_tasks_s": n / (t_sent - t0),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "batch_send_tasks_s": n_batch / (b_sent - b0),
        "batch_end_to_end_tasks_s": n_batch / (b1 - b0),
        "n": n,
        "n_latency": n_latency,
        "n_batch": n_batch,
    }


# -- the run --------------------------------------------------------------------------------
class FloorWorker:
    """The floor's worker as a subprocess (this file with ``--floor-worker``)."""

    def __init__(self, env: dict[str, str], slots: int, loop: str) -> None:
        import subprocess

        self.env = env
        asyncio.run(provision_floor(env))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--floor-worker", "--slots",
             str(slots), "--loop", loop],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        if b"floor_worker_started" not in self.proc.stdout.readline():
            self.stop()
            raise RuntimeError("the floor worker did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        asyncio.run(delete_floor(self.env))


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the repeats, with min and max as ``<name>_spread``."""
    import statistics

    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if key.endswith(("_tasks_s", "_ms")):
            out[key] = statistics.median(values)
            out[f"{key}_spread"] = [min(values), max(values)]
        else:
            out[key] = value
    out["repeats"] = len(runs)
    return out


def run_rows(env: dict[str, str], args: argparse.Namespace, rows: list[str]
             ) -> dict[str, dict[str, Any]]:
    """Start every row's worker, then measure the rows in turn, ``repeats`` rounds, so slow
    and fast moments of a shared machine fall on every row alike."""
    from tqdm import tqdm

    workers: dict[str, Any] = {}
    samplers: dict[str, RssSampler] = {}
    idle: dict[str, int] = {}
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in rows}
    try:
        for row in rows:
            if row == "floor":
                workers[row] = FloorWorker(env, args.concurrency, args.loop)
            elif row.startswith("qtasks:"):
                # Each executor's worker has a queue of its own; the client sends there.
                workers[row] = start_worker(env, "benchmarks.noop_app:app", "--executor",
                                            row.split(":")[1], "--concurrency",
                                            str(args.concurrency), "--loop", args.loop,
                                            queue=queue_of(row))
            else:
                raise SystemExit(f"unknown row {row!r} (floor, qtasks)")
            samplers[row] = RssSampler(workers[row].pid).__enter__()
        time.sleep(0.5)
        for row in rows:
            idle[row] = samplers[row].current_bytes()
        with tqdm(total=args.repeats * len(rows), desc="overhead", unit="row",
                  file=sys.stderr, disable=args.no_progress) as bar:
            for _ in range(args.repeats):
                for row in rows:
                    bar.set_postfix_str(row)
                    if row == "floor":
                        runs[row].append(run_on(args.loop, measure_floor(
                            env, args.tasks, args.latency, args.batch)))
                    else:
                        runs[row].append(run_on(args.loop, measure_qtasks(
                            queue_of(row), args.tasks, args.latency, args.batch)))
                    bar.update()
    finally:
        for s in samplers.values():
            s.__exit__()
        for w in workers.values():
            w.stop()
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = ("floor (nats-py + redis-py)" if row == "floor"
                else f"qtasks ({row.split(':')[1]} executor, {args.concurrency} slots)")
        out[name] = {**aggregate(runs[row]), "idle_rss_bytes": idle[row],
                     "peak_rss_bytes": samplers[row].peak_bytes}
    return out


def table(rows: dict[str, dict[str, Any]], concurrency: int) -> str:
    headers = ["Row", "Throughput (tasks/s)", "p50 (ms)", "p90 (ms)", "p99 (ms)",
               "Batch send (tasks/s)", "Batch end to end (tasks/s)", "Worker RSS idle/peak (MiB)"]
    body = []
    for name, r in rows.items():
        body.append([
            name,
            f"{r['throughput_tasks_s']:,.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['batch_send_tasks_s']:,.0f}",
            f"{r['batch_end_to_end_tasks_s']:,.0f}",
            f"{r['idle_rss_bytes'] / 2**20:.0f} / {r['peak_rss_bytes'] / 2**20:.0f}",
        ])
    t = TARGETS
    body.append(["target (qtasks)", f"≥ {t['throughput']:,.0f}", f"≤ {t['p50_ms']:.1f}", "",
                 f"≤ {t['p99_ms']:.0f}", f"≥ {t['batch_send']:,.0f}", "", ""])
    return markdown_table(headers, body)


def verdict(q: dict[str, Any], floor: dict[str, Any] | None) -> list[str]:
    """Each target met or missed, as measured; with a floor row, also as a ratio to it."""
    t = TARGETS
    checks = [
        ("throughput", q["throughput_tasks_s"] >= t["throughput"],
         f"{q['throughput_tasks_s']:,.0f} tasks/s (target ≥ {t['throughput']:,.0f})"),
        ("p50", q["p50_ms"] <= t["p50_ms"], f"{q['p50_ms']:.2f} ms (target ≤ {t['p50_ms']})"),
        ("p99", q["p99_ms"] <= t["p99_ms"], f"{q['p99_ms']:.2f} ms (target ≤ {t['p99_ms']})"),
        ("batch send", q["batch_send_tasks_s"] >= t["batch_send"],
         f"{q['batch_send_tasks_s']:,.0f} tasks/s (target ≥ {t['batch_send']:,.0f})"),
    ]
    out = [f"- {name}: {'met' if ok else 'MISSED'}, {text}" for name, ok, text in checks]
    if floor is not None:
        want_tp = t["throughput"] / REFERENCE_FLOOR["throughput"]
        want_p50 = t["p50_ms"] / REFERENCE_FLOOR["p50_ms"]
        tp = q["throughput_tasks_s"] / floor["throughput_tasks_s"]
        p50 = q["p50_ms"] / floor["p50_ms"]
        out += [
            f"- throughput relative to this run's floor ({floor['throughput_tasks_s']:,.0f} "
            f"tasks/s): {'met' if tp >= want_tp else 'MISSED'}, {tp:.2f}x (the target is "
            f"{want_tp:.2f}x the issue's reference floor)",
            f"- p50 relative to this run's floor ({floor['p50_ms']:.2f} ms): "
            f"{'met' if p50 <= want_p50 else 'MISSED'}, {p50:.2f}x (the target is "
            f"{want_p50:.2f}x the issue's reference floor)",
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts; results not saved")
    p.add_argument("--tasks", type=int, help="throughput tasks (default 2000; quick 200)")
    p.add_argument("--latency", type=int, help="round trips (default 200; quick 50)")
    p.add_argument("--batch", type=int, help="batch-send tasks (default 2000; quick 200)")
    p.add_argument("--concurrency", type=int, default=4, help="worker slots (default 4)")
    p.add_argument("--executor", default="thread,asyncio",
                   help="comma-separated executors, one qtasks row each (default thread,asyncio;"
                   " the targets are checked on each)")
    p.add_argument("--rows", default="floor,qtasks", help="comma-separated: floor,qtasks")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="event loop of every client and worker, floor included (default auto: "
                   "uvloop when installed, as the qtasks worker uses it)")
    p.add_argument("--repeats", type=int, help="rounds over the rows; medians reported "
                   "(default 3; quick 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", type=Path, help="directory for JSON/markdown "
                   "(default benchmarks/results, or a temporary one with --quick)")
    p.add_argument("--floor-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--slots", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor_worker:
        run_on(args.loop, floor_worker(dict(os.environ), args.slots))
        return 0
    args.tasks = args.tasks or (200 if args.quick else 2000)
    args.latency = args.latency or (50 if args.quick else 200)
    args.batch = args.batch or (200 if args.quick else 2000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="qtasks-overhead-")) if args.quick
                           else RESULTS)

    env = isolated_env()
    os.environ.update(env)  # the client's app reads its settings at import
    executors = args.executor.split(",")
    names = [r for r in args.rows.split(",") if r != "qtasks"]
    if "qtasks" in args.rows.split(","):
        names += [f"qtasks:{e}" for e in executors]
    try:
        rows = run_rows(env, args, names)
    finally:
        asyncio.run(cleanup(env))

    m = machine()
    text = [f"Overhead on a no-op task ({args.tasks:,} sequential, {args.latency} round trips, "
            f"{args.batch:,} batched; median of {args.repeats}; {loop_name(args.loop)} event loop "
            f"everywhere); {machine_line(m)}", "",
            table(rows, args.concurrency)]
    floor = next((r for name, r in rows.items() if name.startswith("floor")), None)
    for name, q in rows.items():
        if name.startswith("qtasks"):
            text += ["", f"Targets, {name}:", *verdict(q, floor)]
    print("\n".join(text))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overhead.json").write_text(json.dumps(
        {"machine": m, "targets": TARGETS, "rows": rows,
         "settings": {"executors": executors, "concurrency": args.concurrency,
                      "repeats": args.repeats}}, indent=2)
        + "\n")
    (out_dir / "overhead.md").write_text("\n".join(text) + "\n")
    print(f"\nsaved {out_dir / 'overhead.json'} and overhead.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
