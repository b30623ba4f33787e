"""The key schedule (spec §7.4): HKDF, expand_label, transcript, bindings."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from elink_protocol.crypto.keyschedule import (
    Transcript,
    client_finished_binding,
    derive_next_master,
    expand_label,
    hkdf_expand,
    hkdf_extract,
    resume_proof,
    server_finished_binding,
)


@settings(max_examples=50, deadline=None)
@given(
    salt=st.binary(max_size=80),
    ikm=st.binary(max_size=80),
    info=st.binary(max_size=80),
    length=st.integers(1, 200),
)
def test_hkdf_matches_cryptography(salt: bytes, ikm: bytes, info: bytes, length: int) -> None:
    prk = hkdf_extract(salt, ikm)
    expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
    assert hkdf_expand(prk, info, length) == expected


def test_hkdf_rfc5869_case_1() -> None:
    prk = hkdf_extract(bytes.fromhex("000102030405060708090a0b0c"), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = hkdf_expand(prk, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_expand_label_info_layout() -> None:
    secret, context = bytes(range(32)), b"\xaa\xbb"
    info = (
        struct.pack("!H", 12)
        + bytes((len(b"elink1 s2c iv"),))
        + b"elink1 s2c iv"
        + b"\x02"
        + context
    )
    expected = HKDFExpand(algorithm=hashes.SHA256(), length=12, info=info).derive(secret)
    assert expand_label(secret, "s2c iv", context, 12) == expected


def test_expand_label_separates_labels_contexts_and_lengths() -> None:
    secret = b"s" * 32
    outputs = {
        expand_label(secret, "c finished", b"", 32),
        expand_label(secret, "s finished", b"", 32),
        expand_label(secret, "c finished", b"\x00", 32),
        expand_label(secret, "c finished", b"", 31) + b"?",
    }
    assert len(outputs) == 4


def test_expand_label_limits() -> None:
    with pytest.raises(ValueError):
        expand_label(b"s" * 32, "x" * 250, b"", 32)
    with pytest.raises(ValueError):
        expand_label(b"s" * 32, "x", b"c" * 256, 32)
    with pytest.raises(ValueError):
        hkdf_expand(b"s" * 32, b"", 255 * 32 + 1)


def test_transcript_is_sha256_of_typed_entries() -> None:
    transcript = Transcript()
    transcript.add(0x0001, b"hello")
    first = transcript.digest()
    assert first == transcript.digest()  # digest() does not consume the state
    transcript.add(0x0002, b"")
    expected = hashlib.sha256(
        b"\x00\x01" + b"\x00\x00\x00\x05" + b"hello" + b"\x00\x02" + b"\x00\x00\x00\x00"
    ).digest()
    assert transcript.digest() == expected != first


def test_finished_bindings_layout() -> None:
    assert (
        client_finished_binding(
            key_transport=b"KT",
            resume_session=b"S" * 16,
            resume_last_processed=0x01020304,
            resume_proof=b"P" * 32,
        )
        == b"\x00\x02KT" + b"\x10" + b"S" * 16 + b"\x01\x02\x03\x04" + b"\x20" + b"P" * 32
    )
    assert (
        client_finished_binding(
            key_transport=b"", resume_session=b"", resume_last_processed=0, resume_proof=b""
        )
        == b"\x00\x00" + b"\x00" + b"\x00" * 4 + b"\x00"
    )
    assert (
        server_finished_binding(session_id=b"I" * 16, resumed=True, resume_last_processed=7)
        == b"I" * 16 + b"\x01" + b"\x00\x00\x00\x07"
    )


def test_resume_proof_binds_secret_and_transcript() -> None:
    base = resume_proof(b"k" * 32, b"t" * 32)
    assert base != resume_proof(b"K" * 32, b"t" * 32)
    assert base != resume_proof(b"k" * 32, b"T" * 32)


def test_next_master_binds_everything() -> None:
    base = derive_next_master(b"m" * 32, 1, b"i" * 32, b"R", b"A")
    assert base != derive_next_master(b"M" * 32, 1, b"i" * 32, b"R", b"A")
    assert base != derive_next_master(b"m" * 32, 2, b"i" * 32, b"R", b"A")
    assert base != derive_next_master(b"m" * 32, 1, b"I" * 32, b"R", b"A")
    assert base != derive_next_master(b"m" * 32, 1, b"i" * 32, b"r", b"A")
    assert base != derive_next_master(b"m" * 32, 1, b"i" * 32, b"R", b"a")
