"""The application packet vectors (``elink_protocol/vectors/app_packets.json``,
spec §11.11): the stored file is what the code produces, and every vector
decodes back to its packet, from its payload and from its frame."""

from __future__ import annotations

from typing import Any

import pytest

from elink_protocol import app, vectors
from elink_protocol import packets as p
from elink_protocol.frame import Flags, Priority, decode_frames_untrusted
from elink_protocol.payload import decode_payload_untrusted
from elink_protocol.vectors import generate_app

APP = vectors.load("app_packets")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"bin"}:
            return bytes.fromhex(value["bin"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def test_stored_vectors_are_what_the_code_produces() -> None:
    assert vectors.dumps(generate_app.build()) == vectors.dumps(APP)


def test_vectors_cover_every_app_packet() -> None:
    names = {v["packet"] for v in APP["vectors"]}
    assert names == {c.__name__ for t, c in p.PACKET_TYPES.items() if t >= app.APP_TYPES_FIRST}
    assert len({v["name"] for v in APP["vectors"]}) == len(APP["vectors"])


@pytest.mark.parametrize("vector", APP["vectors"], ids=lambda v: v["name"])
def test_vector_decodes(vector: dict[str, Any]) -> None:
    cls = p.PACKET_TYPES[vector["type"]]
    assert cls.__name__ == vector["packet"]
    payload = bytes.fromhex(vector["payload"])
    fields = decode_payload_untrusted(payload)
    assert fields == _from_json(vector["fields"])
    packet = cls.from_payload_untrusted(fields)
    assert packet.to_payload() == fields
    (frame,) = decode_frames_untrusted(bytes.fromhex(vector["frame"]))
    assert frame.type == cls.TYPE and frame.payload == payload
    assert frame.flags == 0 and not frame.flags & Flags.UNNUMBERED
    assert Priority(frame.priority) is cls.PRIORITY
