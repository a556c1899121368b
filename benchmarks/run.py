"""Executors compared end to end on the circuit suite, beside the floor (Aer alone).

    python benchmarks/run.py                         # 21-23 qubits, 3 repeats, all rows
    python benchmarks/run.py --quick --repeats 1 --executors thread   # CI smoke test
    python benchmarks/run.py --executors process --concurrency 1,2,4 --qubits 21,22

Rows, one at a time, on the same NATS and Redis, in one invocation:

- **floor**: one plain Python process parses, transpiles and runs every circuit of the
  suite with ``app.circuits.run_qasm``, one after another (Aer on every core). No framework.
- **<executor> x <concurrency>**: one worker subprocess,
  ``python -m qtasks worker -A app.tasks:app --executor X --concurrency C``, on an isolated
  stream and key prefix; a client sends the whole suite with ``run_circuit.delay()`` and
  reads every result back from Redis (``AsyncResult.get``).

Every row's process is started and warmed first (one small circuit per slot), then the rows
take turns: each round runs the whole suite once on every row, one row at a time, so a busy
moment of a shared machine is spread over the rows instead of falling on one. Each row's
worker consumes a queue of its own. Wall seconds are the median of the rounds, with min-max.

Memory: the RSS of the row's process and all its children, summed, sampled in a background
thread: idle (after the warm-up), peak over the suite, and a probe that runs ``concurrency``
copies of the widest GHZ circuit at once and reports (peak - idle) / concurrency against the
statevector's 16 x 2^n bytes.

Output: a markdown table on stdout; JSON, markdown and a PNG bar chart in
benchmarks/results/ (a temporary directory with --quick, unless --out is given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    MIB,
    RESULTS,
    RssSampler,
    cleanup,
    isolated_env,
    machine,
    machine_line,
    markdown_table,
    start_worker,
)
from benchmarks.suite import FULL_QUBITS, QUICK_QUBITS, Circuit, build, build_suite

EXECUTORS = ("thread", "process", "asyncio")
#: The warm-up circuit: tiny, but through the whole path (parse, transpile, Aer, counts).
WARMUP_QASM = ('OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c; h q[0]; '
               "cx q[0], q[1]; c = measure q;")
RESULT_TIMEOUT_S = 1800.0


def check_counts(name: str, result: dict[str, Any], shots: int) -> None:
    total = sum(result["counts"].values())
    if total != shots:
        raise AssertionError(f"{name}: {total} shots in the counts, expected {shots}")


# -- the floor: Aer alone, in a child process --------------------------------------------------
def floor_child(suite_file: Path) -> None:
    """The floor's process: warm up, then serve commands from stdin ("suite", "probe",
    "exit"), answering JSON lines on stdout."""
    from app.circuits import run_qasm
    from app.tasks import circuit_limits

    suite = json.loads(suite_file.read_text())
    limits = circuit_limits()
    run_qasm(WARMUP_QASM, 16, seed=1, limits=limits)

    def say(**kw: Any) -> None:
        print(json.dumps(kw), flush=True)

    say(event="ready")
    for command in sys.stdin:
        if command.strip() == "suite":
            t0 = time.perf_counter()
            for c in suite["circuits"]:
                out = run_qasm(c["qasm"], c["shots"], seed=c["seed"], limits=limits)
                check_counts(c["name"], {"counts": out.counts}, c["shots"])
                say(event="circuit", name=c["name"])
            say(event="suite", wall_s=time.perf_counter() - t0)
        elif command.strip() == "probe":
            # One process runs one circuit at a time: the floor's probe is one copy.
            probe = suite["probe"]
            run_qasm(probe["qasm"], probe["shots"], seed=probe["seed"], limits=limits)
            say(event="probe")
        else:
            return


class FloorRow:
    """The floor: a plain Python process running the suite with ``app.circuits.run_qasm``."""

    def __init__(self, suite_file: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--floor-child", str(suite_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.rss = RssSampler(self.proc.pid).__enter__()
        if self._next_event() != "ready":
            raise RuntimeError("the floor process did not start")
        self.result: dict[str, Any] = {
            "row": "floor", "executor": "floor (Aer alone)", "concurrency": 1, "wall_s": [],
            "probe_copies": 1}

    def _next_event(self, on_circuit: Callable[[], None] | None = None) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            if ev["event"] == "circuit":
                if on_circuit:
                    on_circuit()
                continue
            self._last = ev
            return str(ev["event"])
        raise RuntimeError("the floor process ended early")

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")

    def settle(self) -> None:
        self.result["idle_rss_bytes"] = self.rss.current_bytes()
        self.rss.peak_bytes = self.result["idle_rss_bytes"]

    def run_suite(self, on_circuit: Callable[[], None]) -> None:
        self._send("suite")
        if self._next_event(on_circuit) != "suite":
            raise RuntimeError("the floor process failed")
        self.result["wall_s"].append(self._last["wall_s"])

    def probe(self) -> None:
        self.result["peak_rss_bytes"] = self.rss.peak_bytes
        self.result["probe_idle_rss_bytes"] = idle = self.rss.current_bytes()
        self.rss.peak_bytes = idle
        self._send("probe")
        if self._next_event() != "probe":
            raise RuntimeError("the floor process failed")
        self.result["probe_peak_rss_bytes"] = self.rss.peak_bytes

    def stop(self) -> None:
        self.rss.__exit__()
        if self.proc.poll() is None:
            self._send("exit")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- an executor row ------------------------------------------------------------------------
class ExecutorRow:
    """One worker subprocess of ``executor`` with ``concurrency`` slots, consuming a queue of
    its own (so every row's worker can stay up while the rows take turns)."""

    def __init__(self, env: dict[str, str], executor: str, concurrency: int) -> None:
        self.queue = f"bench-{executor}-{concurrency}"
        t0 = time.perf_counter()
        self.worker = start_worker(env, "app.tasks:app", "--executor", executor,
                                   "--concurrency", str(concurrency), timeout_s=300,
                                   queue=self.queue)
        self.rss = RssSampler(self.worker.pid).__enter__()
        self.result: dict[str, Any] = {
            "row": f"{executor}-{concurrency}", "executor": executor,
            "concurrency": concurrency, "wall_s": [], "probe_copies": concurrency,
            "ready_s": time.perf_counter() - t0}
        self.concurrency = concurrency
        # Warm-up: one small circuit per slot, all at once, so each process child runs one.
        self._run_all([(WARMUP_QASM, 16, 1)] * concurrency)

    def _run_all(self, calls: Sequence[tuple[str, int, int]],
                 on_result: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        from app.tasks import run_circuit

        handles = [run_circuit.apply_async(c, queue=self.queue) for c in calls]
        for i, h in enumerate(handles):
            out = h.get(timeout=RESULT_TIMEOUT_S)
            check_counts(f"call {i}", out, calls[i][1])
            if on_result:
                on_result(i, out)

    def settle(self) -> None:
        self.result["idle_rss_bytes"] = self.rss.current_bytes()
        self.rss.peak_bytes = self.result["idle_rss_bytes"]

    def run_suite(self, suite: list[Circuit], on_circuit: Callable[[], None]) -> None:
        threads: set[int] = set()

        def seen(_: int, out: dict[str, Any]) -> None:
            threads.add(int(out.get("aer_threads", 0)))
            on_circuit()

        t0 = time.perf_counter()
        self._run_all([(c.qasm, c.shots, c.seed) for c in suite], seen)
        self.result["wall_s"].append(time.perf_counter() - t0)
        self.result["aer_threads"] = sorted(threads)

    def probe(self, probe: Circuit) -> None:
        self.result["peak_rss_bytes"] = self.rss.peak_bytes
        self.result["probe_idle_rss_bytes"] = idle = self.rss.current_bytes()
        self.rss.peak_bytes = idle
        self._run_all([(probe.qasm, probe.shots, probe.seed)] * self.concurrency)
        self.result["probe_peak_rss_bytes"] = self.rss.peak_bytes

    def stop(self) -> None:
        self.rss.__exit__()
        self.worker.stop()


# -- report -----------------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]], n_tasks: int, probe: Circuit) -> None:
    """Add medians, ratios, tasks/s and memory per task to each row (in place)."""
    for r in rows:
        r["median_s"] = statistics.median(r["wall_s"])
        r["min_s"], r["max_s"] = min(r["wall_s"]), max(r["wall_s"])
        r["tasks_per_s"] = n_tasks / r["median_s"]
        base = r["probe_idle_rss_bytes"]
        r["probe_per_task_bytes"] = (r["probe_peak_rss_bytes"] - base) / r["probe_copies"]
        r["probe_per_task_x_statevector"] = r["probe_per_task_bytes"] / (16 * 2**probe.qubits)
    floor = next((r for r in rows if r["row"] == "floor"), None)
    executors = [r for r in rows if r["row"] != "floor"]
    best = min((r["median_s"] for r in executors), default=None)
    for r in rows:
        r["x_floor"] = r["median_s"] / floor["median_s"] if floor else None
        r["x_best"] = r["median_s"] / best if best else None


def table(rows: list[dict[str, Any]], probe: Circuit) -> str:
    headers = ["Row", "Concurrency", "Wall s (median, min-max)", "x floor", "x best executor",
               "Tasks/s", "Idle RSS MiB", "Peak RSS MiB",
               f"Peak per concurrent {probe.qubits}-qubit task, MiB above idle (x statevector)"]
    body = []
    for r in rows:
        body.append([
            r["executor"],
            str(r["concurrency"]),
            f"{r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f})",
            f"{r['x_floor']:.2f}x" if r["x_floor"] is not None else "",
            f"{r['x_best']:.2f}x" if r["row"] != "floor" and r["x_best"] else "",
            f"{r['tasks_per_s']:.2f}",
            f"{r['idle_rss_bytes'] / MIB:.0f}",
            f"{r['peak_rss_bytes'] / MIB:.0f}",
            f"{r['probe_per_task_bytes'] / MIB:.0f} ({r['probe_per_task_x_statevector']:.2f}x)",
        ])
    return markdown_table(headers, body)


def chart(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["executor"] if r["row"] == "floor" else f"{r['executor']}\nc={r['concurrency']}"
              for r in rows]
    med = [r["median_s"] for r in rows]
    err = [[r["median_s"] - r["min_s"] for r in rows], [r["max_s"] - r["median_s"] for r in rows]]
    colors = {"floor (Aer alone)": "#555555", "thread": "#1f77b4", "process": "#2ca02c",
              "asyncio": "#d62728"}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    bars = ax.bar(labels, med, yerr=err, capsize=4,
                  color=[colors.get(r["executor"], "#9467bd") for r in rows])
    for bar, r in zip(bars, rows, strict=True):
        if r["x_floor"] is not None:
            ax.annotate(f"{r['x_floor']:.2f}x", (bar.get_x() + bar.get_width() / 2,
                                                 bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                        textcoords="offset points")
    ax.set_ylabel("suite wall time, s (median, min-max)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"small circuits ({','.join(map(str, QUICK_QUBITS))} qubits)")
    p.add_argument("--qubits", help="comma-separated widths (default 21,22,23)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the suite per row")
    p.add_argument("--executors", default=",".join(EXECUTORS),
                   help="comma-separated: thread,process,asyncio")
    p.add_argument("--concurrency", default="1,2,4", help="comma-separated worker slots")
    p.add_argument("--no-floor", action="store_true", help="skip the floor row")
    p.add_argument("--out", type=Path, help="directory for JSON/markdown/PNG "
                   "(default benchmarks/results, or a temporary one with --quick)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--floor-child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor_child:
        floor_child(args.floor_child)
        return 0

    widths = (parse_ints(args.qubits) if args.qubits
              else list(QUICK_QUBITS if args.quick else FULL_QUBITS))
    executors = [e for e in args.executors.split(",") if e]
    for e in executors:
        if e not in EXECUTORS:
            p.error(f"unknown executor {e!r}; choose from {', '.join(EXECUTORS)}")
    concurrencies = parse_ints(args.concurrency)
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="qtasks-bench-")) if args.quick
                           else RESULTS)

    env = isolated_env()
    os.environ.update(env)  # app.tasks (imported below) reads its settings at import
    from tqdm import tqdm

    print(f"building the suite ({','.join(map(str, widths))} qubits) ...", file=sys.stderr)
    suite = build_suite(widths)
    probe = build("ghz", max(widths))
    specs: list[tuple[str, int]] = [] if args.no_floor else [("floor", 1)]
    specs += [(e, c) for e in executors for c in concurrencies]
    suite_file = Path(tempfile.mkstemp(prefix="qtasks-suite-", suffix=".json")[1])
    suite_file.write_text(json.dumps({
        "circuits": [{"name": c.name, "qasm": c.qasm, "shots": c.shots, "seed": c.seed}
                     for c in suite],
        "probe": {"name": probe.name, "qasm": probe.qasm, "shots": probe.shots,
                  "seed": probe.seed}}))
    runners: list[FloorRow | ExecutorRow] = []
    try:
        print(f"starting {len(specs)} rows ...", file=sys.stderr)
        for executor, conc in specs:
            runners.append(FloorRow(suite_file) if executor == "floor"
                           else ExecutorRow(env, executor, conc))
        time.sleep(1.0)
        for r in runners:
            r.settle()
        # Rounds: every row runs the suite once per round, rows in turn, so a busy moment
        # of a shared machine does not fall on one row alone.
        with tqdm(total=len(specs) * args.repeats * len(suite), unit="circuit",
                  desc="benchmark", file=sys.stderr, disable=args.no_progress) as bar:
            for _ in range(args.repeats):
                for r in runners:
                    bar.set_postfix_str(r.result["row"])
                    load = os.getloadavg()[0]
                    if isinstance(r, FloorRow):
                        r.run_suite(lambda: bar.update())
                    else:
                        r.run_suite(suite, lambda: bar.update())
                    # Other work on the machine shows here (1-minute load averages).
                    r.result.setdefault("load_avg", []).append([load, os.getloadavg()[0]])
        for r in runners:
            if isinstance(r, FloorRow):
                r.probe()
            else:
                r.probe(probe)
    finally:
        for r in runners:
            r.stop()
        suite_file.unlink(missing_ok=True)
        from app.tasks import app as qapp

        qapp.close()
        asyncio.run(cleanup(env))
    rows = [r.result for r in runners]

    summarise(rows, len(suite), probe)
    m = machine()
    head = (f"Circuit suite: {len(suite)} circuits (qft, qv depth {10}, random depth 20, ghz at "
            f"{', '.join(map(str, widths))} qubits; {suite[0].shots} shots), "
            f"median of {args.repeats}; {machine_line(m)}")
    text = "\n".join([head, "", table(rows, probe)])
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "executors-quick" if args.quick else "executors"
    (out_dir / f"{name}.md").write_text(text + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps({
        "machine": m,
        "suite": [{"name": c.name, "qubits": c.qubits, "kib": round(c.kib, 1),
                   "sha256": c.sha256} for c in suite],
        "probe": probe.name,
        "repeats": args.repeats,
        "rows": rows}, indent=2) + "\n")
    title = (f"{len(suite)} circuits at {','.join(map(str, widths))} qubits, median of "
             f"{args.repeats}; {m['date']}, {m['cores']} cores, {m['memory_gib']} GiB")
    chart(rows, title, out_dir / f"{name}.png")
    print(f"\nsaved {out_dir / name}.json/.md/.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
