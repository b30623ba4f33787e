"""The server's UDP endpoint (docs/protocol.md §6.9): address validation,
demultiplexing by connection id, floods, and clients that change address."""

from __future__ import annotations

import os
import random
from pathlib import Path

import trio

import elink_sdk
from elink_protocol import udp
from elink_sdk import MessageReceived
from elink_server.host import Server
from elink_server.udp import UdpEndpoint
from tests.helpers.sdk import sdk_client, sdk_server
from tests.helpers.server import WAIT, open_test_server
from tests.helpers.udp_client import UdpLoopbackClient
from tests.helpers.udp_proxy import open_lossy_udp_proxy


def _udp(server: Server) -> UdpEndpoint:
    assert server.udp is not None
    return server.udp


async def _socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


async def _received(client: elink_sdk.Client, count: int) -> list[str]:
    texts: list[str] = []
    with trio.fail_after(WAIT):
        while len(texts) < count:
            event = await client.next_event()
            if isinstance(event, MessageReceived) and event.text is not None:
                texts.append(event.text)
    return texts


async def test_a_client_is_validated_by_one_retry_then_handshakes(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server, UdpLoopbackClient(_udp(server).port) as c:
        await c.do_handshake()
        assert c.retries == 1
        stats = _udp(server).statistics()
        assert stats.retries_sent == 1 and stats.connections == 1


async def test_unvalidated_initials_get_one_small_retry_each_and_leave_no_state(
    tmp_path: Path,
) -> None:
    async with open_test_server(tmp_path) as server:
        port = _udp(server).port
        with await _socket() as sock:
            # Datagrams that are not INITIALs, or INITIALs not padded to 1200
            # bytes, are never answered.
            silent = [
                os.urandom(1200),
                udp.encode_data(os.urandom(8), os.urandom(100)),
                udp.encode_initial(os.urandom(8), b"", b"x")[:1000],
                udp.encode_retry(os.urandom(8), b"t"),
            ]
            for datagram in silent:
                await sock.sendto(datagram, ("127.0.0.1", port))
            ids = [os.urandom(8) for _ in range(100)]
            sent = 0
            for i, cid in enumerate(ids):
                forged = os.urandom(20) if i % 2 else b""  # no token, or a forged one
                datagram = udp.encode_initial(cid, forged, os.urandom(200))
                sent += len(datagram)
                await sock.sendto(datagram, ("127.0.0.1", port))
            answered = []
            received = 0
            with trio.fail_after(WAIT):
                while len(answered) < len(ids):
                    data, _ = await sock.recvfrom(65536)
                    received += len(data)
                    envelope = udp.decode_envelope_untrusted(data)
                    assert envelope is not None and envelope.kind is udp.Kind.RETRY
                    assert len(data) <= 74
                    answered.append(envelope.connection_id)
        # Exactly one RETRY per INITIAL, in order (so nothing answered the
        # silent ones), far fewer bytes out than in, and no state kept.
        assert answered == ids
        assert received <= sent // 10
        stats = _udp(server).statistics()
        assert stats.connections == 0 and stats.retries_sent == len(ids)
        assert stats.retry_bytes_out <= stats.initial_bytes_unvalidated
        assert server.statistics().connections == 0


async def test_a_token_opens_a_connection_only_from_its_own_address(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        port = _udp(server).port
        cid = os.urandom(8)
        initial = udp.encode_initial(cid, b"", b"frames")
        with await _socket() as victim, await _socket() as attacker:
            await victim.sendto(initial, ("127.0.0.1", port))
            with trio.fail_after(WAIT):
                data, _ = await victim.recvfrom(65536)
            retry = udp.decode_envelope_untrusted(data)
            assert retry is not None and retry.kind is udp.Kind.RETRY
            # The attacker replays the victim's token from its own address.
            await attacker.sendto(
                udp.encode_initial(cid, retry.token, b"frames"), ("127.0.0.1", port)
            )
            with trio.fail_after(WAIT):
                data, _ = await attacker.recvfrom(65536)
            again = udp.decode_envelope_untrusted(data)
            assert again is not None and again.kind is udp.Kind.RETRY
        assert _udp(server).statistics().connections == 0


async def test_a_flood_of_garbage_does_not_disturb_other_sessions(tmp_path: Path) -> None:
    rnd = random.Random(5)
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(_udp(server).port, "alice", transport="udp") as alice,
        sdk_client(_udp(server).port, "bob", transport="udp") as bob,
    ):
        # The flooder even knows alice's connection id (an on-path observer).
        victim_id = alice._link.connection_id  # type: ignore[union-attr]
        port = _udp(server).port

        async def flood(sock: trio.socket.SocketType) -> None:
            for i in range(3000):
                kind = i % 5
                if kind == 0:
                    datagram = rnd.randbytes(rnd.randrange(1, 1400))
                elif kind == 1:
                    datagram = udp.encode_data(victim_id, rnd.randbytes(rnd.randrange(0, 1100)))
                elif kind == 2:  # a header that parses, with a forged record
                    frame = bytes([1, 1, 2, 0]) + rnd.randbytes(16) + rnd.randbytes(40)
                    datagram = udp.encode_data(victim_id, frame)
                elif kind == 3:
                    datagram = udp.encode_initial(victim_id, rnd.randbytes(20), b"x")
                else:
                    datagram = udp.encode_data(rnd.randbytes(8), rnd.randbytes(100))
                await sock.sendto(datagram, ("127.0.0.1", port))
                if i % 100 == 0:
                    await trio.sleep(0)

        with await _socket() as sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood, sock)
                for i in range(20):
                    await alice.send_text("bob", f"m{i}")
        assert await _received(bob, 20) == [f"m{i}" for i in range(20)]
        for client in (alice, bob):
            stats = client.statistics()
            assert stats.connected and stats.connections == 1  # never reconnected
        assert _udp(server).statistics().discarded >= 1000


async def test_a_session_follows_its_client_to_a_new_address(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        open_lossy_udp_proxy(_udp(server).port, seed=3) as proxy,
        sdk_client(proxy.port, "alice", transport="udp") as alice,
        sdk_client(proxy.port, "bob", transport="udp") as bob,
    ):
        for i in range(10):
            await alice.send_text("bob", f"m{i}")
        assert await _received(bob, 10) == [f"m{i}" for i in range(10)]
        proxy.rebind()  # both clients now reach the server from new ports
        for i in range(10, 20):
            await alice.send_text("bob", f"m{i}")
        assert await _received(bob, 10) == [f"m{i}" for i in range(10, 20)]
        await bob.send_text("alice", "still here")
        assert await _received(alice, 1) == ["still here"]
        assert _udp(server).statistics().migrations == 2
        for client in (alice, bob):
            assert client.statistics().connections == 1  # the same connection


async def test_a_replayed_datagram_from_elsewhere_does_not_move_the_session(
    tmp_path: Path,
) -> None:
    async with open_test_server(tmp_path) as server, UdpLoopbackClient(_udp(server).port) as c:
        await c.do_handshake()
        c.connection.ping(b"1")
        (frames,) = c.connection.datagrams_to_send(trio.current_time())
        datagram = udp.encode_data(c.connection_id, frames)
        await c.socket.sendto(datagram, ("127.0.0.1", _udp(server).port))
        with await _socket() as attacker:
            await attacker.sendto(datagram, ("127.0.0.1", _udp(server).port))
            with trio.move_on_after(0.3):
                await attacker.recvfrom(65536)
                raise AssertionError("the server answered a replay's source")
        assert _udp(server).statistics().migrations == 0
