"""Render Appendix A of docs/protocol.md (worked examples in hex) from the
vector files, so the examples in the spec are the vectors, byte for byte.

``python -m elink_protocol.vectors.appendix`` prints the appendix; a test
checks that docs/protocol.md contains exactly this text.
"""

from __future__ import annotations

import sys
from typing import Any

from elink_protocol.crypto.suites import CipherSuite, SignatureAlgorithm
from elink_protocol.frame import Flags, Frame
from elink_protocol.packets import (
    ClientFinished,
    ClientHello,
    ServerAuth,
    ServerFinished,
    ServerHello,
)
from elink_protocol.vectors import load

_ORDER = (ClientHello, ServerHello, ServerAuth, ClientFinished, ServerFinished)


def _hex_block(data: str, width: int = 64) -> list[str]:
    return [data[i : i + width] for i in range(0, len(data), width)] or ["(empty)"]


def _frame_example(vector: dict[str, Any]) -> list[str]:
    f = vector["fields"]
    data = vector["hex"]
    return [
        "Header, field by field (§4.1):",
        "",
        "```",
        "01                version 1",
        f"{data[2:4]}                flags {f['flags']:#04x}",
        f"{data[4:8]}              type {f['type']:#06x} (ClientHello)",
        f"{data[8:16]}          pid {f['pid']}",
        f"{data[16:24]}          ack {f['ack']}",
        f"{data[24:28]}              length {len(f['payload']) // 2}",
        f"{data[28:30]}                priority {f['priority']} (control)",
        f"{data[30:32]}                key phase {f['key_phase']}",
        f"{data[32:40]}          pck = CRC-32 of bytes 0-15 and the payload",
        "```",
        "",
        "Payload (msgpack map):",
        "",
        "```",
        *_hex_block(f["payload"]),
        "```",
    ]


def _handshake_example(h: dict[str, Any]) -> list[str]:
    out = [
        f"### A.{{n}} {h['name']}",
        "",
        f"Suite `{CipherSuite(h['suite']).name}` ({h['suite']:#06x}), server signature "
        f"`{SignatureAlgorithm(h['signature_algorithm']).name}`. {h['note']}",
        "",
    ]
    for cls in _ORDER:
        payload = h["packets"][cls.__name__]
        frame = Frame(type=cls.TYPE, flags=Flags.UNNUMBERED, payload=bytes.fromhex(payload))
        out += [f"{cls.__name__} frame ({len(payload) // 2} payload bytes):", "", "```"]
        out += _hex_block(frame.encode().hex())
        out += ["```", ""]
    keys = h["keys"]
    out += ["Derived values (§7.3.7, §7.4):", "", "```"]
    for label, value in (
        ("T1", h["t1"]),
        ("T2", h["t2"]),
        ("T3", h["t3"]),
        ("pre-master", h["premaster"]),
        ("PRK", h["prk"]),
        ("master (epoch 0)", h["master_secret"]),
        ("resumption secret", h["resumption_secret"]),
        ("c2s key", keys["c2s"]["key"]),
        ("c2s iv", keys["c2s"]["iv"]),
        ("c2s mac key", keys["c2s"]["mac_key"]),
        ("s2c key", keys["s2c"]["key"]),
        ("s2c iv", keys["s2c"]["iv"]),
        ("s2c mac key", keys["s2c"]["mac_key"]),
    ):
        if value:
            out.append(f"{label:<18} {value}")
    out += ["```", ""]
    if h["randomized"]:
        out += [
            "RSA-PSS signatures and RSA-OAEP ciphertexts are randomized: another run gives "
            "other bytes there (and so other transcript hashes and keys); these are one "
            "recorded run, which a conforming implementation must accept.",
            "",
        ]
    return out


def _record_example(r: dict[str, Any]) -> list[str]:
    frame = r["aad"] + "00000000" + r["record"]
    return [
        f"`{r['suite_name']}`, {r['direction']}, epoch {r['epoch']}, counter {r['counter']}, "
        f"plaintext `{r['plaintext'] or '(empty)'}`:",
        "",
        "```",
        *_hex_block(frame),
        "```",
        "",
    ]


def render() -> str:
    frames = load("frames")
    crypto = load("crypto_vectors")
    out = [
        "## Appendix A Worked examples",
        "",
        "Generated from the vector files of §10 by `python -m elink_protocol.vectors.appendix`;"
        " a test keeps them identical. Hex is wire order.",
        "",
        "### A.1 A plaintext frame",
        "",
        f"The `client_hello` vector of `frames.json`: {frames['valid'][0]['note']}",
        "",
        "```",
        *_hex_block(frames["valid"][0]["hex"]),
        "```",
        "",
        *_frame_example(frames["valid"][0]),
        "",
        "### A.2 Encrypted frames",
        "",
        "One encrypted frame per suite: header bytes 0-15 (the associated data), a zero `pck`,"
        " then the record (§7.5). Keys are in `crypto_vectors.json` under `records`.",
        "",
    ]
    chosen: dict[int, dict[str, Any]] = {}
    for r in crypto["records"]:  # per suite, the longest plaintext shows most
        best = chosen.get(r["suite"])
        if best is None or len(r["plaintext"]) > len(best["plaintext"]):
            chosen[r["suite"]] = r
    for r in chosen.values():
        out += _record_example(r)
    n = 3
    for h in crypto["handshakes"]:
        out += [line.replace("{n}", str(n)) for line in _handshake_example(h)]
        n += 1
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
