"""The UDP envelope and the address-validation tokens (docs/protocol.md §6.9)."""

from __future__ import annotations

import itertools

import pytest

from elink_protocol import udp

CID = bytes(range(8))
ADDR = udp.address_bytes("192.0.2.7", 40000)


_DRAWS = itertools.count()


def _counter_random(size: int) -> bytes:
    """Distinct, reproducible "random" secrets."""
    return next(_DRAWS).to_bytes(size, "big")


def test_initial_is_padded_to_1200_and_round_trips() -> None:
    datagram = udp.encode_initial(CID, b"tok", b"frames")
    assert len(datagram) == udp.INITIAL_SIZE == 1200
    env = udp.decode_envelope_untrusted(datagram)
    assert env == udp.Envelope(
        kind=udp.Kind.INITIAL, connection_id=CID, token=b"tok", frames=b"frames"
    )


def test_retry_is_small_and_round_trips() -> None:
    token = bytes(udp.MAX_TOKEN_SIZE)
    datagram = udp.encode_retry(CID, token)
    assert len(datagram) == 74  # the bound §6.9.3 states
    assert udp.decode_envelope_untrusted(datagram) == udp.Envelope(
        kind=udp.Kind.RETRY, connection_id=CID, token=token
    )


def test_data_round_trips_and_has_a_frames_limit() -> None:
    frames = b"x" * udp.DATA_FRAMES_LIMIT
    datagram = udp.encode_data(CID, frames)
    assert len(datagram) == udp.MAX_DATAGRAM_SIZE
    assert udp.decode_envelope_untrusted(datagram) == udp.Envelope(
        kind=udp.Kind.DATA, connection_id=CID, frames=frames
    )
    with pytest.raises(ValueError):
        udp.encode_data(CID, frames + b"x")


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\xe3" + bytes(7),  # shorter than the envelope
        b"\x01" + bytes(20),  # unknown kind
        udp.encode_initial(CID, b"", b"f")[:1199],  # INITIAL not padded to 1200
        udp.encode_initial(CID, b"", b"f")[:-1] + b"\x01",  # padding not zero
        bytes([0xE1]) + CID + bytes([65]) + bytes(1190),  # token too long
        bytes([0xE1]) + CID + b"\x00" + b"\xff\xff" + bytes(1188),  # frames overrun
        bytes([0xE2]) + CID + b"\x00",  # empty RETRY token
        bytes([0xE2]) + CID + b"\x05abc",  # RETRY token length overruns
        udp.encode_retry(CID, b"abc") + b"x",  # bytes after the RETRY token
    ],
)
def test_malformed_envelopes_are_discarded(datagram: bytes) -> None:
    assert udp.decode_envelope_untrusted(datagram) is None


def test_every_truncation_of_an_initial_is_discarded() -> None:
    datagram = udp.encode_initial(CID, b"token", b"frames")
    for end in range(len(datagram)):
        assert udp.decode_envelope_untrusted(datagram[:end]) is None


def test_address_bytes_map_ipv4_into_ipv6() -> None:
    assert udp.address_bytes("127.0.0.1", 1) == udp.address_bytes("::ffff:127.0.0.1", 1)
    assert udp.address_bytes("127.0.0.1", 1) != udp.address_bytes("127.0.0.1", 2)
    assert len(udp.address_bytes("2001:db8::1", 7420)) == 18


def test_a_token_is_bound_to_address_connection_id_and_time() -> None:
    minter = udp.TokenMinter(now=1000.0, random=_counter_random)
    token = minter.issue(CID, ADDR, 1000.0)
    assert len(token) == 20
    assert minter.check(token, CID, ADDR, 1000.0)
    assert minter.check(token, CID, ADDR, 1010.0)  # 10 s lifetime
    assert not minter.check(token, CID, ADDR, 1011.0)
    assert not minter.check(token, CID, udp.address_bytes("192.0.2.7", 40001), 1000.0)
    assert not minter.check(token, bytes(8), ADDR, 1000.0)
    assert not minter.check(token[:-1] + bytes([token[-1] ^ 1]), CID, ADDR, 1000.0)
    assert not minter.check(token[:10], CID, ADDR, 1000.0)
    assert not minter.check(b"", CID, ADDR, 1000.0)


def test_a_token_from_the_future_is_refused() -> None:
    minter = udp.TokenMinter(now=1000.0, random=_counter_random)
    token = minter.issue(CID, ADDR, 1005.0)
    assert not minter.check(token, CID, ADDR, 1003.0)


def test_tokens_survive_one_secret_rotation_and_no_more() -> None:
    minter = udp.TokenMinter(now=0.0, lifetime=10.0, rotation=60.0, random=_counter_random)
    token = minter.issue(CID, ADDR, 55.0)
    assert minter.check(token, CID, ADDR, 61.0)  # rotated at 60: previous secret
    other = udp.TokenMinter(now=0.0, lifetime=10.0, rotation=60.0, random=_counter_random)
    assert not other.check(token, CID, ADDR, 56.0)  # another server's secret


def test_a_long_pause_drops_both_secrets() -> None:
    minter = udp.TokenMinter(now=0.0, lifetime=10.0, rotation=60.0, random=_counter_random)
    old = minter.issue(CID, ADDR, 0.0)
    minter.check(old, CID, ADDR, 500.0)  # rotates twice over
    assert not minter.check(old, CID, ADDR, 5.0)


def test_lifetime_must_be_shorter_than_rotation() -> None:
    with pytest.raises(ValueError):
        udp.TokenMinter(now=0.0, lifetime=60.0, rotation=60.0)
