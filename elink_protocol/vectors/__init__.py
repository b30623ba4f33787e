"""Test vectors of docs/protocol.md §10, shipped as JSON data files.

They are part of the specification: our tests load them, the conformance
suite replays them against other implementations, and anyone can read them.
Each file is produced by a ``generate_*`` module in this package; a test
checks that the stored file equals what the code produces now.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load(name: str) -> Any:
    """Parse ``elink_protocol/vectors/<name>.json``."""
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def dumps(data: Any) -> str:
    """The canonical text of a vector file (stable key order, newline at end)."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
