"""The layering rules of the house (DEVELOPERS.md, STYLE.md), checked on the
import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "elink_protocol": {
        "trio",
        "socket",
        "asyncio",
        "time",
        "anyio",
        "threading",
        "selectors",
        "elink_server",
        "elink_sdk",
    },
    "elink_sdk": {"elink_server"},
    # The suite checks *any* server: it talks to one over the network only,
    # with the protocol library and deliberately wrong bytes.
    "conformance": {"elink_server", "elink_sdk"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layering(package: str) -> None:
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_server_services_do_not_parse_bytes() -> None:
    """Server services receive typed events; only the protocol layer touches
    frames, msgpack and struct."""
    services = ROOT / "elink_server" / "services"
    assert services.is_dir()
    offenders = {}
    for path in sorted(services.rglob("*.py")):
        bad = _imports(path) & {"struct", "msgpack", "socket"}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import trio\nfrom socket import socket\nfrom . import x\n")
    assert _imports(sample) == {"trio", "socket"}
