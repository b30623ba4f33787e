"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_quick_start_is_the_two_commands_ci_runs() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [
        line.split("#")[0].strip()
        for line in re.findall(r"```sh\n(.*?)```", quick, re.S)[0].splitlines()
    ]
    assert commands == ["python3 run.py server", "python3 run.py tests"]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "python3 run.py tests" in ci
