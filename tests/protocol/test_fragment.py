"""Fragmentation and reassembly (docs/protocol.md §6.6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.fragment import Reassembler, max_fragment_size, split_payload
from elink_protocol.frame import HEADER_SIZE, Flags

M = Flags.MORE_FRAGMENTS
NONE = Flags(0)
DATA = 0x8001


def test_split_small_payload_is_one_piece() -> None:
    assert split_payload(b"", 10) == [b""]
    assert split_payload(b"abc", 3) == [b"abc"]


def test_split_cuts_full_pieces_then_the_rest() -> None:
    assert split_payload(b"abcdefgh", 3) == [b"abc", b"def", b"gh"]
    assert split_payload(b"abcdef", 3) == [b"abc", b"def"]


def test_split_refuses_non_positive_size() -> None:
    with pytest.raises(LocalProtocolError):
        split_payload(b"abc", 0)


def test_max_fragment_size() -> None:
    assert max_fragment_size(1200, 16) == 1200 - HEADER_SIZE - 16
    with pytest.raises(LocalProtocolError):
        max_fragment_size(HEADER_SIZE + 16, 16)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=4096), size=st.integers(1, 1500))
def test_split_then_reassemble_roundtrip(payload: bytes, size: int) -> None:
    pieces = split_payload(payload, size)
    assert all(len(p) <= size for p in pieces)
    assert all(pieces[:-1]), "no empty non-final piece"
    r = Reassembler(4096)
    results = [
        r.add_untrusted(DATA, M if i < len(pieces) - 1 else NONE, piece)
        for i, piece in enumerate(pieces)
    ]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == payload
    assert not r.in_progress


def test_reassembly_limit_is_the_whole_payload() -> None:
    r = Reassembler(10)
    assert r.add_untrusted(DATA, M, b"12345") is None
    assert r.add_untrusted(DATA, NONE, b"67890") == b"1234567890"
    assert r.add_untrusted(DATA, M, b"12345") is None
    with pytest.raises(RemoteProtocolError) as info:
        r.add_untrusted(DATA, M, b"678901")
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE


def test_unfragmented_payload_over_limit() -> None:
    r = Reassembler(10)
    assert r.add_untrusted(DATA, NONE, b"x" * 10) == b"x" * 10
    with pytest.raises(RemoteProtocolError) as info:
        r.add_untrusted(DATA, NONE, b"x" * 11)
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE


def test_chain_interrupted_by_other_type() -> None:
    r = Reassembler(4096)
    r.add_untrusted(DATA, M, b"a")
    with pytest.raises(RemoteProtocolError) as info:
        r.add_untrusted(DATA + 1, NONE, b"b")
    assert info.value.error_code is ErrorCode.PROTOCOL_VIOLATION
    r = Reassembler(4096)
    r.add_untrusted(DATA, M, b"a")
    with pytest.raises(RemoteProtocolError):
        r.add_untrusted(DATA + 1, M, b"b")


def test_more_fragments_on_unnumbered_frame() -> None:
    r = Reassembler(4096)
    with pytest.raises(RemoteProtocolError) as info:
        r.add_untrusted(0x0011, Flags.UNNUMBERED | M, b"a")
    assert info.value.error_code is ErrorCode.FRAME_MALFORMED


def test_unnumbered_frame_does_not_touch_an_open_chain() -> None:
    r = Reassembler(4096)
    assert r.add_untrusted(DATA, M, b"ab") is None
    assert r.add_untrusted(0x0010, Flags.UNNUMBERED, b"ack") == b"ack"
    assert r.in_progress
    assert r.add_untrusted(DATA, NONE, b"cd") == b"abcd"


def test_empty_non_final_fragment() -> None:
    r = Reassembler(4096)
    with pytest.raises(RemoteProtocolError) as info:
        r.add_untrusted(DATA, M, b"")
    assert info.value.error_code is ErrorCode.FRAME_MALFORMED
    r = Reassembler(4096)
    r.add_untrusted(DATA, M, b"a")
    assert r.add_untrusted(DATA, NONE, b"") == b"a"  # an empty final piece is fine


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.sampled_from([DATA, DATA + 1, 0x0013]),
            st.sampled_from([NONE, M, Flags.UNNUMBERED, Flags.UNNUMBERED | M]),
            st.binary(max_size=40),
        ),
        max_size=30,
    )
)
def test_reassembler_raises_only_remote_protocol_error(
    frames: list[tuple[int, Flags, bytes]],
) -> None:
    r = Reassembler(100)
    for type_, flags, payload in frames:
        try:
            out = r.add_untrusted(type_, flags, payload)
        except RemoteProtocolError:
            return
        assert out is None or len(out) <= 100
