#!/usr/bin/env python3
"""Developer entry point: ``python3 run.py server`` or ``python3 run.py tests``.

Both commands work on a fresh clone with only Python 3.11+ and pip: they
create ``.venv`` beside this file (once), install the project into it, and
then run the server or the whole test suite (lint, type check, tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed"


def _run(*cmd: str | Path) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT)


def _ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py itself may start on an older Python
        sys.exit(f"e-Link needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = f"{extras}:{(ROOT / 'pyproject.toml').stat().st_mtime_ns}"
    installed = STAMP.read_text().split("\n") if STAMP.exists() else []
    if wanted in installed:
        return
    target = f".[{extras}]" if extras else "."
    if (
        _run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target)
        != 0
    ):
        sys.exit("installing the project failed")
    STAMP.write_text("\n".join([*installed, wanted]))


def server(args: list[str]) -> int:
    _ensure_venv("")
    return _run(BIN / "elink-server", "serve", *args)


def tests(args: list[str]) -> int:
    _ensure_venv("test")
    steps: list[tuple[str | Path, ...]] = [
        (BIN / "ruff", "check", "."),
        (BIN / "mypy",),
        (PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args),
    ]
    for step in steps:
        code = _run(*step)
        if code != 0:
            return code
    return 0


def main() -> int:
    commands = {"server": server, "tests": tests}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__.strip())
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
