"""Deterministic UDP timing, on Trio's autojump MockClock (no sleeps, no
wall clock): the client's handshake retransmission schedule (§6.8.2), its
answer to a RETRY (§6.9.3), and the server's idle timeout (§6.7.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import elink_sdk
from elink_protocol import Config, udp
from tests.helpers.sdk import client_options
from tests.helpers.server import open_test_server
from tests.helpers.udp_client import UdpLoopbackClient


async def _silent_server() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


async def _connect_and_fail(port: int, config: Config) -> None:
    options = client_options(port, "alice", transport="udp", config=config, reconnect=False)
    options["connect_timeout"] = 60.0
    with pytest.raises(elink_sdk.ServerUnavailable):
        async with elink_sdk.connect("127.0.0.1", port, **options):
            pass


async def test_the_client_retransmits_its_initial_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    arrivals: list[tuple[bytes, float]] = []
    with await _silent_server() as server:
        port = server.getsockname()[1]

        async def record() -> None:
            while True:
                data, _ = await server.recvfrom(65536)
                envelope = udp.decode_envelope_untrusted(data)
                assert envelope is not None and envelope.kind is udp.Kind.INITIAL
                assert len(data) == 1200
                arrivals.append((envelope.connection_id, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(record)
            start = trio.current_time()
            # initial_rtt 0.5 s: the first retransmission after 1 s, then
            # doubling; the 10 s handshake deadline ends it (§6.8.2, §6.7.3).
            await _connect_and_fail(port, Config(initial_rtt=0.5, handshake_timeout=10.0))
            nursery.cancel_scope.cancel()
    # The SDK tries again with a new connection (a new id) until its connect
    # timeout: the first connection's datagrams are the schedule.
    first = arrivals[0][0]
    assert [round(t - start, 6) for cid, t in arrivals if cid == first] == [0.0, 1.0, 3.0, 7.0]


async def test_a_retry_is_answered_at_once_with_its_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[float, bytes]] = []
    first_id: list[bytes] = []
    with await _silent_server() as server:
        port = server.getsockname()[1]

        async def retry_once() -> None:
            while True:
                data, source = await server.recvfrom(65536)
                envelope = udp.decode_envelope_untrusted(data)
                assert envelope is not None
                if not first_id:
                    first_id.append(envelope.connection_id)
                if envelope.connection_id != first_id[0]:
                    continue  # a later attempt of the SDK
                seen.append((trio.current_time(), envelope.token))
                if len(seen) == 1:
                    await server.sendto(
                        udp.encode_retry(envelope.connection_id, b"token-1"), source
                    )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(retry_once)
            await _connect_and_fail(port, Config(initial_rtt=0.5, handshake_timeout=2.0))
            nursery.cancel_scope.cancel()
    (t0, first), (t1, second), (t2, third) = seen
    assert first == b"" and second == third == b"token-1"
    assert t1 == t0  # re-sent at once, not on the timer
    assert t2 - t0 == pytest.approx(1.0)  # the flight timer was not disturbed


async def test_the_server_ends_a_silent_udp_session_after_its_idle_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_server(tmp_path, idle_timeout=60.0, heartbeat_interval=20.0) as server:
        assert server.udp is not None
        async with UdpLoopbackClient(server.udp.port) as client:
            await client.do_handshake()
            assert server.udp.statistics().connections == 1
            established = trio.current_time()
            # The client goes silent (its NAT binding died, say).
            with trio.fail_after(120):
                while server.udp.statistics().connections:
                    await trio.sleep(1)
            # The server pinged at its heartbeat interval, heard nothing,
            # and closed at the idle timeout (§6.7.1-§6.7.2).
            assert 60.0 <= trio.current_time() - established <= 62.0
            assert server.statistics().sessions == 0
