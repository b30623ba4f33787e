"""The payload codec's limits (spec §5.1-§5.2)."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol.errors import ErrorCode, RemoteProtocolError
from elink_protocol.payload import (
    MAX_ARRAY_LEN,
    MAX_DEPTH,
    MAX_MAP_LEN,
    decode_payload_untrusted,
    encode_payload,
)


def _rejects(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload_untrusted(data)
    assert info.value.error_code is ErrorCode.PAYLOAD_INVALID


def test_round_trip_and_empty() -> None:
    value = {"a": 1, "b": b"\x00\xff", "c": [1, "x", {"d": None}], "e": "你好"}
    assert decode_payload_untrusted(encode_payload(value)) == value
    assert decode_payload_untrusted(b"") == {}


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb({1: 2}),  # int key
        msgpack.packb({b"k": 2}, use_bin_type=True),  # bytes key
        msgpack.packb({"a": {b"k": 1}}, use_bin_type=True),  # nested bytes key
        msgpack.packb({"a": 1}) + b"\xc0",  # trailing bytes
        msgpack.packb({"a": "x" * 10})[:-2],  # truncated
        b"\xc1",  # never-used byte
        msgpack.packb({"a": msgpack.ExtType(1, b"x")}),  # ext type
        b"\x81\xa1a\xdb\xff\xff\xff\xff",  # str32 of 4 GiB announced
        b"\xdf\x7f\xff\xff\xff",  # map32 with 2**31 entries announced
        msgpack.packb({"a": list(range(MAX_ARRAY_LEN + 1))}),
        msgpack.packb({str(i): i for i in range(MAX_MAP_LEN + 1)}),
    ],
)
def test_hostile_payloads_are_rejected(data: bytes) -> None:
    _rejects(data)


def test_depth_limit() -> None:
    value: object = 1
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    _rejects(msgpack.packb({"a": value}))
    ok: object = 1
    for _ in range(MAX_DEPTH - 1):
        ok = [ok]
    assert decode_payload_untrusted(msgpack.packb({"a": ok})) == {"a": ok}


@given(st.binary(max_size=300))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_payload_untrusted(data)
