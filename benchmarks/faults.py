"""The reliability table: run the fault-injection tests, collect the figures each one
records, and render them as markdown.

    python benchmarks/faults.py                # run tests/test_faults.py, print the table
    python benchmarks/faults.py --readme       # and put it in README.md ("## Reliability")
    python benchmarks/faults.py --run-slow     # include the slow ones (23-qubit circuit)
    python benchmarks/faults.py --render-only  # render benchmarks/results/faults.json again

Each test appends one JSON line (fault, tasks, lost, duplicates, seconds, note) to the file
named by $QTASKS_FAULTS_REPORT (tests/support.py: record_fault); the rows and the machine
go to benchmarks/results/faults.json. The README's table sits between two markers in its
"## Reliability" section and only that part is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, machine_line, markdown_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
README = ROOT / "README.md"
START = "<!-- faults-table:start (benchmarks/faults.py --readme) -->"
END = "<!-- faults-table:end -->"
REPORT_ENV = "QTASKS_FAULTS_REPORT"  # tests/support.py FAULTS_REPORT_ENV


def run_tests(run_slow: bool, extra: list[str]) -> tuple[int, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="qtasks-faults-") as tmp:
        report = Path(tmp) / "rows.jsonl"
        cmd = [sys.executable, "-m", "pytest", "tests/test_faults.py", "-m", "faults", "-q",
               "-p", "no:cacheprovider", *(["--run-slow"] if run_slow else []), *extra]
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, REPORT_ENV: str(report)})
        lines = report.read_text().splitlines() if report.exists() else []
    return rc, [json.loads(line) for line in lines if line.strip()]


def render(data: dict[str, Any]) -> str:
    rows = [
        [
            r["fault"],
            f"{r['tasks']:,}",
            str(r["lost"]),
            str(r["duplicates"]),
            f"{r['seconds']:.1f}",
            r.get("note", ""),
        ]
        for r in data["rows"]
    ]
    table = markdown_table(["fault", "tasks", "lost", "duplicate runs", "seconds", "notes"], rows)
    status = "all passed" if data["pytest_exit"] == 0 else f"pytest exit {data['pytest_exit']}"
    return f"{table}\n\nMeasured {machine_line(data['machine'])}; {status}."


def update_readme(table: str) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no table markers ({START} ... {END})")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"updated {README}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    p.add_argument("--run-slow", action="store_true", help="include tests marked slow")
    p.add_argument("--render-only", action="store_true", help=f"render {RESULTS.name} again")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (e.g. -k kill)")
    args = p.parse_args()
    if args.render_only:
        data = json.loads(RESULTS.read_text())
    else:
        rc, rows = run_tests(args.run_slow, args.pytest_args)
        data = {"machine": machine(), "pytest_exit": rc, "rows": rows}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    table = render(data)
    print(table)
    if args.readme:
        update_readme(table)
    return 0 if data["pytest_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
