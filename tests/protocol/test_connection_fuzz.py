"""Every state x input: receiving raises nothing but RemoteProtocolError, and
the connection ends in a legal state (CLOSED after an error)."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elink_protocol import packets as p
from elink_protocol.connection import Connection, Transport
from elink_protocol.errors import RemoteProtocolError
from elink_protocol.events import NEED_DATA
from elink_protocol.frame import decode_frames_untrusted
from elink_protocol.payload import encode_payload
from elink_protocol.state import ConnectionState
from tests.helpers.pair import drain, make_pair

S = ConnectionState


def _pump(src: Connection, dst: Connection, log: list[bytes]) -> None:
    data = src.data_to_send()
    if data:
        log.append(data)
        dst.receive_data(data)
        drain(dst)


@functools.cache
def _script() -> tuple[list[tuple[str, ConnectionState]], list[bytes], list[bytes]]:
    """Run one full stream conversation with fixed randoms; return the states
    each side passes through and every byte string each side received."""
    client, server = make_pair(seed=9)
    to_client: list[bytes] = []
    to_server: list[bytes] = []
    states = [("client", client.state), ("server", server.state)]
    client.initiate()
    states.append(("client", client.state))
    _pump(client, server, to_server)
    states.append(("server", server.state))
    _pump(server, client, to_client)
    states.append(("client", client.state))
    _pump(client, server, to_server)
    states.append(("server", server.state))
    _pump(server, client, to_client)
    states.append(("client", client.state))
    for i in range(3):
        client.queue(p.UnknownPacket(type=0x8001, payload=encode_payload({"i": i})))
        server.queue(p.UnknownPacket(type=0x8002, payload=encode_payload({"i": i})))
    client.start_rekey()
    client.ping()
    for _ in range(3):
        _pump(client, server, to_server)
        _pump(server, client, to_client)
    return states, to_client, to_server


def _connection_in(side: str, state: ConnectionState, transport: Transport) -> Connection:
    """A fresh connection driven (with the same fixed randoms) into ``state``."""
    client, server = make_pair(seed=9, transport=transport)
    conn = client if side == "client" else server
    if transport is Transport.DATAGRAM:
        clock = [0.0]

        def move(a: Connection, b: Connection) -> None:
            for d in a.datagrams_to_send(clock[0]):
                b.receive_datagram(d, clock[0])
                while b.next_event() is not NEED_DATA:
                    pass

        steps = [
            lambda: client.initiate(0.0),
            lambda: move(client, server),
            lambda: move(server, client),
            lambda: move(client, server),
            lambda: move(server, client),
        ]
    else:
        log: list[bytes] = []
        steps = [
            client.initiate,
            lambda: _pump(client, server, log),
            lambda: _pump(server, client, log),
            lambda: _pump(client, server, log),
            lambda: _pump(server, client, log),
        ]
    for step in steps:
        if conn.state is state:
            break
        step()
    assert conn.state is state
    return conn


REACHABLE = [
    ("client", S.IDLE),
    ("client", S.CLIENT_HELLO_SENT),
    ("client", S.CLIENT_FINISHED_SENT),
    ("client", S.ESTABLISHED),
    ("server", S.IDLE),
    ("server", S.SERVER_HELLO_SENT),
    ("server", S.ESTABLISHED),
]


def _corpus() -> list[bytes]:
    _, to_client, to_server = _script()
    frames: list[bytes] = []
    for blob in to_client + to_server:
        frames += [f.encode() for f in decode_frames_untrusted(blob)]
    return frames


@st.composite
def hostile_input(draw: st.DrawFn) -> bytes:
    corpus = _corpus()
    kind = draw(st.sampled_from(["random", "frame", "mutated", "spliced"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=120))
    frame = draw(st.sampled_from(corpus))
    if kind == "frame":
        return frame
    if kind == "spliced":
        return frame + draw(st.sampled_from(corpus))[: draw(st.integers(1, 40))]
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@pytest.mark.parametrize("transport", list(Transport), ids=lambda t: t.value)
@pytest.mark.parametrize(("side", "state"), REACHABLE, ids=lambda x: getattr(x, "value", x))
@given(inputs=st.lists(hostile_input(), min_size=1, max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_input_in_every_state(
    transport: Transport, side: str, state: ConnectionState, inputs: list[bytes]
) -> None:
    conn = _connection_in(side, state, transport)
    for data in inputs:
        try:
            if transport is Transport.STREAM:
                conn.receive_data(data)
                drain(conn)
            else:
                conn.receive_datagram(data, 1.0)
                drain(conn)
        except RemoteProtocolError:
            assert conn.state is S.CLOSED
            break
        assert conn.state in set(S)
    # whatever happened, the connection can still be asked for output and timers
    if transport is Transport.STREAM:
        conn.data_to_send()
    else:
        conn.datagrams_to_send(2.0)
    conn.get_timer()
    conn.handle_timer(3.0)


def test_script_reaches_every_state() -> None:
    states, to_client, to_server = _script()
    assert {s for _, s in states} >= {
        S.IDLE,
        S.CLIENT_HELLO_SENT,
        S.SERVER_HELLO_SENT,
        S.CLIENT_FINISHED_SENT,
        S.ESTABLISHED,
    }
    assert to_client and to_server
