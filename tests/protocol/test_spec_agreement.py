"""docs/protocol.md and the code agree: every packet type, error code, cipher
suite, signature algorithm and state transition in one is in the other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elink_protocol import packets as p
from elink_protocol.crypto.suites import CipherSuite, SignatureAlgorithm
from elink_protocol.errors import ErrorCode
from elink_protocol.frame import Priority
from elink_protocol.state import Role, mermaid_diagram

SPEC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def _section(number: str) -> str:
    """The text of one ``§N.N`` section, up to the next heading."""
    match = re.search(rf"^#+ §{re.escape(number)} .*?(?=^#+ §)", SPEC, re.M | re.S)
    assert match, f"spec has no section §{number}"
    return match.group(0)


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| `0x"):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_packet_table_matches_registry() -> None:
    rows = [row for row in _table_rows(_section("5")) if "-" not in row[0]]  # skip type ranges
    in_spec = {int(code, 16): (name, prio, phase, nu) for code, name, prio, phase, nu, *_ in rows}
    phases = {
        p.Phase.HANDSHAKE: "handshake",
        p.Phase.ESTABLISHED: "established",
        p.Phase.ANY: "any",
    }
    in_code = {
        t: (
            cls.__name__,
            Priority(cls.PRIORITY).name.lower(),
            phases[cls.PHASES],
            "N" if cls.NUMBERED else "U",
        )
        for t, cls in p.PACKET_TYPES.items()
    }
    assert in_spec == in_code


def test_error_code_table_matches_enum() -> None:
    rows = _table_rows(_section("8"))
    in_spec = {int(code, 16): name for code, name, *_ in rows}
    assert in_spec == {int(c): c.name for c in ErrorCode}


def test_suite_table_matches_enum() -> None:
    rows = _table_rows(_section("7"))
    names = {c.name for c in CipherSuite} | {a.name for a in SignatureAlgorithm}
    in_spec = {(int(code, 16), name) for code, name, *_ in rows if name in names}
    in_code = {(int(c), c.name) for c in CipherSuite} | {
        (int(a), a.name) for a in SignatureAlgorithm
    }
    assert in_spec == in_code


@pytest.mark.parametrize("role", list(Role))
def test_state_diagrams_are_generated_from_the_table(role: Role) -> None:
    assert f"```mermaid\n{mermaid_diagram(role)}\n```" in SPEC


def test_every_section_reference_exists() -> None:
    headings = set(re.findall(r"^#+ §([\d.]+) ", SPEC, re.M))
    paragraphs = set(re.findall(r"^§([\d.]+) ", SPEC, re.M))
    known = headings | paragraphs
    missing = set()
    for ref in re.findall(r"§(\d+(?:\.\d+)*)", SPEC):
        if ref not in known and not any(k.startswith(ref + ".") for k in known):
            missing.add(ref)
    assert missing == set()


def test_appendix_is_rendered_from_the_vectors() -> None:
    from elink_protocol.vectors import appendix

    assert appendix.render() in SPEC
