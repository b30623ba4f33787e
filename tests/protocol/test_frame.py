"""The frame codec (spec §4) against the vectors, at every split, and fuzzed."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol import vectors
from elink_protocol.errors import ErrorCode, RemoteProtocolError
from elink_protocol.frame import (
    HEADER_SIZE,
    MAX_WIRE_PAYLOAD,
    Flags,
    Frame,
    FrameBuffer,
    Priority,
    decode_frames_untrusted,
)
from elink_protocol.vectors import generate_frames
from tests.helpers.splitting import all_splits

FRAMES = vectors.load("frames")


def _parse_stream(chunks: list[bytes]) -> list[Frame]:
    buf = FrameBuffer(max_buffer=64 * 1024)
    out = []
    for chunk in chunks:
        buf.feed(chunk)
        while (frame := buf.next_frame_untrusted()) is not None:
            out.append(frame)
    buf.feed(b"")
    assert buf.next_frame_untrusted() is None
    assert buf.eof
    return out


def test_stored_vectors_are_what_the_code_produces() -> None:
    assert vectors.dumps(generate_frames.build()) == vectors.dumps(FRAMES)


@pytest.mark.parametrize("vector", FRAMES["valid"], ids=lambda v: v["name"])
def test_valid_vector_round_trips_at_every_split(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    fields = vector["fields"]
    expected = Frame(
        type=fields["type"],
        pid=fields["pid"],
        ack=fields["ack"],
        flags=Flags(fields["flags"]),
        priority=Priority(fields["priority"]),
        key_phase=fields["key_phase"],
        payload=bytes.fromhex(fields["payload"]),
    )
    assert expected.encode() == data
    for chunks in all_splits(data + data):
        assert _parse_stream(chunks) == [expected, expected]
    assert decode_frames_untrusted(data + data) == [expected, expected]


@pytest.mark.parametrize("vector", FRAMES["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_gives_the_specified_error(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    code = ErrorCode[vector["error"]]
    for chunks in all_splits(data):
        with pytest.raises(RemoteProtocolError) as info:
            _parse_stream(chunks)
        assert info.value.error_code is code
    with pytest.raises(RemoteProtocolError) as info:
        decode_frames_untrusted(data)
    assert info.value.error_code is code


def test_oversized_length_is_refused_before_the_payload_arrives() -> None:
    header = bytearray(Frame(type=0x8001).encode())
    header[12:14] = (MAX_WIRE_PAYLOAD + 1).to_bytes(2, "big")
    buf = FrameBuffer(max_buffer=1 << 20)
    buf.feed(bytes(header))  # no payload bytes at all yet
    with pytest.raises(RemoteProtocolError) as info:
        buf.next_frame_untrusted()
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE


def test_largest_legal_frame_parses() -> None:
    frame = Frame(type=0x8001, flags=Flags.ENCRYPTED, payload=b"\x00" * MAX_WIRE_PAYLOAD)
    assert decode_frames_untrusted(frame.encode()) == [frame]


def test_receive_buffer_is_bounded() -> None:
    buf = FrameBuffer(max_buffer=1024)
    with pytest.raises(RemoteProtocolError) as info:
        buf.feed(b"\x01" * (1024 + HEADER_SIZE + MAX_WIRE_PAYLOAD + 1))
    assert info.value.error_code is ErrorCode.RESOURCE_LIMIT


def test_data_after_eof_is_an_error() -> None:
    buf = FrameBuffer(max_buffer=1024)
    buf.feed(b"")
    with pytest.raises(RemoteProtocolError):
        buf.feed(b"x")


frames_strategy = st.builds(
    Frame,
    type=st.integers(0, 0xFFFF),
    pid=st.integers(0, 0xFFFFFFFF),
    ack=st.integers(0, 0xFFFFFFFF),
    flags=st.sampled_from([Flags(0), Flags.UNNUMBERED, Flags.MORE_FRAGMENTS, Flags.ENCRYPTED]),
    priority=st.sampled_from(list(Priority)),
    payload=st.binary(max_size=300),
)


@given(st.lists(frames_strategy, min_size=1, max_size=5), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_any_frames_round_trip_at_random_splits(frames: list[Frame], rnd) -> None:
    data = b"".join(f.encode() for f in frames)
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, 6)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert _parse_stream(chunks) == frames
    assert decode_frames_untrusted(data) == frames


def _mutations() -> st.SearchStrategy[bytes]:
    valid = [bytes.fromhex(v["hex"]) for v in FRAMES["valid"]]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) + draw(st.binary(max_size=8))

    return mutate()


@given(st.one_of(st.binary(max_size=200), _mutations()))
@settings(max_examples=2000, deadline=None)
def test_receiving_raises_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _parse_stream([data])
    with contextlib.suppress(RemoteProtocolError):
        decode_frames_untrusted(data)
