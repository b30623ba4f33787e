"""Run-wide hooks: a terminal-summary section for lines tests want in the CI
log (see tests/helpers/summary.py)."""

from __future__ import annotations

import pytest

from tests.helpers.summary import SUMMARY_LINES


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(SUMMARY_LINES, [])
    if lines:
        terminalreporter.section("e-Link")
        for line in lines:
            terminalreporter.write_line(line)
