"""Server long-term keys and signature verification (docs/protocol.md §7.8).

A server proves its identity by signing the handshake transcript with a
long-term key: Ed25519, RSA (>= 2048 bits, RSA-PSS with SHA-256), or both.
The RSA key also decrypts the legacy suites' key transport (§7.3.4).

Public keys travel in a fixed encoding so that a key has exactly one
fingerprint: Ed25519 as its 32 raw bytes, RSA as DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import re

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from elink_protocol.errors import ErrorCode, RemoteProtocolError

from .suites import SignatureAlgorithm
from .trust import fingerprint

#: Smallest RSA modulus accepted, for our own key and for a peer's (§7.2).
MIN_RSA_BITS = 2048

#: RSA-PSS parameters (§7.2): MGF1-SHA256, salt length = digest length.
PSS_SALT_LENGTH = 32

_PEM_BLOCK = re.compile(rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----\s*", re.S)


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _check_rsa_size(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> None:
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits, got {key.key_size}")


class ServerIdentity:
    """A server's long-term private keys: an Ed25519 key, an RSA key, or both.

    Raises ``ValueError`` for an RSA key under 2048 bits or when neither key
    is given."""

    def __init__(
        self,
        *,
        ed25519_key: Ed25519PrivateKey | None = None,
        rsa_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        if ed25519_key is None and rsa_key is None:
            raise ValueError("a server identity needs an Ed25519 or an RSA key")
        if rsa_key is not None:
            _check_rsa_size(rsa_key)
        self._ed25519 = ed25519_key
        self._rsa = rsa_key
        self._public: dict[SignatureAlgorithm, bytes] = {}
        if ed25519_key is not None:
            self._public[SignatureAlgorithm.ED25519] = ed25519_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        if rsa_key is not None:
            self._public[SignatureAlgorithm.RSA_PSS_RSAE_SHA256] = (
                rsa_key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    @classmethod
    def generate(cls, *, ed25519: bool = True, rsa_bits: int | None = None) -> ServerIdentity:
        """Fresh keys: Ed25519 unless ``ed25519=False``, RSA when ``rsa_bits`` is given."""
        return cls(
            ed25519_key=Ed25519PrivateKey.generate() if ed25519 else None,
            rsa_key=(
                rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
                if rsa_bits is not None
                else None
            ),
        )

    def to_pem(self) -> bytes:
        """The keys as unencrypted PKCS#8 PEM blocks, concatenated (Ed25519 first).
        Protect the file: it holds private keys."""
        out = b""
        for key in (self._ed25519, self._rsa):
            if key is not None:
                out += key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
        return out

    @classmethod
    def from_pem(cls, data: bytes) -> ServerIdentity:
        """Load what :meth:`to_pem` wrote: one or two PKCS#8 ``PRIVATE KEY``
        blocks, at most one Ed25519 and one RSA key.  ``ValueError`` otherwise."""
        blocks = _PEM_BLOCK.findall(data)
        if not blocks or len(blocks) > 2:
            raise ValueError("expected one or two PKCS#8 'PRIVATE KEY' PEM blocks")
        ed_key: Ed25519PrivateKey | None = None
        rsa_key: rsa.RSAPrivateKey | None = None
        for block in blocks:
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise ValueError(f"cannot load private key: {exc}") from None
            if isinstance(key, Ed25519PrivateKey) and ed_key is None:
                ed_key = key
            elif isinstance(key, rsa.RSAPrivateKey) and rsa_key is None:
                rsa_key = key
            else:
                raise ValueError(f"unexpected or duplicate key type {type(key).__name__}")
        return cls(ed25519_key=ed_key, rsa_key=rsa_key)

    @property
    def algorithms(self) -> tuple[SignatureAlgorithm, ...]:
        """The signature algorithms this identity can sign with."""
        return tuple(self._public)

    @property
    def has_rsa(self) -> bool:
        return self._rsa is not None

    def public_key_bytes(self, algorithm: SignatureAlgorithm) -> bytes:
        """The public key sent in ServerAuth for ``algorithm``."""
        try:
            return self._public[algorithm]
        except KeyError:
            raise ValueError(f"this identity has no key for {algorithm.name}") from None

    def fingerprints(self) -> dict[SignatureAlgorithm, str]:
        """``SHA256:<hex>`` fingerprint of each public key (§7.8)."""
        return {alg: fingerprint(pk) for alg, pk in self._public.items()}

    def sign(self, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
        if algorithm is SignatureAlgorithm.ED25519 and self._ed25519 is not None:
            return self._ed25519.sign(data)
        if algorithm is SignatureAlgorithm.RSA_PSS_RSAE_SHA256 and self._rsa is not None:
            return self._rsa.sign(data, _pss(), hashes.SHA256())
        raise ValueError(f"this identity has no key for {algorithm!r}")

    def rsa_decrypt_untrusted(self, ciphertext: bytes) -> bytes | None:
        """RSA-OAEP(SHA-256) decryption of a legacy key transport; ``None`` on
        any failure, so the caller can hide *why* it failed (§7.3.4)."""
        if self._rsa is None:
            raise ValueError("this identity has no RSA key")
        try:
            return self._rsa.decrypt(ciphertext, _oaep())
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"ServerIdentity({', '.join(a.name for a in self._public)})"


def _load_peer_public_key(
    algorithm: SignatureAlgorithm, public_key: bytes
) -> Ed25519PublicKey | rsa.RSAPublicKey:
    """Parse a peer's public key, insisting on the canonical encoding."""
    bad = RemoteProtocolError("malformed server public key", ErrorCode.BAD_SIGNATURE)
    if algorithm is SignatureAlgorithm.ED25519:
        try:
            return Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:  # not 32 bytes
            raise bad from None
    try:
        key = serialization.load_der_public_key(public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise bad from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise bad
    # One key, one encoding, one fingerprint: refuse PKCS#1 or non-DER forms.
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != public_key:
        raise bad
    if key.key_size < MIN_RSA_BITS:
        raise RemoteProtocolError(
            f"server RSA key has {key.key_size} bits, at least {MIN_RSA_BITS} required",
            ErrorCode.INSUFFICIENT_SECURITY,
        )
    return key


def verify_signature(
    algorithm: SignatureAlgorithm, public_key_bytes: bytes, signature: bytes, data: bytes
) -> None:
    """Check a peer's signature.  Raises ``RemoteProtocolError``: BAD_SIGNATURE
    for a malformed key or a wrong signature, INSUFFICIENT_SECURITY for an RSA
    key under 2048 bits."""
    key = _load_peer_public_key(algorithm, public_key_bytes)
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, _pss(), hashes.SHA256())
    except InvalidSignature:
        raise RemoteProtocolError(
            "server signature does not verify", ErrorCode.BAD_SIGNATURE
        ) from None


def rsa_encrypt(public_key_bytes: bytes, plaintext: bytes) -> bytes:
    """RSA-OAEP(SHA-256, MGF1-SHA256) to a peer's RSA key (already checked by
    :func:`verify_signature`)."""
    key = _load_peer_public_key(SignatureAlgorithm.RSA_PSS_RSAE_SHA256, public_key_bytes)
    assert isinstance(key, rsa.RSAPublicKey)
    return key.encrypt(plaintext, _oaep())
