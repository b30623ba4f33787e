"""Cipher suites and signature algorithms of e-Link v1 (docs/protocol.md §7.2).

A cipher suite fixes everything that protects records: how the pre-master
secret is agreed (ephemeral X25519, or RSA-OAEP key transport for the legacy
suites), the record cipher and its key length.  The key schedule hash is
SHA-256 for every suite.
"""

from __future__ import annotations

import enum

import attrs


class CipherSuite(enum.IntEnum):
    """Suite code points (u16, §7.2).  ``0x13xx`` are the modern, forward-secret
    suites; ``0x0Axx`` the legacy RSA key-transport suites kept for old clients."""

    ECDHE_X25519_AES_256_GCM_SHA256 = 0x1301
    ECDHE_X25519_CHACHA20_POLY1305_SHA256 = 0x1302
    RSA_AES_256_CBC_HMAC_SHA256 = 0x0A01
    RSA_3DES_EDE_CBC_HMAC_SHA256 = 0x0A02
    RSA_DES_CBC_HMAC_SHA256 = 0x0A03


class SignatureAlgorithm(enum.IntEnum):
    """Server signature algorithms (u16, TLS 1.3 code points, §7.2)."""

    RSA_PSS_RSAE_SHA256 = 0x0804
    ED25519 = 0x0807


class RecordCipher(enum.Enum):
    """The record-protection construction a suite uses (§7.5)."""

    AES_256_GCM = "AES-256-GCM"
    CHACHA20_POLY1305 = "ChaCha20-Poly1305"
    AES_256_CBC = "AES-256-CBC"
    TRIPLE_DES_CBC = "3DES-EDE-CBC"
    DES_CBC = "DES-CBC"


@attrs.frozen(kw_only=True)
class SuiteParams:
    """What a cipher suite means."""

    suite: CipherSuite
    """The suite these parameters belong to."""
    legacy: bool
    """True for the RSA key-transport suites: no forward secrecy, RSA server
    key required, refused by servers unless explicitly allowed (§7.6)."""
    cipher: RecordCipher
    """The record-protection construction."""
    key_length: int
    """Bytes of the record encryption key per direction."""
    block_size: int
    """CBC block size in bytes; 0 for the AEAD suites."""

    @property
    def aead(self) -> bool:
        return self.block_size == 0


SUITES: dict[CipherSuite, SuiteParams] = {
    p.suite: p
    for p in (
        SuiteParams(
            suite=CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256,
            legacy=False,
            cipher=RecordCipher.AES_256_GCM,
            key_length=32,
            block_size=0,
        ),
        SuiteParams(
            suite=CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256,
            legacy=False,
            cipher=RecordCipher.CHACHA20_POLY1305,
            key_length=32,
            block_size=0,
        ),
        SuiteParams(
            suite=CipherSuite.RSA_AES_256_CBC_HMAC_SHA256,
            legacy=True,
            cipher=RecordCipher.AES_256_CBC,
            key_length=32,
            block_size=16,
        ),
        SuiteParams(
            suite=CipherSuite.RSA_3DES_EDE_CBC_HMAC_SHA256,
            legacy=True,
            cipher=RecordCipher.TRIPLE_DES_CBC,
            key_length=24,
            block_size=8,
        ),
        SuiteParams(
            suite=CipherSuite.RSA_DES_CBC_HMAC_SHA256,
            legacy=True,
            cipher=RecordCipher.DES_CBC,
            key_length=8,
            block_size=8,
        ),
    )
}
"""Parameters of every suite this library implements."""

MODERN_SUITES: tuple[CipherSuite, ...] = tuple(s for s, p in SUITES.items() if not p.legacy)
LEGACY_SUITES: tuple[CipherSuite, ...] = tuple(s for s, p in SUITES.items() if p.legacy)


def suite_params(suite: int) -> SuiteParams:
    """Parameters of a suite code point; ``ValueError`` for an unknown one."""
    return SUITES[CipherSuite(suite)]


def is_known_suite(value: int) -> bool:
    return value in CipherSuite._value2member_map_


def is_known_signature_algorithm(value: int) -> bool:
    return value in SignatureAlgorithm._value2member_map_
