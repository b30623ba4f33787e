"""Key updates, the "dynamic key exchange" (spec §7.7)."""

from __future__ import annotations

from typing import Any

import pytest

from elink_protocol import packets as p
from elink_protocol.crypto.record import record_protection
from elink_protocol.crypto.rekey import KeyUpdate, respond_to_rekey
from elink_protocol.crypto.suites import CipherSuite
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.vectors.generate_crypto import DeterministicRandom

MODERN = CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256
LEGACY = CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256
MASTER = b"\x11" * 32
EPOCH = 6


def update(suite: CipherSuite, seed: bytes = b"i") -> KeyUpdate:
    return KeyUpdate(suite=suite, master=MASTER, epoch=EPOCH, random=DeterministicRandom(seed))


def respond(suite: CipherSuite, rekey: p.Rekey, payload: bytes, seed: bytes = b"r") -> Any:
    return respond_to_rekey(
        suite=suite,
        master=MASTER,
        epoch=EPOCH,
        rekey=rekey,
        rekey_payload=payload,
        random=DeterministicRandom(seed),
    )


def edited(packet: p.Packet, payload: bytes, **fields: Any) -> tuple[Any, bytes]:
    data = decode_payload_untrusted(payload)
    data.update(fields)
    raw = encode_payload(data)
    return type(packet).from_payload_untrusted(decode_payload_untrusted(raw)), raw


@pytest.mark.parametrize("suite", [MODERN, LEGACY])
def test_both_sides_derive_the_same_next_master(suite: CipherSuite) -> None:
    initiator = update(suite)
    rekey, rekey_payload = initiator.initiate()
    assert rekey.epoch == EPOCH + 1 == initiator.next_epoch
    assert len(rekey.random) == 32 and len(rekey.key_share) == (32 if suite == MODERN else 0)
    ack, ack_payload, responder_master = respond(suite, rekey, rekey_payload)
    assert ack.epoch == EPOCH + 1 and len(ack.key_share) == len(rekey.key_share)
    assert ack_payload == encode_payload(ack.to_payload())
    initiator_master = initiator.complete(ack, ack_payload)
    assert initiator_master == responder_master != MASTER

    sender = record_protection(suite, initiator_master, EPOCH + 1, "c2s")
    receiver = record_protection(suite, responder_master, EPOCH + 1, "c2s")
    assert (
        receiver.open_untrusted(1, b"a" * 16, sender.seal(1, b"a" * 16, b"new keys")) == b"new keys"
    )


@pytest.mark.parametrize("suite", [MODERN, LEGACY])
def test_fresh_randoms_give_fresh_keys(suite: CipherSuite) -> None:
    masters = set()
    for seed in (b"x", b"y"):
        initiator = update(suite, seed)
        rekey, payload = initiator.initiate()
        ack, ack_payload, _ = respond(suite, rekey, payload, seed)
        masters.add(initiator.complete(ack, ack_payload))
    assert len(masters) == 2


@pytest.mark.parametrize("suite", [MODERN, LEGACY])
@pytest.mark.parametrize("epoch", [EPOCH, EPOCH + 2, 0])
def test_wrong_epoch_in_rekey(suite: CipherSuite, epoch: int) -> None:
    rekey, payload = edited(*update(suite).initiate(), e=epoch)
    with pytest.raises(RemoteProtocolError) as info:
        respond(suite, rekey, payload)
    assert info.value.error_code == ErrorCode.REKEY_FAILURE


@pytest.mark.parametrize("suite", [MODERN, LEGACY])
def test_wrong_epoch_in_ack(suite: CipherSuite) -> None:
    initiator = update(suite)
    rekey, payload = initiator.initiate()
    ack, ack_payload = edited(*respond(suite, rekey, payload)[:2], e=EPOCH + 2)
    with pytest.raises(RemoteProtocolError) as info:
        initiator.complete(ack, ack_payload)
    assert info.value.error_code == ErrorCode.REKEY_FAILURE


@pytest.mark.parametrize(
    ("suite", "share"), [(MODERN, b""), (LEGACY, b"k" * 32), (MODERN, bytes(32))]
)
def test_key_share_must_fit_the_suite(suite: CipherSuite, share: bytes) -> None:
    rekey, payload = edited(*update(suite).initiate(), ks=share)
    with pytest.raises(RemoteProtocolError) as info:
        respond(suite, rekey, payload)
    assert info.value.error_code == ErrorCode.REKEY_FAILURE

    initiator = update(suite)
    rekey, payload = initiator.initiate()
    ack, ack_payload = edited(*respond(suite, rekey, payload)[:2], ks=share)
    with pytest.raises(RemoteProtocolError) as info:
        initiator.complete(ack, ack_payload)
    assert info.value.error_code == ErrorCode.REKEY_FAILURE


@pytest.mark.parametrize("suite", [MODERN, LEGACY])
def test_exchange_bytes_are_bound(suite: CipherSuite) -> None:
    """Both payloads are hashed into the next master: if the two sides saw
    different bytes (an unknown extra field, say), they end up with different
    keys."""
    initiator = update(suite)
    rekey, payload = initiator.initiate()
    ack, ack_payload, responder_master = respond(suite, rekey, payload)
    _, other_bytes = edited(ack, ack_payload, x=1)  # same fields, different bytes
    assert initiator.complete(ack, other_bytes) != responder_master


def test_misuse_is_local() -> None:
    initiator = update(MODERN)
    ack = p.RekeyAck(epoch=EPOCH + 1, random=b"r" * 32, key_share=b"k" * 32)
    with pytest.raises(LocalProtocolError):
        initiator.complete(ack, encode_payload(ack.to_payload()))
    initiator.initiate()
    with pytest.raises(LocalProtocolError):
        initiator.initiate()
    with pytest.raises(LocalProtocolError):
        KeyUpdate(suite=MODERN, master=MASTER, epoch=0xFFFFFFFF)
    with pytest.raises(ValueError):
        KeyUpdate(suite=0x9999, master=MASTER, epoch=0)


def test_complete_only_once() -> None:
    initiator = update(MODERN)
    rekey, payload = initiator.initiate()
    ack, ack_payload, _ = respond(MODERN, rekey, payload)
    initiator.complete(ack, ack_payload)
    with pytest.raises(LocalProtocolError):
        initiator.complete(ack, ack_payload)
