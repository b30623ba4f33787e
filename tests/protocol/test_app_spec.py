"""docs/protocol.md §11 and elink_protocol.app agree: every packet and record
has a field table with exactly its keys and their required-ness, the §5.5 row
of each packet points at its definition, and the error table is AppErrorCode."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from elink_protocol import app
from elink_protocol import packets as p

SPEC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
S11 = SPEC[SPEC.index("## §11 ") : SPEC.index("## Appendix A")]
# §9 defines the file packets in the same form as §11.
S9 = SPEC[SPEC.index("## §9 ") : SPEC.index("## §10 ")]

_DEFINITION = re.compile(
    r"^§([\d.]+) \*\*(\w+)\*\* \((?:`0x([0-9a-f]{4})`, (client|server|either), (\w+)|record)\)",
    re.M,
)
RECORDS = [
    app.Message,
    app.MessageEvent,
    app.RecallEvent,
    app.StatusEvent,
    app.DeliveryReceipt,
    app.ReadReceipt,
    app.PresenceEntry,
    app.DevicePresence,
    app.ManifestEntry,
    app.Manifest,
]
PACKETS = [cls for t, cls in sorted(p.PACKET_TYPES.items()) if t >= app.APP_TYPES_FIRST]


def _definitions() -> dict[str, tuple[str, str | None, str | None, str | None, list[list[str]]]]:
    """name -> (section, type code, sender, priority, table rows) for every
    bold definition paragraph of §11, with the first table after it."""
    out = {}
    text = S9 + S11
    for match in _DEFINITION.finditer(text):
        section, name, code, sender, priority = match.groups()
        rest = text[match.end() :]
        table = rest[rest.index("\n| Key |") :]
        rows = []
        for line in table.splitlines()[3:]:
            if not line.startswith("| `"):
                break
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        assert name not in out, f"{name} defined twice"
        out[name] = (section, code, sender, priority, rows)
    return out


DEFINED = _definitions()


def _wire_fields(cls: type) -> dict[str, bool]:
    """wire key -> required, as the code declares it."""
    fields = {
        f.metadata["wire"][0]: f.default is attrs.NOTHING
        for f in attrs.fields(cls)
        if "wire" in f.metadata
    }
    if issubclass(cls, app.SyncEvent):
        fields["k"] = True
    return fields


def _table_fields(rows: list[list[str]]) -> dict[str, bool]:
    return {row[0].strip("`"): row[2].startswith("yes") for row in rows}


def test_every_packet_and_record_is_defined() -> None:
    assert set(DEFINED) == {c.__name__ for c in PACKETS + RECORDS}


@pytest.mark.parametrize("cls", PACKETS, ids=lambda c: c.__name__)
def test_packet_definition_matches_the_code(cls: type[app.AppPacket]) -> None:
    section, code, sender, priority, rows = DEFINED[cls.__name__]
    assert code is not None and int(code, 16) == cls.TYPE
    assert sender == (cls.SENDER.value if cls.SENDER else "either")
    assert priority == cls.PRIORITY.name.lower()
    assert _table_fields(rows) == _wire_fields(cls)
    row = f"| `0x{cls.TYPE:04x}` | {cls.__name__} | "
    (line,) = [x for x in SPEC.splitlines() if x.startswith(row)]
    assert line.rstrip().endswith(f"| §{section} |")


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_record_definition_matches_the_code(cls: type) -> None:
    *_, rows = DEFINED[cls.__name__]
    assert _table_fields(rows) == _wire_fields(cls)
    if issubclass(cls, app.SyncEvent):
        (k_row,) = [r for r in rows if r[0] == "`k`"]
        assert f"`{cls.KIND}`" in k_row[3]


def test_error_code_table_matches_the_enum() -> None:
    table = S11[S11.index("### §11.10 ") : S11.index("### §11.11 ")]
    rows = [
        [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| `0x")
    ]
    assert {int(code, 16): name for code, name, *_ in rows} == {
        int(c): c.name for c in app.AppErrorCode
    }
    for code in app.AppErrorCode:
        assert 0x0100 <= code <= 0x7FFF


def test_limits_in_the_text_are_the_code_limits() -> None:
    content = S11[S11.index("§11.4.2 ") : S11.index("§11.4.3 ")]
    assert f"at most {app.MAX_CONTENT_SIZE} bytes" in content
    assert f"str ≤ {app.MAX_TEXT}" in content
    assert f"1 to {app.MAX_TEXT} bytes" in content
    for flag in app.MessageFlags:
        if flag:
            assert f"`{flag.value:#x}`) | {flag.name} |" in S11
