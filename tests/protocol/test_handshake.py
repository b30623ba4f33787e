"""The e-Link v1 handshake (spec §7.3, §7.6, §7.8): every suite, negotiation,
downgrade protection, tampering, trust and state errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elink_protocol import packets as p
from elink_protocol.config import Config
from elink_protocol.crypto.handshake import (
    SIGNATURE_CONTEXT,
    ClientHandshake,
    Outgoing,
    ServerHandshake,
    record_protection,
)
from elink_protocol.crypto.identity import ServerIdentity
from elink_protocol.crypto.keyschedule import Transcript
from elink_protocol.crypto.suites import (
    LEGACY_SUITES,
    MODERN_SUITES,
    CipherSuite,
    SignatureAlgorithm,
)
from elink_protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    UntrustedServerKey,
)
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.vectors.generate_crypto import DeterministicRandom, fixed_identity

GCM = CipherSuite.ECDHE_X25519_AES_256_GCM_SHA256
CHACHA = CipherSuite.ECDHE_X25519_CHACHA20_POLY1305_SHA256
AES_CBC = CipherSuite.RSA_AES_256_CBC_HMAC_SHA256

BOTH = fixed_identity()
RSA_ONLY = fixed_identity(ed25519=False)
ED_ONLY = fixed_identity(rsa=False)

Tamper = Callable[[p.Packet, bytes], tuple[p.Packet, bytes]]


def client_config(**kwargs: Any) -> Config:
    kwargs.setdefault("trust_on_first_use", True)
    return Config(**kwargs)


def server_config(identity: ServerIdentity = BOTH, **kwargs: Any) -> Config:
    return Config(identity=identity, **kwargs)


def make(
    client: Config | None = None, server: Config | None = None, seed: str = "t"
) -> tuple[ClientHandshake, ServerHandshake]:
    return (
        ClientHandshake(client or client_config(), random=DeterministicRandom(f"{seed}c".encode())),
        ServerHandshake(server or server_config(), random=DeterministicRandom(f"{seed}s".encode())),
    )


def reparse(packet: p.Packet, payload: bytes) -> tuple[p.Packet, bytes]:
    """What a receiver makes of ``payload``: the packet parsed from the bytes."""
    cls = type(packet)
    return cls.from_payload_untrusted(decode_payload_untrusted(payload)), payload


def edit(packet: p.Packet, payload: bytes, **fields: Any) -> tuple[p.Packet, bytes]:
    """A man in the middle rewriting wire fields (by their msgpack keys)."""
    data = decode_payload_untrusted(payload)
    data.update(fields)
    return reparse(packet, encode_payload(data))


def run(
    client: ClientHandshake,
    server: ServerHandshake,
    *,
    to_server: Tamper | None = None,
    to_client: Tamper | None = None,
    accept: tuple[bytes, int] | None = None,
) -> list[tuple[p.Packet, bytes]]:
    """Run a handshake in memory, optionally through a man in the middle."""
    sent: list[tuple[p.Packet, bytes]] = []
    flight: Outgoing = client.start()
    while flight:
        answer: Outgoing = []
        for item in flight:
            packet, payload = to_server(*item) if to_server is not None else item
            sent.append((packet, payload))
            answer += server.receive(packet, payload)
        if server.resume_request is not None:
            answer += (
                server.accept_resume(resumption_secret=accept[0], last_processed=accept[1])
                if accept is not None
                else server.reject_resume()
            )
        flight = []
        for item in answer:
            packet, payload = to_client(*item) if to_client is not None else item
            sent.append((packet, payload))
            flight += client.receive(packet, payload)
    return sent


def only(cls: type[p.Packet], change: Tamper) -> Tamper:
    return lambda packet, payload: (
        change(packet, payload) if type(packet) is cls else (packet, payload)
    )


# --- complete handshakes ---------------------------------------------------------

MATRIX = [
    *[(s, ED_ONLY, SignatureAlgorithm.ED25519) for s in MODERN_SUITES],
    *[(s, BOTH, SignatureAlgorithm.ED25519) for s in MODERN_SUITES],
    *[(s, RSA_ONLY, SignatureAlgorithm.RSA_PSS_RSAE_SHA256) for s in MODERN_SUITES],
    *[(s, BOTH, SignatureAlgorithm.RSA_PSS_RSAE_SHA256) for s in LEGACY_SUITES],
    *[(s, RSA_ONLY, SignatureAlgorithm.RSA_PSS_RSAE_SHA256) for s in LEGACY_SUITES],
]


@pytest.mark.parametrize(("suite", "identity", "algorithm"), MATRIX)
def test_every_suite_and_signature_algorithm(
    suite: CipherSuite, identity: ServerIdentity, algorithm: SignatureAlgorithm
) -> None:
    client, server = make(
        client_config(suites=(suite,), features=("a", "b", "c")),
        server_config(
            identity,
            suites=(*MODERN_SUITES, *LEGACY_SUITES),
            allow_legacy_suites=True,
            features=("c", "b", "z"),
        ),
    )
    sent = run(client, server)
    assert [type(packet) for packet, _ in sent] == [
        p.ClientHello,
        p.ServerHello,
        p.ServerAuth,
        p.ClientFinished,
        p.ServerFinished,
    ]
    assert client.complete and server.complete
    c, s = client.result, server.result
    assert c is not None and s is not None
    assert c == s  # every field: keys, session id, fingerprint, transcript hash
    assert c.suite == suite and c.signature_algorithm == algorithm
    assert c.version == 1 and c.features == ("b", "c")  # the client's order
    assert c.server_fingerprint == identity.fingerprints()[algorithm]
    assert not c.resumed and c.peer_last_processed == 0 and len(c.session_id) == 16
    assert len(c.master_secret) == 32 and c.master_secret != c.resumption_secret
    assert client.master_secret == server.master_secret == c.master_secret

    for direction in ("c2s", "s2c"):
        sender = record_protection(suite, c.master_secret, 0, direction)
        receiver = record_protection(suite, s.master_secret, 0, direction)
        record = sender.seal(7, b"h" * 16, b"payload")
        assert receiver.open_untrusted(7, b"h" * 16, record) == b"payload"
    wrong_way = record_protection(suite, c.master_secret, 0, "s2c")
    with pytest.raises(RemoteProtocolError) as info:
        wrong_way.open_untrusted(
            7,
            b"h" * 16,
            record_protection(suite, c.master_secret, 0, "c2s").seal(7, b"h" * 16, b"x"),
        )
    assert info.value.error_code == ErrorCode.DECRYPT_ERROR


def test_fresh_randomness_gives_fresh_keys() -> None:
    first = make(seed="one")
    second = make(seed="two")
    run(*first)
    run(*second)
    a, b = first[0].result, second[0].result
    assert a is not None and b is not None
    assert a.master_secret != b.master_secret and a.session_id != b.session_id


def test_server_order_wins() -> None:
    client, server = make(client_config(suites=(CHACHA, GCM)), server_config(suites=(GCM, CHACHA)))
    run(client, server)
    assert client.result is not None and client.result.suite == GCM


def test_modern_preferred_even_when_legacy_allowed() -> None:
    client, server = make(
        client_config(suites=(AES_CBC, GCM)),
        server_config(suites=(GCM, AES_CBC), allow_legacy_suites=True),
    )
    run(client, server)
    assert client.result is not None and client.result.suite == GCM


def test_rsa_pss_when_client_cannot_verify_ed25519() -> None:
    client, server = make()
    hello, payload = edit(*client.start()[0], sa=[int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256)])
    auth = server.receive(hello, payload)[1][0]
    assert isinstance(auth, p.ServerAuth)
    assert auth.signature_algorithm == SignatureAlgorithm.RSA_PSS_RSAE_SHA256
    assert auth.public_key == BOTH.public_key_bytes(SignatureAlgorithm.RSA_PSS_RSAE_SHA256)


def test_no_common_signature_algorithm() -> None:
    client, server = make(client_config(), server_config(ED_ONLY))
    hello, payload = edit(*client.start()[0], sa=[int(SignatureAlgorithm.RSA_PSS_RSAE_SHA256)])
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(hello, payload)
    assert info.value.error_code == ErrorCode.INSUFFICIENT_SECURITY


# --- suite policy (§7.6) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("server_kwargs", "identity"),
    [
        ({}, BOTH),  # default: modern suites only
        ({"suites": (GCM, AES_CBC)}, BOTH),  # listed but not allowed
        ({"allow_legacy_suites": True}, BOTH),  # allowed but not listed
        ({"suites": (AES_CBC,), "allow_legacy_suites": True}, ED_ONLY),  # no RSA key
    ],
)
def test_legacy_refused_unless_allowed_listed_and_rsa(
    server_kwargs: dict[str, Any], identity: ServerIdentity
) -> None:
    client, server = make(
        client_config(suites=LEGACY_SUITES), server_config(identity, **server_kwargs)
    )
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server)
    assert info.value.error_code == ErrorCode.INSUFFICIENT_SECURITY


def test_modern_suite_needs_a_key_share() -> None:
    client, server = make()
    hello, payload = edit(*client.start()[0], ks=b"")
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(hello, payload)
    assert info.value.error_code == ErrorCode.INSUFFICIENT_SECURITY


def test_no_common_version() -> None:
    client, server = make()
    hello, payload = edit(*client.start()[0], v=[2, 3])
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(hello, payload)
    assert info.value.error_code == ErrorCode.UNSUPPORTED_VERSION


def test_version_1_picked_from_a_longer_list() -> None:
    client, server = make()
    hello, payload = edit(*client.start()[0], v=[7, 1])
    sh = server.receive(hello, payload)[0][0]
    assert isinstance(sh, p.ServerHello) and sh.version == 1


# --- downgrade protection ------------------------------------------------------------


def test_downgrade_to_legacy_is_detected() -> None:
    """A client that still speaks a legacy suite offers it after the modern
    ones; a man in the middle strips the modern ones (and the key share).  The
    server, which allows legacy, agrees -- but it signed the edited hello, so
    the client's own transcript makes the signature fail."""
    client, server = make(
        client_config(suites=(GCM, AES_CBC)),
        server_config(suites=(GCM, AES_CBC), allow_legacy_suites=True),
    )
    strip = only(p.ClientHello, lambda pk, pl: edit(pk, pl, cs=[int(AES_CBC)], ks=b""))
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server, to_server=strip)
    assert info.value.error_code == ErrorCode.BAD_SIGNATURE
    assert server.suite == AES_CBC  # the server was fooled; the client was not
    assert not client.complete and client.master_secret is None


def test_server_choosing_an_unoffered_suite_fails() -> None:
    client, server = make(
        client_config(suites=(GCM,)), server_config(suites=(GCM, AES_CBC), allow_legacy_suites=True)
    )
    rewrite = only(p.ClientHello, lambda pk, pl: edit(pk, pl, cs=[int(AES_CBC)], ks=b""))
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server, to_server=rewrite)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


# --- tampering: every field of every handshake packet ------------------------------------


def flip(value: Any) -> Any:
    """The same value with one bit changed."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ 1
    if isinstance(value, bytes):
        return bytes((value[0] ^ 1,)) + value[1:]
    if isinstance(value, str):
        return chr(ord(value[0]) ^ 1) + value[1:]
    assert isinstance(value, list)
    return [flip(value[0]), *value[1:]]


def modern_pinned() -> tuple[ClientHandshake, ServerHandshake]:
    pinned = frozenset(BOTH.fingerprints().values())
    return make(
        Config(trusted_server_keys=pinned, features=("a", "b")),
        server_config(features=("b",)),
    )


def legacy_resuming() -> tuple[ClientHandshake, ServerHandshake]:
    client, server = make(
        client_config(suites=(AES_CBC,)),
        server_config(suites=(AES_CBC,), allow_legacy_suites=True),
    )
    client.request_resume(session_id=b"S" * 16, resumption_secret=b"K" * 32, last_processed=9)
    return client, server


TAMPER_CASES = [
    # (scenario, packet, wire key, error)
    (modern_pinned, p.ClientHello, "v", ErrorCode.UNSUPPORTED_VERSION),
    (modern_pinned, p.ClientHello, "cs", ErrorCode.BAD_SIGNATURE),  # server picks ChaCha
    (modern_pinned, p.ClientHello, "sa", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ClientHello, "r", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ClientHello, "ks", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ClientHello, "f", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ServerHello, "v", ErrorCode.UNSUPPORTED_VERSION),
    (modern_pinned, p.ServerHello, "cs", ErrorCode.HANDSHAKE_FAILURE),  # 0x1300: not offered
    (modern_pinned, p.ServerHello, "r", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ServerHello, "ks", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ServerHello, "f", ErrorCode.HANDSHAKE_FAILURE),  # "c": not offered
    (modern_pinned, p.ServerAuth, "sa", ErrorCode.HANDSHAKE_FAILURE),
    (modern_pinned, p.ServerAuth, "pk", ErrorCode.HANDSHAKE_FAILURE),  # not pinned
    (modern_pinned, p.ServerAuth, "sig", ErrorCode.BAD_SIGNATURE),
    (modern_pinned, p.ClientFinished, "vd", ErrorCode.HANDSHAKE_FAILURE),
    (modern_pinned, p.ServerFinished, "vd", ErrorCode.HANDSHAKE_FAILURE),
    (modern_pinned, p.ServerFinished, "sid", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ServerAuth, "pk", ErrorCode.BAD_SIGNATURE),  # trust on first use
    (legacy_resuming, p.ClientFinished, "vd", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ClientFinished, "kt", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ClientFinished, "rs", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ClientFinished, "rl", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ClientFinished, "rp", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ServerFinished, "vd", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ServerFinished, "sid", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ServerFinished, "res", ErrorCode.HANDSHAKE_FAILURE),
    (legacy_resuming, p.ServerFinished, "rl", ErrorCode.HANDSHAKE_FAILURE),
]


@pytest.mark.parametrize(
    ("scenario", "cls", "key", "error"),
    TAMPER_CASES,
    ids=[f"{s.__name__}-{c.__name__}-{k}" for s, c, k, _ in TAMPER_CASES],
)
def test_tampered_field_is_detected(
    scenario: Callable[[], tuple[ClientHandshake, ServerHandshake]],
    cls: type[p.Packet],
    key: str,
    error: ErrorCode,
) -> None:
    client, server = scenario()
    seen: list[str] = []

    def change(packet: p.Packet, payload: bytes) -> tuple[p.Packet, bytes]:
        data = decode_payload_untrusted(payload)
        assert key in data, f"{key} not sent in {cls.__name__}"
        seen.append(key)
        return edit(packet, payload, **{key: flip(data[key])})

    secret = (b"K" * 32, 1234)  # the server knows the session (legacy_resuming)
    with pytest.raises(RemoteProtocolError) as info:
        if cls in (p.ClientHello, p.ClientFinished):
            run(client, server, to_server=only(cls, change), accept=secret)
        else:
            run(client, server, to_client=only(cls, change), accept=secret)
    assert seen == [key]
    assert info.value.error_code == error, info.value
    assert not client.complete


def test_resuming_scenario_completes_untampered() -> None:
    client, server = legacy_resuming()
    run(client, server, accept=(b"K" * 32, 1234))
    assert client.result is not None and client.result.resumed
    assert client.result.peer_last_processed == 1234


def test_bad_key_transport_looks_like_a_bad_finished_mac() -> None:
    """No RSA oracle: a key transport that does not decrypt fails exactly like
    a finished MAC that does not verify (same code, same message)."""
    errors = []
    for key in ("kt", "vd"):
        client, server = make(
            client_config(suites=(AES_CBC,)),
            server_config(suites=(AES_CBC,), allow_legacy_suites=True),
        )
        change = only(
            p.ClientFinished,
            lambda pk, pl, key=key: edit(pk, pl, **{key: flip(decode_payload_untrusted(pl)[key])}),
        )
        with pytest.raises(RemoteProtocolError) as info:
            run(client, server, to_server=change)
        errors.append((info.value.error_code, str(info.value)))
    assert errors[0] == errors[1]


def test_key_transport_must_match_the_suite() -> None:
    client, server = make()
    add_kt = only(p.ClientFinished, lambda pk, pl: edit(pk, pl, kt=b"x" * 256))
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server, to_server=add_kt)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE

    client, server = make(
        client_config(suites=(AES_CBC,)), server_config(suites=(AES_CBC,), allow_legacy_suites=True)
    )
    drop_kt = only(p.ClientFinished, lambda pk, pl: edit(pk, pl, kt=b""))
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server, to_server=drop_kt)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


@pytest.mark.parametrize(
    "fields", [{"rs": b"S" * 16}, {"rp": b"P" * 32}, {"rl": 5}, {"rs": b"S" * 16, "rp": b""}]
)
def test_inconsistent_resumption_fields(fields: dict[str, Any]) -> None:
    client, server = make()
    bad = only(p.ClientFinished, lambda pk, pl: edit(pk, pl, **fields))
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server, to_server=bad)
    assert info.value.error_code == ErrorCode.PAYLOAD_INVALID


# --- server authentication and trust (§7.8) -------------------------------------------


def test_pinned_key_accepted_and_other_keys_refused() -> None:
    good = frozenset({BOTH.fingerprints()[SignatureAlgorithm.ED25519]})
    client, server = make(Config(trusted_server_keys=good), server_config())
    run(client, server)
    assert client.result is not None

    other = ServerIdentity.generate()
    client, server = make(Config(trusted_server_keys=good), server_config(other))
    with pytest.raises(UntrustedServerKey) as info:
        run(client, server)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE
    assert info.value.fingerprint == other.fingerprints()[SignatureAlgorithm.ED25519]
    assert "not trusted" in str(info.value)


def test_trust_on_first_use_reports_the_fingerprint() -> None:
    client, server = make(client_config(), server_config(ED_ONLY))
    run(client, server)
    assert client.result is not None
    assert client.result.server_fingerprint == ED_ONLY.fingerprints()[SignatureAlgorithm.ED25519]


def test_client_needs_pinning_or_explicit_tofu() -> None:
    with pytest.raises(LocalProtocolError):
        ClientHandshake(Config())


def test_impostor_presenting_the_trusted_key_fails() -> None:
    """A man in the middle runs its own server and shows the real server's
    (pinned) public key: it cannot sign, so BAD_SIGNATURE."""
    pinned = frozenset(BOTH.fingerprints().values())
    impostor = ServerIdentity.generate()
    client, server = make(Config(trusted_server_keys=pinned), server_config(impostor))
    real_key = BOTH.public_key_bytes(SignatureAlgorithm.ED25519)
    swap = only(p.ServerAuth, lambda pk, pl: edit(pk, pl, pk=real_key))
    with pytest.raises(RemoteProtocolError) as info:
        run(client, server, to_client=swap)
    assert info.value.error_code == ErrorCode.BAD_SIGNATURE


def forge_auth(
    hello: tuple[p.Packet, bytes],
    server_hello: tuple[p.Packet, bytes],
    sign: Callable[[bytes], bytes],
    algorithm: int,
    public_key: bytes,
) -> tuple[p.Packet, bytes]:
    transcript = Transcript()
    for packet, payload in (hello, server_hello):
        transcript.add(packet.TYPE, payload)
    auth = p.ServerAuth(
        signature_algorithm=algorithm,
        public_key=public_key,
        signature=sign(SIGNATURE_CONTEXT + transcript.digest()),
    )
    return auth, encode_payload(auth.to_payload())


def test_rsa_1024_server_key_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        ServerIdentity(rsa_key=weak)
    client, server = make(client_config(suites=(GCM,)), server_config(RSA_ONLY))
    hello = client.start()[0]
    server_hello, _auth = server.receive(*hello)
    client.receive(*server_hello)
    der = weak.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    forged = forge_auth(
        hello,
        server_hello,
        lambda d: weak.sign(d, pss, hashes.SHA256()),
        SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
        der,
    )
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(*forged)
    assert info.value.error_code == ErrorCode.INSUFFICIENT_SECURITY


def test_legacy_suite_requires_rsa_signature() -> None:
    client, server = make(
        client_config(suites=(AES_CBC,)), server_config(suites=(AES_CBC,), allow_legacy_suites=True)
    )
    hello = client.start()[0]
    server_hello, _auth = server.receive(*hello)
    client.receive(*server_hello)
    forged = forge_auth(
        hello,
        server_hello,
        lambda d: BOTH.sign(SignatureAlgorithm.ED25519, d),
        SignatureAlgorithm.ED25519,
        BOTH.public_key_bytes(SignatureAlgorithm.ED25519),
    )
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(*forged)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


# --- X25519 edge cases -------------------------------------------------------------------

LOW_ORDER = [bytes(32), (1).to_bytes(32, "little")]


@pytest.mark.parametrize("share", LOW_ORDER)
def test_low_order_client_share(share: bytes) -> None:
    client, server = make()
    hello, payload = edit(*client.start()[0], ks=share)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(hello, payload)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


@pytest.mark.parametrize("share", LOW_ORDER)
def test_low_order_server_share(share: bytes) -> None:
    """A (malicious but trusted) server that signs a hello with a bad share."""
    client, server = make(client_config(), server_config(ED_ONLY))
    hello = client.start()[0]
    server_hello = edit(*server.receive(*hello)[0], ks=share)
    client.receive(*server_hello)
    forged = forge_auth(
        hello,
        server_hello,
        lambda d: ED_ONLY.sign(SignatureAlgorithm.ED25519, d),
        SignatureAlgorithm.ED25519,
        ED_ONLY.public_key_bytes(SignatureAlgorithm.ED25519),
    )
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(*forged)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


# --- replay --------------------------------------------------------------------------------


def test_replayed_client_finished_fails() -> None:
    """An attacker who recorded a whole client side (CH, CF) replays it to the
    server: the server's fresh random changes T2, so the old CF is useless."""
    client, server = make(seed="old")
    recorded = run(client, server)
    hello = recorded[0]
    finished = next(x for x in recorded if isinstance(x[0], p.ClientFinished))

    fresh = ServerHandshake(server_config(), random=DeterministicRandom(b"new server"))
    fresh.receive(*hello)
    with pytest.raises(RemoteProtocolError) as info:
        fresh.receive(*finished)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE

    # ... and spliced into another client's handshake.
    client2, server2 = make(seed="new")
    splice = only(p.ClientFinished, lambda pk, pl: finished)
    with pytest.raises(RemoteProtocolError) as info:
        run(client2, server2, to_server=splice)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


# --- state errors ---------------------------------------------------------------------------


def test_client_finished_before_hello() -> None:
    _, server = make()
    cf = p.ClientFinished(verify=bytes(32))
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(cf, encode_payload(cf.to_payload()))
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET


def test_second_client_hello() -> None:
    client, server = make()
    hello = client.start()[0]
    server.receive(*hello)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(*hello)
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET
    with pytest.raises(LocalProtocolError):  # the failed handshake takes nothing more
        server.receive(*hello)


def test_client_out_of_order_and_foreign_packets() -> None:
    client, server = make()
    hello = client.start()[0]
    _, auth = server.receive(*hello)
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(*auth)
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET

    client, server = make()
    client.start()
    ping = p.Ping(data=b"x")
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(ping, encode_payload(ping.to_payload()))
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET


def test_packets_after_completion_are_unexpected() -> None:
    client, server = make()
    sent = run(client, server)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(*sent[0])
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(*sent[-1])
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET
    assert client.complete and server.complete and client.result == server.result


def test_api_misuse_is_local() -> None:
    client, _ = make()
    sh = p.ServerHello(version=1, suite=GCM, random=bytes(32), key_share=bytes(32))
    with pytest.raises(LocalProtocolError):
        client.receive(sh, encode_payload(sh.to_payload()))  # before start()
    client.start()
    with pytest.raises(LocalProtocolError):
        client.start()
    with pytest.raises(LocalProtocolError):
        ServerHandshake(Config())  # no identity
    with pytest.raises(LocalProtocolError):
        ServerHandshake(server_config(suites=(0x1234,)))
    with pytest.raises(LocalProtocolError):
        ClientHandshake(client_config(suites=()))


# --- fuzz: any single corrupted byte ------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 4),
    position=st.integers(0, 10_000),
    xor=st.integers(1, 255),
    legacy=st.booleans(),
)
def test_any_corrupted_byte_fails_cleanly(
    index: int, position: int, xor: int, legacy: bool
) -> None:
    """Corrupting one byte of one handshake payload either makes a side raise
    RemoteProtocolError or leaves both sides with the same result; nothing
    else escapes."""
    suites = (AES_CBC,) if legacy else (GCM,)
    client, server = make(
        client_config(suites=suites), server_config(suites=suites, allow_legacy_suites=True)
    )
    count = 0

    def corrupt(packet: p.Packet, payload: bytes) -> tuple[p.Packet, bytes]:
        nonlocal count
        count += 1
        if count - 1 != index:
            return packet, payload
        data = bytearray(payload)
        data[position % len(data)] ^= xor
        return reparse(packet, bytes(data))

    try:
        run(client, server, to_server=corrupt, to_client=corrupt)
    except RemoteProtocolError:
        assert not (client.complete and server.complete and client.result != server.result)
        return
    assert client.result is not None and client.result == server.result
