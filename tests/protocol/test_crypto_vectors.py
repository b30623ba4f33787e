"""The cryptographic test vectors (``elink_protocol/vectors/crypto_vectors.json``,
spec §7.10, §10): the stored file is what the code produces, and every entry
checks out -- deterministic ones by comparison, randomized ones (RSA-PSS,
RSA-OAEP) by replaying the recorded packets into fresh handshakes."""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from elink_protocol import packets as p
from elink_protocol import vectors
from elink_protocol.config import Config
from elink_protocol.crypto.handshake import ClientHandshake, ServerHandshake
from elink_protocol.crypto.identity import ServerIdentity, verify_signature
from elink_protocol.crypto.keyschedule import (
    Transcript,
    client_finished_binding,
    derive_prk,
    derive_record_keys,
    expand_label,
    finished_mac,
    hkdf_expand,
    hkdf_extract,
)
from elink_protocol.crypto.record import record_protection
from elink_protocol.crypto.rekey import KeyUpdate, respond_to_rekey
from elink_protocol.crypto.suites import CipherSuite, SignatureAlgorithm, suite_params
from elink_protocol.payload import decode_payload_untrusted
from elink_protocol.vectors.generate_crypto import (
    TEST_RSA_PEM,
    ReplayRandom,
    build,
    derive_handshake,
    deterministic_part,
    fixed_identity,
)

NAME = "crypto_vectors"
STORED: dict[str, Any] = vectors.load(NAME)
HANDSHAKES = STORED["handshakes"]
ORDER = (p.ClientHello, p.ServerHello, p.ServerAuth, p.ClientFinished, p.ServerFinished)


def test_stored_file_is_what_the_code_produces() -> None:
    fresh = build()
    assert deterministic_part(STORED) == deterministic_part(fresh)
    # Randomized entries still hold every field, from one run.
    for stored, new in zip(STORED["handshakes"], fresh["handshakes"], strict=True):
        assert stored.keys() == new.keys() and stored["packets"].keys() == new["packets"].keys()
    text = resources.files(vectors).joinpath(f"{NAME}.json").read_text(encoding="utf-8")
    assert text == vectors.dumps(STORED)  # canonical formatting
    assert "source" in STORED and "randomized" in STORED["source"]


def test_every_suite_has_record_and_handshake_vectors() -> None:
    assert {r["suite"] for r in STORED["records"]} == {int(s) for s in CipherSuite}
    assert {h["suite"] for h in HANDSHAKES} == {int(s) for s in CipherSuite}
    pairs = {(h["suite"], h["signature_algorithm"]) for h in HANDSHAKES}
    for suite in CipherSuite:
        if not suite_params(suite).legacy:
            assert (suite, SignatureAlgorithm.ED25519) in pairs
        assert (suite, SignatureAlgorithm.RSA_PSS_RSAE_SHA256) in pairs
    assert {r["suite"] for r in STORED["rekey"]} >= {0x1301, 0x0A03}


# --- primitives -----------------------------------------------------------------------


@pytest.mark.parametrize("case", STORED["primitives"]["hkdf_sha256"], ids=lambda c: c["source"])
def test_hkdf_vectors(case: dict[str, Any]) -> None:
    prk = hkdf_extract(bytes.fromhex(case["salt"]), bytes.fromhex(case["ikm"]))
    assert prk.hex() == case["prk"]
    assert hkdf_expand(prk, bytes.fromhex(case["info"]), case["length"]).hex() == case["okm"]


@pytest.mark.parametrize("case", STORED["primitives"]["expand_label"])
def test_expand_label_vectors(case: dict[str, Any]) -> None:
    secret, context = bytes.fromhex(case["secret"]), bytes.fromhex(case["context"])
    assert hkdf_expand(secret, bytes.fromhex(case["info"]), case["length"]).hex() == case["output"]
    assert expand_label(secret, case["label"], context, case["length"]).hex() == case["output"]


def test_des_vector() -> None:
    case = STORED["primitives"]["des"]
    cipher = Cipher(TripleDES(bytes.fromhex(case["key"]) * 3), modes.ECB()).encryptor()
    assert cipher.update(bytes.fromhex(case["plaintext"])).hex() == case["ciphertext"]


# --- records ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", STORED["records"])
def test_record_vectors(case: dict[str, Any]) -> None:
    master = bytes.fromhex(case["master_secret"])
    keys = derive_record_keys(case["suite"], master, case["epoch"], case["direction"])
    assert (keys.key.hex(), keys.iv.hex(), keys.mac_key.hex()) == (
        case["key"],
        case["iv"],
        case["mac_key"],
    )
    protection = record_protection(case["suite"], master, case["epoch"], case["direction"])
    aad, plaintext = bytes.fromhex(case["aad"]), bytes.fromhex(case["plaintext"])
    record = bytes.fromhex(case["record"])
    assert protection.seal(case["counter"], aad, plaintext) == record
    assert protection.open_untrusted(case["counter"], aad, record) == plaintext
    assert int.from_bytes(aad[12:14], "big") == len(record)  # the header's length field


# --- handshakes ------------------------------------------------------------------------------


def packets_of(entry: dict[str, Any]) -> list[tuple[p.Packet, bytes]]:
    out = []
    for cls in ORDER:
        payload = bytes.fromhex(entry["packets"][cls.__name__])
        out.append((cls.from_payload_untrusted(decode_payload_untrusted(payload)), payload))
    return out


def draws(entry: dict[str, Any], side: str) -> list[bytes]:
    return [bytes.fromhex(d) for d in entry[side]["draws"]]


def is_legacy(entry: dict[str, Any]) -> bool:
    return suite_params(entry["suite"]).legacy


class ReplayIdentity(ServerIdentity):
    """The fixed test identity, except that ``sign()`` hands out a recorded
    (randomized) RSA-PSS signature -- after checking it is valid for exactly
    the data this server wants signed."""

    recorded = b""

    def sign(self, algorithm: SignatureAlgorithm, data: bytes) -> bytes:
        verify_signature(algorithm, self.public_key_bytes(algorithm), self.recorded, data)
        return self.recorded


def identity_for(entry: dict[str, Any]) -> ServerIdentity:
    keys = entry["server"]["keys"]
    base = fixed_identity(ed25519="ed25519" in keys, rsa="rsa" in keys)
    if not entry["randomized"]:
        return base
    replay = cast(ReplayIdentity, ReplayIdentity.from_pem(base.to_pem()))
    auth = packets_of(entry)[2][0]
    assert isinstance(auth, p.ServerAuth)
    replay.recorded = auth.signature
    return replay


def ids(entry: dict[str, Any]) -> str:
    return str(entry["name"])


@pytest.mark.parametrize("entry", HANDSHAKES, ids=ids)
def test_handshake_recomputed_from_packets(entry: dict[str, Any]) -> None:
    """Every stored secret follows from the stored packets and draws."""
    packets = packets_of(entry)
    offered_modern = any(not suite_params(s).legacy for s in entry["client"]["suites"])
    derived = derive_handshake(
        [payload for _, payload in packets],
        client_draws=draws(entry, "client"),
        legacy=is_legacy(entry),
        offered_modern=offered_modern,
    )
    expected_resumption = derived.pop("resumption_secret")
    for key, value in derived.items():
        assert entry[key] == value, key
    if entry["resumed"]:
        assert entry["resumption_secret"] == entry["resume"]["resumption_secret"]
    else:
        assert entry["resumption_secret"] == expected_resumption

    auth, finished = packets[2][0], packets[3][0]
    assert isinstance(auth, p.ServerAuth) and isinstance(finished, p.ClientFinished)
    signed = b"e-Link v1 server signature\x00" + bytes.fromhex(entry["t1"])
    algorithm = SignatureAlgorithm(auth.signature_algorithm)
    verify_signature(algorithm, auth.public_key, auth.signature, signed)
    assert entry["server_fingerprint"] == fixed_identity().fingerprints()[algorithm]
    if is_legacy(entry):
        assert fixed_identity().rsa_decrypt_untrusted(finished.key_transport) == bytes.fromhex(
            entry["premaster"]
        )


def client_config(entry: dict[str, Any]) -> Config:
    return Config(
        suites=tuple(entry["client"]["suites"]),
        features=tuple(entry["client"]["features"]),
        trusted_server_keys=frozenset({entry["server_fingerprint"]}),
    )


@pytest.mark.parametrize("entry", HANDSHAKES, ids=ids)
def test_client_replay(entry: dict[str, Any]) -> None:
    packets = packets_of(entry)
    client = ClientHandshake(client_config(entry), random=ReplayRandom(draws(entry, "client")))
    if entry["resume"] is not None:
        client.request_resume(
            session_id=bytes.fromhex(entry["resume"]["session_id"]),
            resumption_secret=bytes.fromhex(entry["resume"]["resumption_secret"]),
            last_processed=entry["resume"]["client_last_processed"],
        )
    assert [payload for _, payload in client.start()] == [packets[0][1]]
    assert client.receive(*packets[1]) == []
    [(finished, payload)] = client.receive(*packets[2])
    assert isinstance(finished, p.ClientFinished)
    if is_legacy(entry):
        # RSA-OAEP is randomized: this run's key transport differs, but it
        # carries the recorded pre-master and the MAC covers it correctly.
        premaster = bytes.fromhex(entry["premaster"])
        assert fixed_identity().rsa_decrypt_untrusted(finished.key_transport) == premaster
        hello, server_hello = packets[0][0], packets[1][0]
        assert isinstance(hello, p.ClientHello) and isinstance(server_hello, p.ServerHello)
        prk = derive_prk(hello.random, server_hello.random, premaster)
        binding = client_finished_binding(
            key_transport=finished.key_transport,
            resume_session=finished.resume_session,
            resume_last_processed=finished.resume_last_processed,
            resume_proof=finished.resume_proof,
        )
        transcript = Transcript()
        for packet, raw in packets[:3]:
            transcript.add(packet.TYPE, raw)
        assert finished.verify == finished_mac(prk, "c finished", transcript.digest(), binding)
        assert client.master_secret is not None
        return
    assert payload == packets[3][1]
    assert client.receive(*packets[4]) == []
    result = client.result
    assert result is not None
    assert result.master_secret.hex() == entry["master_secret"]
    assert result.transcript_hash.hex() == entry["t3"]
    assert result.session_id.hex() == entry["session_id"]
    assert result.resumption_secret.hex() == entry["resumption_secret"]
    assert result.resumed == entry["resumed"]
    assert list(result.features) == entry["features"]


@pytest.mark.parametrize("entry", HANDSHAKES, ids=ids)
def test_server_replay(entry: dict[str, Any]) -> None:
    packets = packets_of(entry)
    config = Config(
        suites=tuple(entry["server"]["suites"]),
        features=tuple(entry["server"]["features"]),
        allow_legacy_suites=entry["server"]["allow_legacy_suites"],
        identity=identity_for(entry),
    )
    server = ServerHandshake(config, random=ReplayRandom(draws(entry, "server")))
    flight = server.receive(*packets[0])
    assert [payload for _, payload in flight] == [packets[1][1], packets[2][1]]
    flight = server.receive(*packets[3])
    if entry["resume"] is not None:
        assert flight == []
        flight = server.accept_resume(
            resumption_secret=bytes.fromhex(entry["resume"]["resumption_secret"]),
            last_processed=entry["resume"]["server_last_processed"],
        )
    assert [payload for _, payload in flight] == [packets[4][1]]
    result = server.result
    assert result is not None
    assert result.master_secret.hex() == entry["master_secret"]
    assert result.resumption_secret.hex() == entry["resumption_secret"]
    for direction in ("c2s", "s2c"):
        keys = derive_record_keys(result.suite, result.master_secret, 0, direction)
        assert keys.key.hex() == entry["keys"][direction]["key"]
        assert keys.iv.hex() == entry["keys"][direction]["iv"]
        assert keys.mac_key.hex() == entry["keys"][direction]["mac_key"]


def test_replay_identity_refuses_a_foreign_signature() -> None:
    """The replay trick above cannot paper over a wrong signature."""
    entry = next(h for h in HANDSHAKES if h["randomized"])
    identity = cast(ReplayIdentity, identity_for(entry))
    with pytest.raises(Exception, match="does not verify"):
        identity.sign(SignatureAlgorithm.RSA_PSS_RSAE_SHA256, b"other data")
    assert TEST_RSA_PEM.decode() == STORED["test_keys"]["rsa_private_pem"]


# --- rekey -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", STORED["rekey"], ids=lambda c: c["suite_name"])
def test_rekey_vectors(case: dict[str, Any]) -> None:
    master = bytes.fromhex(case["master_secret"])
    initiator = KeyUpdate(
        suite=case["suite"],
        master=master,
        epoch=case["epoch"],
        random=ReplayRandom([bytes.fromhex(d) for d in case["initiator_draws"]]),
    )
    rekey, rekey_payload = initiator.initiate()
    assert rekey_payload.hex() == case["rekey_payload"]
    ack, ack_payload, responder_master = respond_to_rekey(
        suite=case["suite"],
        master=master,
        epoch=case["epoch"],
        rekey=rekey,
        rekey_payload=rekey_payload,
        random=ReplayRandom([bytes.fromhex(d) for d in case["responder_draws"]]),
    )
    assert ack_payload.hex() == case["rekey_ack_payload"]
    assert responder_master.hex() == case["next_master_secret"]
    assert initiator.complete(ack, ack_payload).hex() == case["next_master_secret"]
