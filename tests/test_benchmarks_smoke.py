"""The benchmarks still run end to end: small sizes, real NATS and Redis, under a minute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def run(script: str, *args: str, out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--no-progress",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_executor_benchmark_quick_prints_a_table_with_the_floor_and_thread_rows(
    tmp_path: Path,
) -> None:
    stdout = run("run.py", "--quick", "--repeats", "1", "--executors", "thread",
                 "--concurrency", "1,2", out=tmp_path)
    rows = table_rows(stdout)
    assert [r[0] for r in rows] == ["floor (Aer alone)", "thread", "thread"]
    assert [r[1] for r in rows] == ["1", "1", "2"]
    assert all(float(r[2].split()[0]) > 0 for r in rows)
    saved = json.loads((tmp_path / "executors-quick.json").read_text())
    assert len(saved["suite"]) == 12 and len(saved["rows"]) == 3
    assert (tmp_path / "executors-quick.png").stat().st_size > 0


def test_overhead_benchmark_quick_prints_the_floor_and_a_row_per_executor(tmp_path: Path) -> None:
    stdout = run("overhead.py", "--quick", out=tmp_path)
    rows = [r for r in table_rows(stdout) if not r[0].startswith("target")]
    assert [r[0].split()[0] for r in rows] == ["floor", "qtasks", "qtasks"]
    assert all(float(r[1].replace(",", "")) > 0 for r in rows)  # tasks/s
    saved = json.loads((tmp_path / "overhead.json").read_text())
    assert set(saved["rows"]) == {r[0] for r in rows}
    # each qtasks row is judged against the targets and against this run's floor
    assert stdout.count("Targets, qtasks") == 2
    assert stdout.count("relative to this run's floor") == 4
