"""Record protection (spec §7.5): AEAD and CBC + HMAC, for every suite."""

from __future__ import annotations

import hmac
import struct

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol.crypto.keyschedule import derive_record_keys
from elink_protocol.crypto.record import (
    MAX_RECORD_OVERHEAD,
    AeadRecordProtection,
    CbcHmacRecordProtection,
    RecordProtection,
    record_protection,
)
from elink_protocol.crypto.suites import CipherSuite, suite_params
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.frame import MAX_WIRE_PAYLOAD

MASTER = bytes(range(32))
AAD = bytes(range(100, 116))
ALL = list(CipherSuite)
CBC_SUITES = [s for s in ALL if not suite_params(s).aead]
COUNTERS = [0, 1, 2, 255, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) | 1, (1 << 64) - 1]


def pair(suite: CipherSuite, epoch: int = 0) -> tuple[RecordProtection, RecordProtection]:
    """Sender and receiver of one direction, built independently."""
    return (
        record_protection(suite, MASTER, epoch, "c2s"),
        record_protection(suite, MASTER, epoch, "c2s"),
    )


def assert_decrypt_error(
    protection: RecordProtection, counter: int, aad: bytes, record: bytes
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        protection.open_untrusted(counter, aad, record)
    assert info.value.error_code == ErrorCode.DECRYPT_ERROR
    assert str(info.value) == "record failed authentication"  # one message for every cause


@pytest.mark.parametrize("suite", ALL)
def test_round_trip_and_exact_length(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    for length in [*range(0, 70), 255, 256, 1000, 4095, 4096]:
        data = bytes((length + i) % 256 for i in range(length))
        counter = length * 3
        record = sender.seal(counter, AAD, data)
        assert len(record) == sender.sealed_length(length)
        assert receiver.open_untrusted(counter, AAD, record) == data


@settings(max_examples=60, deadline=None)
@given(suite=st.sampled_from(ALL), data=st.binary(max_size=300), counter=st.sampled_from(COUNTERS))
def test_round_trip_property(suite: CipherSuite, data: bytes, counter: int) -> None:
    sender, receiver = pair(suite)
    record = sender.seal(counter, AAD, data)
    assert len(record) == sender.sealed_length(len(data))
    assert receiver.open_untrusted(counter, AAD, record) == data


@pytest.mark.parametrize("suite", ALL)
def test_overhead_fits_the_frame_limit(suite: CipherSuite) -> None:
    sender, _ = pair(suite)
    assert MAX_RECORD_OVERHEAD <= MAX_WIRE_PAYLOAD - 4096
    assert RecordProtection.MAX_OVERHEAD == MAX_RECORD_OVERHEAD
    worst = max(sender.sealed_length(n) - n for n in range(0, 64))
    assert worst <= sender.MAX_OVERHEAD <= MAX_RECORD_OVERHEAD
    assert sender.sealed_length(4096) <= MAX_WIRE_PAYLOAD


@pytest.mark.parametrize("suite", ALL)
def test_every_tampered_byte_fails(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    record = sender.seal(9, AAD, b"attack at dawn, bring snacks")
    for i in range(len(record)):
        for bit in (0x01, 0x80):
            bad = bytearray(record)
            bad[i] ^= bit
            assert_decrypt_error(receiver, 9, AAD, bytes(bad))
    for i in range(len(AAD)):
        bad_aad = bytearray(AAD)
        bad_aad[i] ^= 0x01
        assert_decrypt_error(receiver, 9, bytes(bad_aad), record)


@pytest.mark.parametrize("suite", ALL)
def test_wrong_counter_epoch_or_direction_fails(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    record = sender.seal(5, AAD, b"hello")
    for counter in (4, 6, 5 | (1 << 32), 5 ^ (1 << 63)):
        assert_decrypt_error(receiver, counter, AAD, record)
    assert_decrypt_error(record_protection(suite, MASTER, 1, "c2s"), 5, AAD, record)
    assert_decrypt_error(record_protection(suite, MASTER, 0, "s2c"), 5, AAD, record)
    assert_decrypt_error(record_protection(suite, bytes(32), 0, "c2s"), 5, AAD, record)


@pytest.mark.parametrize("suite", ALL)
def test_truncated_and_extended_records_fail(suite: CipherSuite) -> None:
    sender, receiver = pair(suite)
    record = sender.seal(3, AAD, b"x" * 20)
    for cut in range(len(record)):
        assert_decrypt_error(receiver, 3, AAD, record[:cut])
    for extra in (b"\x00", b"\x00" * 8, b"\x00" * 16):
        assert_decrypt_error(receiver, 3, AAD, record + extra)


@pytest.mark.parametrize("suite", ALL)
def test_counter_must_be_64_bit(suite: CipherSuite) -> None:
    sender, _ = pair(suite)
    for counter in (-1, 1 << 64):
        with pytest.raises(LocalProtocolError):
            sender.seal(counter, AAD, b"")
        with pytest.raises(LocalProtocolError):
            sender.open_untrusted(counter, AAD, b"\x00" * 48)


@pytest.mark.parametrize("suite", [s for s in ALL if suite_params(s).aead])
def test_aead_nonce_is_iv_xor_counter(suite: CipherSuite) -> None:
    sender, _ = pair(suite)
    assert isinstance(sender, AeadRecordProtection)
    iv = derive_record_keys(suite, MASTER, 0, "c2s").iv
    nonces = set()
    for counter in COUNTERS:
        nonce = sender.nonce(counter)
        assert nonce == bytes(a ^ b for a, b in zip(iv, counter.to_bytes(12, "big"), strict=True))
        nonces.add(nonce)
    assert len(nonces) == len(COUNTERS)


def test_same_plaintext_different_counters_differ() -> None:
    for suite in ALL:
        sender, _ = pair(suite)
        records = {sender.seal(c, AAD, b"same") for c in COUNTERS}
        assert len(records) == len(COUNTERS)


# --- the legacy CBC construction, checked against an independent computation ------


def cbc_algorithm(suite: CipherSuite, key: bytes) -> AES | TripleDES:
    if suite is CipherSuite.RSA_AES_256_CBC_HMAC_SHA256:
        return AES(key)
    if suite is CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256:
        return TripleDES(key)
    return TripleDES(key * 3)


@pytest.mark.parametrize("suite", CBC_SUITES)
def test_cbc_record_layout(suite: CipherSuite) -> None:
    """record = CBC(E_k(counter) as IV, PKCS#7(pt)) || HMAC(mac, aad || u64 ctr || ct)."""
    params = suite_params(suite)
    keys = derive_record_keys(suite, MASTER, 0, "c2s")
    assert len(keys.key) == params.key_length and len(keys.mac_key) == 32 and keys.iv == b""
    counter, plaintext = (1 << 32) | 77, b"legacy clients still say hello"
    algorithm = cbc_algorithm(suite, keys.key)
    block = params.block_size
    ecb = Cipher(algorithm, modes.ECB()).encryptor()
    iv = ecb.update(counter.to_bytes(block, "big")) + ecb.finalize()
    pad = block - len(plaintext) % block
    enc = Cipher(algorithm, modes.CBC(iv)).encryptor()
    ciphertext = enc.update(plaintext + bytes((pad,)) * pad) + enc.finalize()
    tag = hmac.digest(keys.mac_key, AAD + struct.pack("!Q", counter) + ciphertext, "sha256")

    sender, receiver = pair(suite)
    assert isinstance(sender, CbcHmacRecordProtection)
    assert sender.cbc_iv(counter) == iv
    assert sender.seal(counter, AAD, plaintext) == ciphertext + tag
    assert receiver.open_untrusted(counter, AAD, ciphertext + tag) == plaintext


@pytest.mark.parametrize("suite", CBC_SUITES)
@pytest.mark.parametrize("last_byte", [0, 17, 2])
def test_bad_padding_under_a_good_mac_fails(suite: CipherSuite, last_byte: int) -> None:
    """Padding is only examined after the MAC verified; a sender holding the
    keys that pads wrongly still gets DECRYPT_ERROR."""
    keys = derive_record_keys(suite, MASTER, 0, "c2s")
    block = suite_params(suite).block_size
    algorithm = cbc_algorithm(suite, keys.key)
    _, receiver = pair(suite)
    assert isinstance(receiver, CbcHmacRecordProtection)
    counter = 11
    # last byte 0: invalid; 17: larger than any block; 2 with a wrong previous byte.
    padded = b"A" * (2 * block - 2) + b"\x07" + bytes((last_byte,))
    enc = Cipher(algorithm, modes.CBC(receiver.cbc_iv(counter))).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    tag = hmac.digest(keys.mac_key, AAD + struct.pack("!Q", counter) + ciphertext, "sha256")
    assert_decrypt_error(receiver, counter, AAD, ciphertext + tag)


def test_des_known_answer() -> None:
    """Single DES as EDE with three equal keys; key 133457799BBCDFF1,
    plaintext 0123456789ABCDEF -> 85E813540F0AB405."""
    key = bytes.fromhex("133457799BBCDFF1")
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    out = encryptor.update(bytes.fromhex("0123456789ABCDEF")) + encryptor.finalize()
    assert out == bytes.fromhex("85E813540F0AB405")
    # DES ignores the parity bit of each key byte (§7.2.1): HKDF output is used as is.
    unparity = bytes(b ^ 1 for b in key)
    encryptor = Cipher(TripleDES(unparity * 3), modes.ECB()).encryptor()
    assert encryptor.update(bytes.fromhex("0123456789ABCDEF")) == out


def test_des_suite_uses_single_des() -> None:
    """The DES suite's IV for a counter is the DES encryption of that block, so
    a single-DES known answer carries over: with the KAT key and the counter
    0x0123456789ABCDEF the IV is the KAT ciphertext."""
    params = suite_params(CipherSuite.RSA_DES_CBC_HMAC_SHA256)
    protection = CbcHmacRecordProtection(
        params, 0, bytes.fromhex("133457799BBCDFF1"), mac_key=b"m" * 32
    )
    assert protection.cbc_iv(0x0123456789ABCDEF) == bytes.fromhex("85E813540F0AB405")


@pytest.mark.parametrize("suite", ALL)
def test_record_keys_are_separated(suite: CipherSuite) -> None:
    keys = {
        (epoch, direction): derive_record_keys(suite, MASTER, epoch, direction)
        for epoch in (0, 1, 256)
        for direction in ("c2s", "s2c")
    }
    assert len({k.key for k in keys.values()}) == len(keys)
    params = suite_params(suite)
    for k in keys.values():
        assert len(k.key) == params.key_length
        assert len(k.iv) == (12 if params.aead else 0)
        assert len(k.mac_key) == (0 if params.aead else 32)
        assert k.key.hex() not in repr(k)


def test_unknown_direction_or_suite() -> None:
    with pytest.raises(ValueError):
        record_protection(CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256, MASTER, 0, "up")
    with pytest.raises(ValueError):
        record_protection(0x1234, MASTER, 0, "c2s")


@pytest.mark.parametrize("suite", CBC_SUITES)
def test_long_lived_contexts_match_fresh_ones(suite: CipherSuite) -> None:
    """The CBC objects keep one long-lived cipher context per key (see
    CbcHmacRecordProtection): every record must be exactly what a fresh object
    produces, whatever was sealed or opened before, in whatever order."""
    sender, receiver = pair(suite)
    for i, counter in enumerate([5, 1, (1 << 32) | 3, 2, 1 << 40, 0, 77]):
        data = bytes(range(i * 7 % 40))
        record = sender.seal(counter, AAD, data)
        fresh_sender, fresh_receiver = pair(suite)
        assert record == fresh_sender.seal(counter, AAD, data)
        assert receiver.open_untrusted(counter, AAD, record) == data
        assert fresh_receiver.open_untrusted(counter, AAD, record) == data
        with pytest.raises(RemoteProtocolError):  # a failed open leaves no trace
            receiver.open_untrusted(counter + 1, AAD, record)
