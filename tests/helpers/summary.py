"""Lines a test wants in the terminal summary of the run, even under ``-q``
(``tests/conftest.py`` prints them): the conformance suite's summary line
belongs in the CI log."""

from __future__ import annotations

import pytest

SUMMARY_LINES = pytest.StashKey[list[str]]()


def add_summary_line(config: pytest.Config, line: str) -> None:
    """Print ``line`` in the "e-Link" section at the end of the run."""
    config.stash.setdefault(SUMMARY_LINES, []).append(line)
