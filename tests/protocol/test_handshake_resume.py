"""Session resumption inside the handshake (spec §7.9, §7.4.2)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from elink_protocol import packets as p
from elink_protocol.crypto.handshake import ClientHandshake, ServerHandshake
from elink_protocol.crypto.keyschedule import (
    Transcript,
    derive_prk,
    finished_mac,
    server_finished_binding,
)
from elink_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from elink_protocol.payload import encode_payload
from elink_protocol.vectors.generate_crypto import DeterministicRandom
from tests.protocol.test_handshake import (
    AES_CBC,
    client_config,
    make,
    run,
    server_config,
)

OLD_ID = bytes(range(16))
OLD_SECRET = b"\x42" * 32


def resuming(seed: str = "r") -> tuple[ClientHandshake, ServerHandshake]:
    client, server = make(seed=seed)
    client.request_resume(session_id=OLD_ID, resumption_secret=OLD_SECRET, last_processed=77)
    return client, server


def test_accepted() -> None:
    client, server = resuming()
    hello = client.start()
    flight = server.receive(*hello[0])
    finished = [out for packet in flight for out in client.receive(*packet)]
    assert server.receive(*finished[0]) == []  # waits for the host
    request = server.resume_request
    assert request is not None and (request.session_id, request.last_processed) == (OLD_ID, 77)
    assert not server.complete and server.result is None
    assert server.master_secret is not None  # keys exist already

    [sf] = server.accept_resume(resumption_secret=OLD_SECRET, last_processed=5)
    client.receive(*sf)
    c, s = client.result, server.result
    assert c is not None and s is not None
    assert c.resumed and s.resumed
    assert c.session_id == s.session_id == OLD_ID
    assert c.peer_last_processed == 5 and s.peer_last_processed == 77
    assert c.resumption_secret == s.resumption_secret == OLD_SECRET  # the session's secret stays
    assert c.master_secret == s.master_secret
    assert server.resume_request is None


def test_rejected_gives_a_fresh_session() -> None:
    client, server = resuming()
    run(client, server, accept=None)
    c, s = client.result, server.result
    assert c is not None and s is not None
    assert not c.resumed and not s.resumed
    assert c.session_id == s.session_id != OLD_ID
    assert c.peer_last_processed == s.peer_last_processed == 0
    assert c.resumption_secret == s.resumption_secret != OLD_SECRET
    assert c.master_secret == s.master_secret


def test_bad_proof_is_a_rejection() -> None:
    client, server = resuming()
    run(client, server, accept=(b"\x43" * 32, 5))  # the server's secret differs
    c = client.result
    assert c is not None and not c.resumed and c.session_id != OLD_ID
    assert server.result is not None and not server.result.resumed


def test_a_legacy_suite_resumes_too() -> None:
    client, server = make(
        client_config(suites=(AES_CBC,)), server_config(suites=(AES_CBC,), allow_legacy_suites=True)
    )
    client.request_resume(session_id=OLD_ID, resumption_secret=OLD_SECRET, last_processed=1)
    run(client, server, accept=(OLD_SECRET, 2))
    assert client.result is not None and client.result.resumed


def test_replayed_resuming_client_finished_fails() -> None:
    """A recorded resumption request is bound to its handshake's T2."""
    client, server = resuming("old")
    recorded = run(client, server, accept=(OLD_SECRET, 1))
    hello = recorded[0]
    finished = next(x for x in recorded if isinstance(x[0], p.ClientFinished))
    fresh = ServerHandshake(server_config(), random=DeterministicRandom(b"other"))
    fresh.receive(*hello)
    with pytest.raises(RemoteProtocolError) as info:
        fresh.receive(*finished)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE
    assert fresh.resume_request is None


def test_waiting_server_accepts_no_packets() -> None:
    client, server = resuming()
    sent = []
    flight = client.start()
    sent += flight
    for packet in server.receive(*flight[0]):
        sent += client.receive(*packet)
    server.receive(*sent[-1])
    with pytest.raises(RemoteProtocolError) as info:
        server.receive(*sent[-1])
    assert info.value.error_code == ErrorCode.UNEXPECTED_PACKET


def test_api_misuse() -> None:
    _, server = make()
    with pytest.raises(LocalProtocolError):
        server.accept_resume(resumption_secret=OLD_SECRET, last_processed=1)
    with pytest.raises(LocalProtocolError):
        server.reject_resume()

    client, server = resuming()
    flight = client.start()
    for packet in server.receive(*flight[0]):
        finished = client.receive(*packet)
    server.receive(*finished[0])
    with pytest.raises(LocalProtocolError):
        server.accept_resume(resumption_secret=b"short", last_processed=1)
    with pytest.raises(LocalProtocolError):
        server.accept_resume(resumption_secret=OLD_SECRET, last_processed=1 << 32)

    client, _ = make()
    for bad in (
        {"session_id": b"x" * 15, "resumption_secret": OLD_SECRET, "last_processed": 0},
        {"session_id": OLD_ID, "resumption_secret": b"x" * 31, "last_processed": 0},
        {"session_id": OLD_ID, "resumption_secret": OLD_SECRET, "last_processed": -1},
    ):
        with pytest.raises(LocalProtocolError):
            client.request_resume(**bad)  # type: ignore[arg-type]


def test_request_after_server_auth_is_too_late() -> None:
    client, server = make()
    flight = client.start()
    for packet in server.receive(*flight[0]):
        client.receive(*packet)
    with pytest.raises(LocalProtocolError):
        client.request_resume(session_id=OLD_ID, resumption_secret=OLD_SECRET, last_processed=0)


# --- a server that lies in ServerFinished (it holds the keys, so the MAC is good) --


def forged_finished(
    client_random: DeterministicRandom,
    packets: list[tuple[p.Packet, bytes]],
    *,
    session_id: bytes,
    resumed: bool,
    last_processed: int,
) -> tuple[p.Packet, bytes]:
    """A ServerFinished with any content and a valid MAC, computed the way a
    server would (§7.4) from the first four packets."""
    ch, sh = packets[0][0], packets[1][0]
    assert isinstance(ch, p.ClientHello) and isinstance(sh, p.ServerHello)
    ephemeral = X25519PrivateKey.from_private_bytes(client_random.draws[1])
    premaster = ephemeral.exchange(X25519PublicKey.from_public_bytes(sh.key_share))
    prk = derive_prk(ch.random, sh.random, premaster)
    transcript = Transcript()
    for packet, payload in packets:
        transcript.add(packet.TYPE, payload)
    binding = server_finished_binding(
        session_id=session_id, resumed=resumed, resume_last_processed=last_processed
    )
    sf = p.ServerFinished(
        verify=finished_mac(prk, "s finished", transcript.digest(), binding),
        session_id=session_id,
        resumed=resumed,
        resume_last_processed=last_processed,
    )
    return sf, encode_payload(sf.to_payload())


@pytest.mark.parametrize(
    ("requested", "session_id", "resumed", "last_processed"),
    [
        (False, OLD_ID, True, 3),  # resumed what nobody asked for
        (True, b"\x99" * 16, True, 3),  # resumed another session
        (True, b"\x99" * 16, False, 3),  # a new session with a resume position
        (True, OLD_ID, False, 0),  # a "new" session that reuses the old id
    ],
)
def test_client_checks_the_resumption_outcome(
    requested: bool, session_id: bytes, resumed: bool, last_processed: int
) -> None:
    client_random = DeterministicRandom(b"liar client")
    client = ClientHandshake(client_config(), random=client_random)
    server = ServerHandshake(server_config(), random=DeterministicRandom(b"liar server"))
    if requested:
        client.request_resume(session_id=OLD_ID, resumption_secret=OLD_SECRET, last_processed=1)
    packets = list(client.start())
    flight = server.receive(*packets[0])
    packets += flight
    for packet in flight:
        packets += client.receive(*packet)
    sf = forged_finished(
        client_random,
        packets,
        session_id=session_id,
        resumed=resumed,
        last_processed=last_processed,
    )
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(*sf)
    assert info.value.error_code == ErrorCode.HANDSHAKE_FAILURE


def test_forged_finished_helper_matches_the_real_server() -> None:
    """The liar above is only meaningful if its MAC is what a server computes."""
    client_random = DeterministicRandom(b"honest client")
    client = ClientHandshake(client_config(), random=client_random)
    server = ServerHandshake(server_config(), random=DeterministicRandom(b"honest server"))
    packets = list(client.start())
    flight = server.receive(*packets[0])
    packets += flight
    for packet in flight:
        packets += client.receive(*packet)
    [real] = server.receive(*packets[-1])
    assert isinstance(real[0], p.ServerFinished)
    forged = forged_finished(
        client_random, packets, session_id=real[0].session_id, resumed=False, last_processed=0
    )
    assert forged[1] == real[1]
    client.receive(*forged)
    assert client.complete
