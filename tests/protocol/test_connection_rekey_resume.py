"""Key updates (§7.7), resumption (§6.5), nonce uniqueness (§7.5) and timers
(§6.7) on stream connections."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from elink_protocol import packets as p
from elink_protocol.connection import Connection
from elink_protocol.crypto import record
from elink_protocol.errors import ErrorCode
from elink_protocol.events import ConnectionClosed, HandshakeComplete, KeyUpdated
from elink_protocol.payload import encode_payload
from elink_protocol.state import ConnectionState
from tests.helpers.pair import (
    ALL_SUITES,
    LEGACY,
    drain,
    establish,
    make_pair,
    roundtrip_until_quiet,
)


def _data(i: int) -> p.UnknownPacket:
    return p.UnknownPacket(type=0x8001, payload=encode_payload({"i": i}))


def _numbers(events: list[Any]) -> list[int]:
    from elink_protocol.payload import decode_payload_untrusted

    return [
        decode_payload_untrusted(e.payload)["i"] for e in events if isinstance(e, p.UnknownPacket)
    ]


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_rekey_mid_traffic_loses_nothing(suite: int) -> None:
    client, server = make_pair(suite=suite)
    establish(client, server)
    for i in range(10):
        client.queue(_data(i))
        server.queue(_data(100 + i))
    client.start_rekey()
    for i in range(10, 20):
        client.queue(_data(i))
        server.queue(_data(100 + i))
    ex = roundtrip_until_quiet(client, server)
    assert _numbers(ex.server_events) == list(range(20))
    assert _numbers(ex.client_events) == list(range(100, 120))
    assert KeyUpdated(epoch=1, initiated_locally=True) in ex.client_events
    assert KeyUpdated(epoch=1, initiated_locally=False) in ex.server_events
    assert client.statistics().send_epoch == server.statistics().send_epoch == 1
    # and again, from the other side, several times
    for round_ in range(3):
        server.start_rekey()
        server.queue(_data(round_))
        ex = roundtrip_until_quiet(client, server)
        assert _numbers(ex.client_events) == [round_]
    assert client.statistics().send_epoch == server.statistics().send_epoch == 4


def test_simultaneous_rekey_resolves_to_one_epoch() -> None:
    client, server = make_pair()
    establish(client, server)
    client.start_rekey()
    server.start_rekey()
    client.queue(_data(1))
    server.queue(_data(2))
    ex = roundtrip_until_quiet(client, server)
    assert _numbers(ex.server_events) == [1] and _numbers(ex.client_events) == [2]
    assert client.statistics().send_epoch == server.statistics().send_epoch == 1
    client.queue(_data(3))
    assert _numbers(roundtrip_until_quiet(client, server).server_events) == [3]


def test_automatic_rekey_after_packet_count() -> None:
    client, server = make_pair(client={"rekey_after_packets": 5})
    establish(client, server)
    for i in range(40):
        client.queue(_data(i))
        roundtrip_until_quiet(client, server)
        client.handle_timer(0.0)
    assert client.statistics().send_epoch >= 5


def test_automatic_rekey_after_time() -> None:
    client, server = make_pair(server={"rekey_after_seconds": 30.0})
    establish(client, server)
    assert server.get_timer() is not None
    server.handle_timer(31.0)
    ex = roundtrip_until_quiet(client, server)
    assert any(isinstance(e, KeyUpdated) for e in ex.server_events)


def test_nonces_never_repeat_under_one_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Across both directions, rekeys and a resumption: each (key, nonce) is sealed once."""
    sealed: Counter[tuple[bytes, int]] = Counter()
    aead_init = record.AeadRecordProtection.__init__
    cbc_init = record.CbcHmacRecordProtection.__init__

    def remember(init: Any) -> Any:
        def wrapper(self: Any, params: Any, epoch: int, *keys: bytes) -> None:
            init(self, params, epoch, *keys)
            original = self.seal

            def seal(counter: int, aad: bytes, plaintext: bytes) -> bytes:
                sealed[(keys[0], counter)] += 1
                return original(counter, aad, plaintext)

            self.seal = seal

        return wrapper

    monkeypatch.setattr(record.AeadRecordProtection, "__init__", remember(aead_init))
    monkeypatch.setattr(record.CbcHmacRecordProtection, "__init__", remember(cbc_init))
    for suite in (ALL_SUITES[0], LEGACY[0]):
        client, server = make_pair(suite=suite)
        establish(client, server)
        for i in range(30):
            client.queue(_data(i))
            server.queue(_data(i))
            if i % 7 == 0:
                (client if i % 2 else server).start_rekey()
            roundtrip_until_quiet(client, server)
        client.ping()
        server.queue(_data(99))
        client.data_to_send()  # lost
        server.data_to_send()  # lost
        state_c, state_s = client.resumption_state(), server.resumption_state()
        c2, s2 = make_pair(suite=suite)
        _request_resume(c2, s2, state_c)
        s2.accept_resume(state_s)
        roundtrip_until_quiet(c2, s2)
    # Datagrams: loss, retransmission and rekeys while packets are in flight.
    from elink_protocol.connection import Transport
    from tests.helpers.datagram_sim import DatagramSim
    from tests.helpers.lossy_link import LossyLink

    fast = {"initial_rtt": 0.05, "min_rto": 0.02, "max_rto": 1.0, "max_retransmissions": 20}
    client, server = make_pair(transport=Transport.DATAGRAM, client=fast, server=fast)
    sim = DatagramSim(
        client,
        server,
        LossyLink(seed=1, drop=0.2, duplicate=0.1, reorder=0.2, delay=0.005),
        LossyLink(seed=2, drop=0.2, duplicate=0.1, reorder=0.2, delay=0.005),
    )
    client.initiate(0.0)
    for i in range(60):
        sim.run_until(lambda: False, max_time=sim.now + 0.05)
        if ConnectionState.ESTABLISHED is client.state is server.state:
            client.queue(_data(i))
            server.queue(_data(i))
            if i % 10 == 5:
                (client if i % 20 == 5 else server).start_rekey(sim.now)
    sim.run_until(lambda: False, max_time=sim.now + 30)
    assert client.statistics().retransmissions > 0
    assert client.statistics().send_epoch >= 2
    got = _numbers(sim.server_events())
    assert len(got) > 40 and got == list(range(got[0], got[0] + len(got)))
    assert sealed and max(sealed.values()) == 1


def _request_resume(client: Connection, server: Connection, state_c: Any) -> Any:
    """Run the handshake until the server asks its host about the resume."""
    from elink_protocol.events import ResumeRequested

    client.request_resume(state_c)
    client.initiate()
    for _ in range(3):
        server.receive_data(client.data_to_send())
        events = drain(server)
        if events:
            (request,) = events
            assert isinstance(request, ResumeRequested)
            return request
        client.receive_data(server.data_to_send())
        assert drain(client) == []
    raise AssertionError("no ResumeRequested")


def _resume(
    state_c: Any, state_s: Any, *, accept: bool = True, suite: int = ALL_SUITES[0]
) -> tuple[Connection, Connection, list[Any], list[Any]]:
    client, server = make_pair(suite=suite)
    request = _request_resume(client, server, state_c)
    assert request.session_id == state_s.session_id
    if accept:
        server.accept_resume(state_s)
    else:
        server.reject_resume()
    ex = roundtrip_until_quiet(client, server)
    return client, server, ex.client_events, ex.server_events


def test_resume_delivers_exactly_what_was_missed() -> None:
    client, server = make_pair()
    establish(client, server)
    for i in range(5):
        client.queue(_data(i))
        server.queue(_data(100 + i))
    roundtrip_until_quiet(client, server)
    # Bytes in flight when the connection dies: the server processes half of
    # the client's; the client processes none of the server's.
    for i in range(5, 10):
        client.queue(_data(i))
    for i in range(105, 110):
        server.queue(_data(i))
    to_server = client.data_to_send()
    server.data_to_send()  # lost
    cut = len(to_server) // 2
    server.receive_data(to_server[:cut])
    got_before = _numbers(drain(server))
    assert 0 < len(got_before) < 5
    state_c, state_s = client.resumption_state(), server.resumption_state()
    c2, s2, c_events, s_events = _resume(state_c, state_s)
    done = [e for e in c_events if isinstance(e, HandshakeComplete)]
    assert done and done[0].resumed and done[0].session_id == state_c.session_id
    assert got_before + _numbers(s_events) == list(range(5, 10))
    assert _numbers(c_events) == list(range(105, 110))
    # the resumed session carries on, and can be resumed again
    c2.queue(_data(10))
    s2.queue(_data(110))
    ex = roundtrip_until_quiet(c2, s2)
    assert _numbers(ex.server_events) == [10] and _numbers(ex.client_events) == [110]
    _, _, c_events, s_events = _resume(c2.resumption_state(), s2.resumption_state())
    assert _numbers(c_events) == [] and _numbers(s_events) == []


def test_processed_but_unacknowledged_is_not_redelivered() -> None:
    """The XEP-0198 hole: the peer processed packets but its ack was lost."""
    client, server = make_pair()
    establish(client, server)
    for i in range(3):
        client.queue(_data(i))
    server.receive_data(client.data_to_send())
    assert _numbers(drain(server)) == [0, 1, 2]
    server.data_to_send()  # the acks never reach the client
    assert client.statistics().unacked == 3
    _, _, _, s_events = _resume(client.resumption_state(), server.resumption_state())
    assert _numbers(s_events) == []


def test_rejected_resume_starts_a_fresh_session() -> None:
    client, server = make_pair()
    establish(client, server)
    client.queue(_data(1))
    client.data_to_send()  # lost
    state_c = client.resumption_state()
    c2, _, c_events, s_events = _resume(state_c, server.resumption_state(), accept=False)
    (done,) = [e for e in c_events if isinstance(e, HandshakeComplete)]
    assert not done.resumed and done.session_id != state_c.session_id
    assert _numbers(s_events) == []
    assert c2.state is ConnectionState.ESTABLISHED


def test_resume_with_a_claim_beyond_what_was_sent_fails() -> None:
    import attrs

    client, server = make_pair()
    establish(client, server)
    state_c = attrs.evolve(client.resumption_state(), last_processed=50)
    c2, s2 = make_pair()
    _request_resume(c2, s2, state_c)
    from elink_protocol.errors import RemoteProtocolError

    with pytest.raises(RemoteProtocolError) as info:
        s2.accept_resume(server.resumption_state())
    assert info.value.error_code is ErrorCode.RESUME_REJECTED


def test_resume_with_a_claim_below_what_was_acknowledged_fails() -> None:
    """Every server packet was acknowledged (the server stores none): a
    claim of one packet fewer names a packet the server no longer has."""
    import attrs

    client, server = make_pair()
    establish(client, server)
    for i in range(3):
        server.queue(_data(i))
    roundtrip_until_quiet(client, server)
    client.ping()  # its header carries the client's cumulative ack
    roundtrip_until_quiet(client, server)
    assert server.statistics().unacked == 0
    state_c = client.resumption_state()
    assert state_c.last_processed == 3
    c2, s2 = make_pair()
    _request_resume(c2, s2, attrs.evolve(state_c, last_processed=2))
    from elink_protocol.errors import RemoteProtocolError

    with pytest.raises(RemoteProtocolError) as info:
        s2.accept_resume(server.resumption_state())
    assert info.value.error_code is ErrorCode.RESUME_REJECTED


def test_handshake_deadline() -> None:
    client, server = make_pair(server={"handshake_timeout": 5.0})
    client.initiate()
    server.receive_data(client.data_to_send())
    drain(server)
    assert server.get_timer() == 5.0
    server.handle_timer(4.9)
    assert server.state is not ConnectionState.CLOSED
    server.handle_timer(5.0)
    assert server.state is ConnectionState.CLOSED
    (event,) = drain(server)
    assert isinstance(event, ConnectionClosed) and event.code == ErrorCode.TIMEOUT


def test_heartbeat_then_idle_timeout() -> None:
    cfg = {"heartbeat_interval": 10.0, "idle_timeout": 25.0}
    client, server = make_pair(client=cfg, server=cfg)
    establish(client, server)
    assert client.get_timer() == 10.0
    client.handle_timer(10.0)
    server.receive_data(client.data_to_send(), now=10.0)  # a Ping
    drain(server)
    client.receive_data(server.data_to_send(), now=10.0)  # the Pong
    drain(client)
    client.handle_timer(20.0)  # another ping, never answered
    client.data_to_send()
    client.handle_timer(34.9)
    assert client.state is ConnectionState.ESTABLISHED
    client.handle_timer(35.0)
    assert client.state is ConnectionState.CLOSED
    (event,) = drain(client)
    assert event.code == ErrorCode.TIMEOUT and not event.by_peer


def test_hard_key_limit_forces_a_rekey_before_more_data(monkeypatch: pytest.MonkeyPatch) -> None:
    from elink_protocol import connection

    monkeypatch.setattr(connection, "HARD_REKEY_LIMIT", 8)
    client, server = make_pair()
    establish(client, server)
    for i in range(30):
        client.queue(_data(i))
    ex = roundtrip_until_quiet(client, server, rounds=60)
    assert _numbers(ex.server_events) == list(range(30))
    assert client.statistics().send_epoch >= 3


def test_queued_but_unsent_packets_survive_resumption() -> None:
    """Packets still in the scheduler (no PID yet) when the connection dies are
    sent after the unacknowledged ones, before anything new."""
    client, server = make_pair(client={"max_unacked_packets": 3})
    establish(client, server)
    for i in range(10):
        client.queue(_data(i))
    client.data_to_send()  # 3 leave (and are lost); 7 wait for acks
    state = client.resumption_state()
    assert len(state.unacked) == 3 and len(state.unsent) == 7
    c2, s2 = make_pair()
    c2.queue(_data(100))  # queued on the new connection before it resumed
    _request_resume(c2, s2, state)
    s2.accept_resume(server.resumption_state())
    ex = roundtrip_until_quiet(c2, s2, rounds=40)
    assert _numbers(ex.server_events) == [*range(10), 100]


def test_datagram_fragments_resume_on_a_stream() -> None:
    """A chain half sent on a datagram connection is completed on a stream."""
    from elink_protocol.connection import Transport

    client, server = make_pair(transport=Transport.DATAGRAM, seed=3)
    sc, ss = client, server
    sc.initiate(0.0)
    for _ in range(4):
        for a, b in ((sc, ss), (ss, sc)):
            for d in a.datagrams_to_send(0.0):
                b.receive_datagram(d, 0.0)
            drain(b)
    big = p.UnknownPacket(type=0x8001, payload=encode_payload({"i": 7, "pad": b"x" * 3000}))
    sc.queue(big)
    datagrams = sc.datagrams_to_send(0.0)
    assert len(datagrams) >= 3
    ss.receive_datagram(datagrams[0], 0.0)  # only the first fragment arrives
    assert drain(ss) == []
    c2, s2 = make_pair()
    _request_resume(c2, s2, sc.resumption_state())
    s2.accept_resume(ss.resumption_state())
    ex = roundtrip_until_quiet(c2, s2)
    assert [e for e in ex.server_events if isinstance(e, p.UnknownPacket)] == [big]
