"""The README's examples run as written."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

from elink_sdk.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


#: First line of a block that is an excerpt, not a program: compiled (await
#: allowed at top level) but not run.  docs/sdk.md uses the same marker.
FRAGMENT = "# doc: fragment"


def test_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert any(not block.startswith(FRAGMENT) for block in blocks)
    for block in blocks:
        if block.startswith(FRAGMENT):
            compile(block, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        else:
            exec(compile(block, "README.md", "exec"), {})


def test_elink_commands_parse() -> None:
    lines = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", README, re.S)
        for line in block.splitlines()
        if line.startswith(".venv/bin/elink ")
    ]
    assert lines
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])


def test_quick_start_is_the_two_commands_ci_runs() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [
        line.split("#")[0].strip()
        for line in re.findall(r"```sh\n(.*?)```", quick, re.S)[0].splitlines()
    ]
    assert commands == ["python3 run.py server", "python3 run.py tests"]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "python3 run.py tests" in ci
