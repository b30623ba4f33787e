"""Packet schemas (spec §5.5-§5.6, §7.3)."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol import packets as p
from elink_protocol.errors import ErrorCode, RemoteProtocolError
from elink_protocol.payload import decode_payload_untrusted, encode_payload

EXAMPLES: list[p.Packet] = [
    p.ClientHello(
        versions=(1,),
        suites=(0x1301,),
        signature_algorithms=(0x0807,),
        random=b"r" * 32,
        key_share=b"k" * 32,
        features=("x",),
    ),
    p.ServerHello(version=1, suite=0x1301, random=b"s" * 32, key_share=b"k" * 32),
    p.ServerAuth(signature_algorithm=0x0807, public_key=b"p" * 32, signature=b"g" * 64),
    p.ClientFinished(
        verify=b"v" * 32, resume_session=b"i" * 16, resume_last_processed=9, resume_proof=b"q" * 32
    ),
    p.ServerFinished(verify=b"v" * 32, session_id=b"i" * 16, resumed=True, resume_last_processed=3),
    p.Ack(ranges=((5, 9), (11, 11)), delay=1234),
    p.Ping(data=b"abc"),
    p.Pong(data=b"abc"),
    p.Rekey(epoch=1, random=b"r" * 32, key_share=b"k" * 32),
    p.RekeyAck(epoch=1, random=b"r" * 32),
    p.Close(code=ErrorCode.GOING_AWAY, reason="bye", versions=(1,)),
]


def test_every_registered_type_has_an_example() -> None:
    # Application packets (0x0100 and up) have theirs in test_app_packets.py.
    core = {cls for t, cls in p.PACKET_TYPES.items() if t < 0x0100}
    assert {type(e) for e in EXAMPLES} == core


@pytest.mark.parametrize("packet", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(packet: p.Packet) -> None:
    payload = encode_payload(packet.to_payload())
    assert type(packet).from_payload_untrusted(decode_payload_untrusted(payload)) == packet


@pytest.mark.parametrize("packet", EXAMPLES, ids=lambda e: type(e).__name__)
def test_unknown_keys_are_ignored(packet: p.Packet) -> None:
    fields = {**packet.to_payload(), "zz-future": [1, 2, 3]}
    assert type(packet).from_payload_untrusted(fields) == packet


def _required_keys(cls: type[p.Packet]) -> list[str]:
    return [
        f.metadata["wire"][0]
        for f in attrs.fields(cls)
        if "wire" in f.metadata and f.default is attrs.NOTHING
    ]


@pytest.mark.parametrize("packet", EXAMPLES, ids=lambda e: type(e).__name__)
def test_missing_required_key_is_payload_invalid(packet: p.Packet) -> None:
    for key in _required_keys(type(packet)):
        fields = packet.to_payload()
        del fields[key]
        with pytest.raises(RemoteProtocolError) as info:
            type(packet).from_payload_untrusted(fields)
        assert info.value.error_code is ErrorCode.PAYLOAD_INVALID


WRONG_VALUES: list[Any] = [None, -1, 2**64 - 1, "s", b"", b"x" * 5000, [1] * 3, {"a": 1}, True, 1.5]


@pytest.mark.parametrize("packet", EXAMPLES, ids=lambda e: type(e).__name__)
def test_wrong_value_types_are_payload_invalid(packet: p.Packet) -> None:
    for key, good in packet.to_payload().items():
        for bad in WRONG_VALUES:
            if bad == good and type(bad) is type(good):
                continue
            fields = {**packet.to_payload(), key: bad}
            try:
                parsed = type(packet).from_payload_untrusted(fields)
            except RemoteProtocolError as exc:
                assert exc.error_code is ErrorCode.PAYLOAD_INVALID
            else:  # accepted only if it is a legal value of that field
                assert type(packet).from_payload_untrusted(parsed.to_payload()) == parsed


def test_ping_response_echoes() -> None:
    assert p.Ping(data=b"x").response() == p.Pong(data=b"x")


def test_extension_packet_range_is_enforced() -> None:
    p.UnknownPacket(type=0x8000)
    with pytest.raises(ValueError):
        p.UnknownPacket(type=0x0100)


@given(
    st.dictionaries(
        st.text(max_size=4),
        st.one_of(st.integers(), st.binary(), st.text(), st.lists(st.integers(), max_size=3)),
    )
)
@settings(max_examples=500, deadline=None)
def test_any_map_parses_or_raises_remote_error(fields: dict) -> None:
    for cls in p.PACKET_TYPES.values():
        with contextlib.suppress(RemoteProtocolError):
            cls.from_payload_untrusted(fields)
