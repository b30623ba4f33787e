"""A bare UDP client for server tests: one sans-IO datagram Connection over a
trio UDP socket, with the envelope of docs/protocol.md §6.9 done by hand, so
tests can see and shape every datagram."""

from __future__ import annotations

import os

import trio

from elink_protocol import udp
from elink_protocol.connection import Connection, Transport
from elink_protocol.events import NEED_DATA, Event
from elink_protocol.packets import Packet
from elink_protocol.state import ConnectionState, Role
from tests.helpers.server import WAIT, client_config


class UdpLoopbackClient:
    def __init__(self, port: int, **config: object) -> None:
        self.address = ("127.0.0.1", port)
        self.socket = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.connection_id = os.urandom(8)
        self.connection = Connection(
            role=Role.CLIENT,
            config=client_config(max_datagram_size=udp.DATA_FRAMES_LIMIT, **config),
            transport=Transport.DATAGRAM,
            now=trio.current_time(),
        )
        self.token = b""
        self.retries = 0
        self.events: list[Event | Packet] = []

    async def __aenter__(self) -> UdpLoopbackClient:
        await self.socket.bind(("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.socket.close()

    async def rebind(self) -> None:
        """Continue from a new source port (a NAT rebinding)."""
        self.socket.close()
        self.socket = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await self.socket.bind(("127.0.0.1", 0))

    async def flush(self) -> None:
        established = self.connection.state is ConnectionState.ESTABLISHED
        for frames in self.connection.datagrams_to_send(trio.current_time()):
            if established:
                datagram = udp.encode_data(self.connection_id, frames)
            else:
                self._last_initial = frames
                datagram = udp.encode_initial(self.connection_id, self.token, frames)
            await self.socket.sendto(datagram, self.address)

    async def receive_once(self) -> None:
        """Wait for one datagram (or the connection's timer) and process it."""
        deadline = self.connection.get_timer()
        with trio.move_on_at(deadline if deadline is not None else trio.current_time() + WAIT):
            data, _ = await self.socket.recvfrom(65536)
            envelope = udp.decode_envelope_untrusted(data)
            assert envelope is not None and envelope.connection_id == self.connection_id
            if envelope.kind is udp.Kind.RETRY:
                self.token = envelope.token
                self.retries += 1
                await self.socket.sendto(
                    udp.encode_initial(self.connection_id, self.token, self._last_initial),
                    self.address,
                )
            else:
                self.connection.receive_datagram(envelope.frames, trio.current_time())
        self.connection.handle_timer(trio.current_time())
        while (event := self.connection.next_event()) is not NEED_DATA:
            self.events.append(event)  # type: ignore[arg-type]
        await self.flush()

    async def do_handshake(self) -> None:
        self.connection.initiate(trio.current_time())
        await self.flush()
        with trio.fail_after(WAIT):
            while self.connection.state is not ConnectionState.ESTABLISHED:
                await self.receive_once()
            # ClientFinished may be lost: the server's next frame confirms it.
            await self.flush()
