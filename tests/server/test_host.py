"""The Trio host over real loopback sockets: handshakes, liveness, errors,
deadlines, admission and shutdown."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import trio

from elink_protocol import (
    ConnectionClosed,
    ErrorCode,
    HandshakeComplete,
    Ping,
    Pong,
    Role,
    UnknownPacket,
)
from elink_protocol.app import GoingAway
from elink_protocol.connection import Connection
from elink_protocol.frame import HEADER_SIZE
from elink_protocol.payload import encode_payload
from elink_server.host import Server, ServerStatistics
from elink_server.peer import Peer
from tests.helpers.server import (
    WAIT,
    LoopbackClient,
    client_config,
    connect_client,
    open_test_server,
)


def _data(i: int) -> UnknownPacket:
    return UnknownPacket(type=0x8001, payload=encode_payload({"i": i}))


async def _echo(peer: Peer, packet: Any) -> None:
    await peer.send(packet)


ECHO = {UnknownPacket: _echo}


async def _wait_for(server: Server, check: Any) -> ServerStatistics:
    """Poll the server's statistics until ``check(stats)`` holds."""
    with trio.fail_after(WAIT):
        while not check(stats := server.statistics()):
            await trio.sleep(0.005)
    return stats


async def _raw_close(stream: trio.SocketStream) -> ConnectionClosed:
    """Read a (plaintext) Close the server sends on a connection where the
    client never completed a handshake, through a client Connection."""
    conn = Connection(role=Role.CLIENT, config=client_config())
    conn.initiate()
    conn.data_to_send()  # never sent: only the parser is wanted
    raw = LoopbackClient(stream, conn)
    raw.flush = _no_flush  # type: ignore[method-assign]
    return await raw.wait_closed()


async def _no_flush() -> None:
    return None


async def test_handshake_over_tcp(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server, connect_client(server) as client:
        assert client.handshake is not None
        assert client.handshake.server_fingerprint in set(server.identity.fingerprints().values())
        stats = await _wait_for(server, lambda s: s.sessions == 1)
        assert stats.connections == 1
        assert stats.handshakes_completed == 1
        assert stats.handshakes_in_progress == 0


async def test_ping_is_answered_with_pong(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server, connect_client(server) as client:
        client.connection.ping(b"hello")
        await client.flush()
        with trio.fail_after(WAIT):
            data = await client.stream.receive_some(65536)
        # The frame header is in clear even on encrypted frames (§4.1).
        (frame_type,) = struct.unpack_from("!H", data, 2)
        assert frame_type == Pong.TYPE
        client.connection.receive_data(data)
        assert client.connection.statistics().bytes_received >= HEADER_SIZE
        assert Ping(data=b"hello").response() == Pong(data=b"hello")


async def test_application_packets_reach_services_and_back(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, services=ECHO) as server, connect_client(server) as c:
        for i in range(50):
            c.connection.queue(_data(i))
        await c.flush()
        got = [await c.next_event() for _ in range(50)]
        assert got == [_data(i) for i in range(50)]
        stats = server.statistics()
        assert stats.packets_in >= 50 and stats.packets_out >= 50


async def test_malformed_first_frame_gets_close_and_others_are_served(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            # version 1, reserved flag bit 7 set: FRAME_MALFORMED (§4.1)
            await stream.send_all(b"\x01\x80" + bytes(18))
            closed = await _raw_close(stream)
        assert closed.by_peer and closed.code == ErrorCode.FRAME_MALFORMED
        async with connect_client(server) as second:
            assert second.handshake is not None
        stats = await _wait_for(server, lambda s: s.connections == 0)
        assert stats.protocol_errors == 1
        assert stats.handshakes_completed == 1


async def test_garbage_after_handshake_closes_only_that_peer(tmp_path: Path) -> None:
    async with (
        open_test_server(tmp_path, services=ECHO) as server,
        connect_client(server) as good,
        connect_client(server) as bad,
    ):
        # A well-formed header claiming encryption, with a payload that does
        # not authenticate: DECRYPT_ERROR on a stream (§7.5).
        header = struct.pack("!BBHIIHBBI", 1, 0x01, 0x8001, 1, 0, 17, 1, 0, 0)
        await bad.stream.send_all(header + bytes(17))
        closed = await bad.wait_closed()
        assert closed.by_peer and closed.code == ErrorCode.DECRYPT_ERROR
        await good.send(_data(7))
        assert await good.next_event() == _data(7)


async def test_failing_service_closes_only_its_peer(tmp_path: Path) -> None:
    async def broken(peer: Peer, packet: Any) -> None:
        if packet.type == 0x8002:
            raise RuntimeError("bug in a service")
        await peer.send(packet)

    services = {UnknownPacket: broken}
    async with (
        open_test_server(tmp_path, services=services) as server,
        connect_client(server) as good,
        connect_client(server) as victim,
    ):
        await victim.send(UnknownPacket(type=0x8002, payload=encode_payload({})))
        closed = await victim.wait_closed()
        assert closed.by_peer and closed.code == ErrorCode.INTERNAL_ERROR
        await good.send(_data(1))
        assert await good.next_event() == _data(1)


async def test_stalled_handshake_hits_its_deadline(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, handshake_timeout=0.3) as server:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            closed = await _raw_close(stream)  # we send nothing at all
        assert closed.code == ErrorCode.TIMEOUT
        stats = await _wait_for(server, lambda s: s.connections == 0)
        assert stats.handshake_failures == 1


async def test_silent_session_hits_the_idle_timeout(tmp_path: Path) -> None:
    settings = {"idle_timeout": 0.6, "heartbeat_interval": 0.2}
    async with open_test_server(tmp_path, **settings) as server, connect_client(server) as c:
        # Read nothing and answer nothing until the server gives up.
        await _wait_for(server, lambda s: s.sessions == 0)
        closed = await c.wait_closed()
        assert closed.by_peer and closed.code == ErrorCode.TIMEOUT


async def test_admission_limit_makes_excess_handshakes_wait(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, max_handshakes=2, handshake_queue=10) as server:
        streams = []
        with trio.fail_after(WAIT):
            for _ in range(6):
                streams.append(await trio.open_tcp_stream("127.0.0.1", server.port))
        stats = await _wait_for(server, lambda s: s.connections == 6)
        assert stats.handshakes_in_progress == 2
        assert stats.handshakes_waiting == 4
        done: list[HandshakeComplete] = []

        async def shake(stream: trio.SocketStream) -> None:
            client = LoopbackClient(stream, Connection(role=Role.CLIENT, config=client_config()))
            done.append(await client.do_handshake())

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(shake, stream)
        assert len(done) == 6
        stats = await _wait_for(server, lambda s: s.sessions == 6)
        assert stats.waited_total == 4
        assert stats.handshakes_waiting == 0 and stats.handshakes_in_progress == 0
        for stream in streams:
            await stream.aclose()


async def test_full_admission_queue_refuses_with_resource_limit(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, max_handshakes=1, handshake_queue=1) as server:
        with trio.fail_after(WAIT):
            holder = await trio.open_tcp_stream("127.0.0.1", server.port)
            await _wait_for(server, lambda s: s.handshakes_in_progress == 1)
            waiter = await trio.open_tcp_stream("127.0.0.1", server.port)
            await _wait_for(server, lambda s: s.handshakes_waiting == 1)
            refused = await trio.open_tcp_stream("127.0.0.1", server.port)
        closed = await _raw_close(refused)
        assert closed.code == ErrorCode.RESOURCE_LIMIT
        assert server.statistics().refused_total == 1
        for stream in (holder, waiter, refused):
            await stream.aclose()


async def test_shutdown_tells_every_connection(tmp_path: Path) -> None:
    async def run(task_status: trio.TaskStatus[Server]) -> None:
        async with open_test_server(tmp_path, max_handshakes=1) as server:
            task_status.started(server)
            await server.wait_shutdown_requested()

    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(run)
        async with connect_client(server) as established:
            with trio.fail_after(WAIT):
                holder = await trio.open_tcp_stream("127.0.0.1", server.port)
                await _wait_for(server, lambda s: s.handshakes_in_progress == 1)
                waiter = await trio.open_tcp_stream("127.0.0.1", server.port)
                await _wait_for(server, lambda s: s.handshakes_waiting == 1)
            server.shutdown()
            notice = await established.next_event()
            assert isinstance(notice, GoingAway) and notice.reason == "server shutting down"
            closed = await established.wait_closed()
            assert closed.by_peer and closed.graceful and closed.code == ErrorCode.GOING_AWAY
            for stream in (holder, waiter):
                async with stream:
                    assert (await _raw_close(stream)).code == ErrorCode.GOING_AWAY
    # The server task returned: the listener is gone.
    with pytest.raises(OSError), trio.fail_after(WAIT):
        await trio.open_tcp_stream("127.0.0.1", server.port)
