"""Server identities, signature verification and the known-servers file
(spec §7.2, §7.8)."""

from __future__ import annotations

import functools

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from elink_protocol.crypto.identity import ServerIdentity, rsa_encrypt, verify_signature
from elink_protocol.crypto.suites import SignatureAlgorithm
from elink_protocol.crypto.trust import (
    KnownServers,
    TrustDecision,
    fingerprint,
    host_port,
    is_fingerprint,
)
from elink_protocol.errors import ErrorCode, RemoteProtocolError
from elink_protocol.vectors.generate_crypto import TEST_RSA_PEM, fixed_identity

ED = SignatureAlgorithm.ED25519
PSS = SignatureAlgorithm.RSA_PSS_RSAE_SHA256
BOTH = fixed_identity()


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@functools.cache
def weak_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def rejected(code: ErrorCode, *args: object) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        verify_signature(*args)  # type: ignore[arg-type]
    assert info.value.error_code == code


# --- identities ---------------------------------------------------------------------


def test_generate_and_pem_round_trip() -> None:
    ed_only = ServerIdentity.generate()
    assert ed_only.algorithms == (ED,) and not ed_only.has_rsa
    again = ServerIdentity.from_pem(ed_only.to_pem())
    assert again.fingerprints() == ed_only.fingerprints()

    both = ServerIdentity.from_pem(BOTH.to_pem())
    assert both.algorithms == (ED, PSS) and both.has_rsa
    assert both.fingerprints() == BOTH.fingerprints()
    assert BOTH.to_pem().count(b"BEGIN PRIVATE KEY") == 2


def test_generated_rsa_identity() -> None:
    identity = ServerIdentity.generate(ed25519=False, rsa_bits=2048)
    assert identity.algorithms == (PSS,)
    data = b"sign me"
    verify_signature(PSS, identity.public_key_bytes(PSS), identity.sign(PSS, data), data)


def test_weak_or_missing_keys_refused_locally() -> None:
    with pytest.raises(ValueError, match="2048"):
        ServerIdentity(rsa_key=weak_rsa())
    with pytest.raises(ValueError, match="2048"):
        ServerIdentity.from_pem(pem(weak_rsa()))
    with pytest.raises(ValueError):
        ServerIdentity()
    with pytest.raises(ValueError):
        ServerIdentity.from_pem(b"not a key")
    with pytest.raises(ValueError):
        ServerIdentity.from_pem(pem(ec.generate_private_key(ec.SECP256R1())))
    ed_pem = ServerIdentity.generate().to_pem()
    with pytest.raises(ValueError):
        ServerIdentity.from_pem(ed_pem + ed_pem)  # two Ed25519 keys
    with pytest.raises(ValueError):
        ServerIdentity.from_pem(BOTH.to_pem() + ed_pem)  # three blocks
    corrupt = ed_pem.replace(ed_pem[40:44], b"AAAA")
    with pytest.raises(ValueError):
        ServerIdentity.from_pem(corrupt)


def test_missing_algorithm() -> None:
    ed_only = fixed_identity(rsa=False)
    with pytest.raises(ValueError):
        ed_only.sign(PSS, b"x")
    with pytest.raises(ValueError):
        ed_only.public_key_bytes(PSS)
    with pytest.raises(ValueError):
        ed_only.rsa_decrypt_untrusted(b"x")


def test_public_key_encodings() -> None:
    assert len(BOTH.public_key_bytes(ED)) == 32
    rsa_key = serialization.load_der_public_key(BOTH.public_key_bytes(PSS))
    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 2048
    for algorithm, value in BOTH.fingerprints().items():
        assert value == fingerprint(BOTH.public_key_bytes(algorithm))


# --- verification ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [ED, PSS])
def test_sign_and_verify(algorithm: SignatureAlgorithm) -> None:
    key, data = BOTH.public_key_bytes(algorithm), b"e-Link v1 server signature\x00" + b"T" * 32
    signature = BOTH.sign(algorithm, data)
    verify_signature(algorithm, key, signature, data)
    rejected(ErrorCode.BAD_SIGNATURE, algorithm, key, signature, data + b"!")
    bad = bytes((signature[0] ^ 1,)) + signature[1:]
    rejected(ErrorCode.BAD_SIGNATURE, algorithm, key, bad, data)
    rejected(ErrorCode.BAD_SIGNATURE, algorithm, key, signature[:-1], data)


def test_pss_salt_length_is_the_digest_length() -> None:
    rsa_key = serialization.load_pem_private_key(TEST_RSA_PEM, password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    data = b"data"
    for salt in (0, padding.PSS.MAX_LENGTH):
        other_salt = rsa_key.sign(
            data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt), hashes.SHA256()
        )
        rejected(ErrorCode.BAD_SIGNATURE, PSS, BOTH.public_key_bytes(PSS), other_salt, data)
    pkcs1 = rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    rejected(ErrorCode.BAD_SIGNATURE, PSS, BOTH.public_key_bytes(PSS), pkcs1, data)


def test_peer_key_checks() -> None:
    sig = b"s" * 64
    rejected(ErrorCode.BAD_SIGNATURE, ED, b"k" * 31, sig, b"")
    rejected(ErrorCode.BAD_SIGNATURE, PSS, b"not DER", sig, b"")
    rejected(ErrorCode.BAD_SIGNATURE, PSS, BOTH.public_key_bytes(ED), sig, b"")
    # An EC key in SubjectPublicKeyInfo form is not an RSA key.
    ec_der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    rejected(ErrorCode.BAD_SIGNATURE, PSS, ec_der, sig, b"")
    # The same RSA key in PKCS#1 form: refused, one key has one encoding.
    rsa_public = serialization.load_der_public_key(BOTH.public_key_bytes(PSS))
    assert isinstance(rsa_public, rsa.RSAPublicKey)
    pkcs1 = rsa_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    rejected(ErrorCode.BAD_SIGNATURE, PSS, pkcs1, sig, b"")
    # A valid signature by a 1024-bit key: too weak.
    weak = weak_rsa()
    weak_der = weak.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    rejected(
        ErrorCode.INSUFFICIENT_SECURITY, PSS, weak_der, weak.sign(b"d", pss, hashes.SHA256()), b"d"
    )


def test_oaep_round_trip_and_failure() -> None:
    secret = bytes(range(48))
    ciphertext = rsa_encrypt(BOTH.public_key_bytes(PSS), secret)
    assert BOTH.rsa_decrypt_untrusted(ciphertext) == secret
    assert BOTH.rsa_decrypt_untrusted(bytes((ciphertext[0] ^ 1,)) + ciphertext[1:]) is None
    assert BOTH.rsa_decrypt_untrusted(b"short") is None
    assert BOTH.rsa_decrypt_untrusted(b"\xff" * 256) is None


# --- trust ---------------------------------------------------------------------------------

FP_A = fingerprint(b"key a")
FP_B = fingerprint(b"key b")


def test_fingerprint_format() -> None:
    assert FP_A.startswith("SHA256:") and len(FP_A) == 7 + 64
    assert is_fingerprint(FP_A)
    assert not is_fingerprint(FP_A.upper())
    assert not is_fingerprint("SHA256:abc")


def test_host_port() -> None:
    assert host_port("Chat.Example.com", 7443) == "chat.example.com:7443"
    assert host_port("2001:db8::1", 7443) == "[2001:db8::1]:7443"
    assert host_port("[::1]", 1) == "[::1]:1"
    for host, port in (("a", 0), ("a", 65536), ("a b", 1), ("", 1)):
        with pytest.raises(ValueError):
            host_port(host, port)


def test_known_servers_round_trip_and_decisions() -> None:
    text = (
        "# pinned by ops\n"
        f"chat.example.com:7443 {FP_A}\n"
        "\n"
        f"CHAT.example.com:7443   {FP_B}   # rotated key\n"
        f"[2001:db8::1]:7443 {FP_A}\n"
    )
    known = KnownServers.parse(text)
    assert known.serialize() == text
    assert known.fingerprints("chat.example.com:7443") == {FP_A, FP_B}
    assert known.check("chat.example.com:7443", FP_A) is TrustDecision.TRUSTED
    assert known.check("Chat.Example.Com:7443", FP_B) is TrustDecision.TRUSTED
    assert known.check("chat.example.com:7443", fingerprint(b"c")) is TrustDecision.MISMATCH
    assert known.check("chat.example.com:7444", FP_A) is TrustDecision.UNKNOWN
    assert known.check("[2001:DB8::1]:7443", FP_A) is TrustDecision.TRUSTED

    known.add("new.example.com:1", FP_B)
    known.add("new.example.com:1", FP_B)  # already there: no duplicate
    assert known.serialize() == text + f"new.example.com:1 {FP_B}\n"
    assert KnownServers.parse(known.serialize()).check("new.example.com:1", FP_B) is (
        TrustDecision.TRUSTED
    )
    known.remove("chat.example.com:7443")
    assert known.check("chat.example.com:7443", FP_A) is TrustDecision.UNKNOWN
    assert "# pinned by ops" in known.serialize()


@pytest.mark.parametrize(
    "line",
    [
        "chat.example.com:7443",
        f"chat.example.com {FP_A}",
        f"chat.example.com:7443 {FP_A} extra",
        "chat.example.com:7443 SHA256:XYZ",
        f"chat.example.com:99999 {FP_A}",
        f"chat.example.com:7443 {FP_A.upper()}",
    ],
)
def test_known_servers_bad_lines(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        KnownServers.parse(f"# ok\n{line}\n")


def test_known_servers_add_validates() -> None:
    known = KnownServers()
    with pytest.raises(ValueError):
        known.add("no-port", FP_A)
    with pytest.raises(ValueError):
        known.add("host:1", "SHA256:nothex")
