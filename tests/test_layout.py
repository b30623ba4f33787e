"""Every test folder is a package, so two test files may share a name
(tests/sdk/test_files.py and tests/server/test_files.py) without pytest
importing one in place of the other."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_folder_is_a_package() -> None:
    folders = {path.parent for path in TESTS.rglob("test_*.py")} | {TESTS}
    missing = sorted(
        str(f.relative_to(TESTS.parent)) for f in folders if not (f / "__init__.py").exists()
    )
    assert missing == [], f"add an empty __init__.py to: {', '.join(missing)}"
