#!/usr/bin/env python3
"""Set-up and entry points, with nothing but Python 3.11+ installed.

    python3 manage.py up      # the service: API + worker (embedded NATS/Redis if none answer)
    python3 manage.py test    # lint, type check and the whole test suite

Both create ./.venv and install the project into it first (again only when
pyproject.toml changes). Extra arguments are passed on (``test -k bell``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("QTASKS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before the venv exists
        sys.exit("qtasks needs Python 3.11 or newer")
    stamp = VENV / ".qtasks-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and stamp.exists() and stamp.read_text() == want:
        return
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing qtasks[dev] into it ...", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    stamp.write_text(want)


def _run(cmd: list[str]) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def test(args: list[str]) -> int:
    _ensure_venv()
    for check in (
        [str(BIN / "ruff"), "check", "qtasks", "app", "tests", "benchmarks", "manage.py"],
        [str(BIN / "mypy")],
    ):
        if (rc := _run(check)) != 0:
            return rc
    return _run([str(PY), "-m", "pytest", *args])


def up(args: list[str]) -> int:
    _ensure_venv()
    try:
        return _run([str(PY), "-m", "app.serve", *args])
    except KeyboardInterrupt:
        return 0


def main() -> int:
    commands = {"test": test, "up": up}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
