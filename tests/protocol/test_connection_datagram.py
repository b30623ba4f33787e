"""Connection over datagrams through a seeded lossy link (spec §4.6, §6.4,
§6.6, §7.7): exactly-once, in-order delivery or a defined failure."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from elink_protocol import packets as p
from elink_protocol.connection import Transport
from elink_protocol.errors import ErrorCode
from elink_protocol.events import ConnectionClosed, HandshakeComplete, KeyUpdated
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.state import ConnectionState
from tests.helpers.datagram_sim import DatagramSim
from tests.helpers.lossy_link import LossyLink
from tests.helpers.pair import ALL_SUITES, make_pair

FAST = {"initial_rtt": 0.05, "min_rto": 0.02, "max_rto": 1.0, "max_retransmissions": 12}


def _data(i: int, size: int = 0) -> p.UnknownPacket:
    return p.UnknownPacket(type=0x8001, payload=encode_payload({"i": i, "pad": b"x" * size}))


def _numbers(events: list[Any]) -> list[int]:
    return [
        decode_payload_untrusted(e.payload)["i"] for e in events if isinstance(e, p.UnknownPacket)
    ]


def _sim(
    *,
    rate: float = 0.0,
    seed: int = 0,
    suite: int = ALL_SUITES[0],
    handshake_timeout: float = 10.0,
    **rates: float,
) -> DatagramSim:
    config = {**FAST, "handshake_timeout": handshake_timeout}
    client, server = make_pair(
        transport=Transport.DATAGRAM, suite=suite, client=config, server=config
    )
    link = {"drop": rate, "duplicate": rate, "reorder": rate, "corrupt": rate, **rates}
    sim = DatagramSim(
        client,
        server,
        LossyLink(seed=seed, delay=0.005, jitter=0.002, **link),
        LossyLink(seed=seed + 1000, delay=0.005, jitter=0.002, **link),
    )
    client.initiate(0.0)
    return sim


def _delivered(sim: DatagramSim, to_server: int, to_client: int) -> bool:
    return (
        len(_numbers(sim.server_events())) == to_server
        and len(_numbers(sim.client_events())) == to_client
    )


def _established(sim: DatagramSim) -> bool:
    return (
        sim.client.state is ConnectionState.ESTABLISHED
        and sim.server.state is ConnectionState.ESTABLISHED
    )


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_clean_link_every_suite(suite: int) -> None:
    sim = _sim(suite=suite)
    sim.run_until(lambda: _established(sim), max_time=5)
    assert any(isinstance(e, HandshakeComplete) for e in sim.client_events())
    for i in range(100):
        sim.client.queue(_data(i))
        sim.server.queue(_data(1000 + i))
    sim.run_until(
        lambda: (
            len(_numbers(sim.server_events())) == 100 and len(_numbers(sim.client_events())) == 100
        ),
        max_time=10,
    )
    assert _numbers(sim.server_events()) == list(range(100))
    assert _numbers(sim.client_events()) == list(range(1000, 1100))


@pytest.mark.parametrize("seed", range(4))
def test_twenty_percent_of_everything(seed: int) -> None:
    """20% drop, duplication, reordering and corruption each way."""
    sim = _sim(rate=0.2, seed=seed)
    sim.run_until(lambda: _established(sim), max_time=30)
    assert _established(sim)
    total = 300
    for i in range(total):
        sim.client.queue(_data(i, size=i % 50))
        sim.server.queue(_data(10_000 + i))
    sim.run_until(
        lambda: (
            len(_numbers(sim.server_events())) == total
            and len(_numbers(sim.client_events())) == total
        ),
        max_time=120,
    )
    assert _numbers(sim.server_events()) == list(range(total))
    assert _numbers(sim.client_events()) == list(range(10_000, 10_000 + total))
    assert sim.client.statistics().retransmissions > 0
    assert sim.links[id(sim.client)].stats.corrupted > 0


def test_fragmented_packets_over_a_lossy_link() -> None:
    sim = _sim(rate=0.1, seed=7)
    sim.run_until(lambda: _established(sim), max_time=30)
    sizes = [0, 1100, 1200, 2500, 4000, 10, 3999]
    for i, size in enumerate(sizes):
        sim.client.queue(_data(i, size=size))
    sim.run_until(lambda: len(_numbers(sim.server_events())) == len(sizes), max_time=60)
    got = [e for e in sim.server_events() if isinstance(e, p.UnknownPacket)]
    assert [len(decode_payload_untrusted(e.payload)["pad"]) for e in got] == sizes
    for datagram_size in sim.links[id(sim.client)]._queue:
        assert len(datagram_size[2]) <= 1200


@pytest.mark.parametrize("suite", [ALL_SUITES[0], ALL_SUITES[2]], ids=lambda s: s.name)
def test_rekeys_over_a_lossy_link(suite: int) -> None:
    sim = _sim(rate=0.15, seed=3, suite=suite)
    sim.run_until(lambda: _established(sim), max_time=30)
    sent = 0
    for round_ in range(6):
        (sim.client if round_ % 2 else sim.server).start_rekey(sim.now)
        for _ in range(20):
            sim.client.queue(_data(sent))
            sim.server.queue(_data(sent))
            sent += 1
        sim.run_until(functools.partial(_delivered, sim, sent, sent), max_time=sim.now + 60)
    assert _numbers(sim.server_events()) == list(range(sent))
    assert _numbers(sim.client_events()) == list(range(sent))
    updates = [e for e in sim.client_events() if isinstance(e, KeyUpdated)]
    assert len(updates) == 6 and sim.client.statistics().send_epoch == 6


def test_garbage_datagrams_are_dropped_silently() -> None:
    sim = _sim()
    sim.run_until(lambda: _established(sim), max_time=5)
    before = sim.server.statistics().bytes_sent
    for junk in (b"", b"\x00" * 5, b"\x01" * 20, b"\xff" * 1200, bytes(range(256))):
        sim.server.receive_datagram(junk, sim.now)
    assert sim.server.statistics().datagrams_dropped >= 4
    assert sim.server.datagrams_to_send(sim.now) == []  # nothing answered
    assert sim.server.statistics().bytes_sent == before
    sim.client.queue(_data(1))
    sim.run_until(lambda: _numbers(sim.server_events()) == [1], max_time=sim.now + 5)
    assert _numbers(sim.server_events()) == [1]


def test_dead_link_ends_with_timeout() -> None:
    sim = _sim()
    sim.run_until(lambda: _established(sim), max_time=5)
    sim.links[id(sim.client)].drop = 1.0
    sim.client.queue(_data(1))
    sim.run_until(lambda: sim.client.state is ConnectionState.CLOSED, max_time=600)
    closed = [e for e in sim.client_events() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == ErrorCode.TIMEOUT and not closed[0].by_peer


@pytest.mark.parametrize("seed", range(5))
def test_handshake_survives_heavy_loss(seed: int) -> None:
    """Half of all datagrams lost: flights are re-sent until answered."""
    sim = _sim(
        drop=0.5, duplicate=0.0, reorder=0.0, corrupt=0.0, seed=seed, handshake_timeout=120.0
    )
    sim.run_until(lambda: _established(sim), max_time=120)
    assert _established(sim)


class LossyDatagramMachine(RuleBasedStateMachine):
    """Everything sent is delivered exactly once, in order, or the connection
    fails with TIMEOUT; never silent loss, never a duplicate."""

    @initialize(
        seed=st.integers(0, 2**16),
        drop=st.floats(0, 0.3),
        duplicate=st.floats(0, 0.3),
        reorder=st.floats(0, 0.3),
        corrupt=st.floats(0, 0.3),
    )
    def start(
        self, seed: int, drop: float, duplicate: float, reorder: float, corrupt: float
    ) -> None:
        self.sim = _sim(
            seed=seed,
            drop=drop,
            duplicate=duplicate,
            reorder=reorder,
            corrupt=corrupt,
            handshake_timeout=300.0,
        )
        self.sent = {"client": 0, "server": 0}
        self.sim.run_until(lambda: _established(self.sim), max_time=300)
        if not _established(self.sim):
            # Heavy loss can exhaust the handshake's retransmissions: that must
            # end as a TIMEOUT on the side that gave up, never anything else.
            closes = [
                e
                for e in self.sim.client_events() + self.sim.server_events()
                if isinstance(e, ConnectionClosed)
            ]
            assert closes and all(e.code == ErrorCode.TIMEOUT for e in closes)

    def _conn(self, side: str) -> Any:
        return self.sim.client if side == "client" else self.sim.server

    @rule(
        side=st.sampled_from(["client", "server"]),
        count=st.integers(1, 15),
        size=st.integers(0, 3000),
    )
    def send(self, side: str, count: int, size: int) -> None:
        conn = self._conn(side)
        if conn.state is not ConnectionState.ESTABLISHED:
            return
        for _ in range(count):
            conn.queue(_data(self.sent[side], size=size))
            self.sent[side] += 1

    @rule(side=st.sampled_from(["client", "server"]))
    def rekey(self, side: str) -> None:
        conn = self._conn(side)
        if conn.state is ConnectionState.ESTABLISHED:
            conn.start_rekey(self.sim.now)

    @rule(steps=st.integers(1, 60))
    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.sim.step()

    @invariant()
    def delivered_is_a_prefix(self) -> None:
        if not hasattr(self, "sim"):
            return
        assert _numbers(self.sim.server_events()) == list(
            range(len(_numbers(self.sim.server_events())))
        )
        assert _numbers(self.sim.client_events()) == list(
            range(len(_numbers(self.sim.client_events())))
        )
        assert self.sim.errors == []

    def teardown(self) -> None:
        if not hasattr(self, "sim"):
            return
        sim = self.sim

        def finished() -> bool:
            closed = ConnectionState.CLOSED in (sim.client.state, sim.server.state)
            done = (
                len(_numbers(sim.server_events())) == self.sent["client"]
                and len(_numbers(sim.client_events())) == self.sent["server"]
            )
            return closed or done

        sim.run_until(finished, max_time=sim.now + 3000)
        if ConnectionState.CLOSED in (sim.client.state, sim.server.state):
            closes = [
                e
                for e in sim.client_events() + sim.server_events()
                if isinstance(e, ConnectionClosed)
            ]
            assert closes and all(e.code == ErrorCode.TIMEOUT for e in closes)
        else:
            assert _numbers(sim.server_events()) == list(range(self.sent["client"]))
            assert _numbers(sim.client_events()) == list(range(self.sent["server"]))


LossyDatagramMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None
)
test_lossy_datagram_machine = LossyDatagramMachine.TestCase


# --- freshness: what lets a host move a peer's address (§6.9.5) ----------------


def test_receive_datagram_reports_fresh_authentic_frames_only() -> None:
    client, server = make_pair(transport=Transport.DATAGRAM, client=FAST, server=FAST)
    client.initiate(0.0)
    now = 0.0
    handshake: list[bytes] = []
    for _ in range(4):
        for a, b in ((client, server), (server, client)):
            for datagram in a.datagrams_to_send(now):
                handshake.append(datagram)
                assert b.receive_datagram(datagram, now) is False  # not after the handshake
    assert client.state is server.state is ConnectionState.ESTABLISHED

    client.queue(_data(1))
    (numbered,) = client.datagrams_to_send(0.1)
    assert server.receive_datagram(numbered, 0.1) is True  # a new numbered packet
    assert server.receive_datagram(numbered, 0.2) is False  # its replay is not fresh

    client.ping(b"x")
    (ping,) = client.datagrams_to_send(0.3)
    assert server.receive_datagram(ping, 0.3) is True  # a newer unnumbered frame
    assert server.receive_datagram(ping, 0.4) is False  # replayed: not fresh
    corrupted = ping[:-1] + bytes([ping[-1] ^ 1])
    assert server.receive_datagram(corrupted, 0.5) is False
    assert server.receive_datagram(handshake[0], 0.6) is False
