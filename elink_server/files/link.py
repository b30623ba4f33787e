"""The Trio plumbing of one heavy-bus connection on the server.

A :class:`HeavyLink` runs one reader task that feeds received bytes to the
sans-IO :class:`~elink_protocol.connection.Connection`, handles its timers
(delayed acks, heartbeats, the idle deadline) and hands decoded packets to
the transfer over a small bounded channel; the transfer's own task sends.
Sending waits while the connection holds too many packets the peer has not
acknowledged yet, so a slow reader bounds the server's memory per transfer
(about ``max_unacked_packets`` x 64 KB).
"""

from __future__ import annotations

import math

import trio

from elink_protocol import ConnectionClosed, LocalProtocolError, Packet, ProtocolError
from elink_protocol.connection import Connection
from elink_protocol.events import Event, _NeedData

#: Bytes read per receive.
RECEIVE_SIZE = 256 * 1024
#: Most packets queued in the connection (not yet on the wire) before a
#: sender waits; the wire side is bounded by the connection's send window.
MAX_QUEUED = 8


class LinkClosed(Exception):
    """The connection ended; ``closed`` says how, when known."""

    def __init__(self, closed: ConnectionClosed | None) -> None:
        super().__init__(closed.reason if closed else "connection lost")
        self.closed = closed


class HeavyLink:
    def __init__(self, stream: trio.SocketStream, connection: Connection) -> None:
        self.stream = stream
        self.connection = connection
        self._send_events, self._receive_events = trio.open_memory_channel[Event | Packet](16)
        self._progress = trio.Event()
        self._write_lock = trio.Lock()
        self.closed: ConnectionClosed | None = None

    async def flush(self) -> None:
        async with self._write_lock:
            data = self.connection.data_to_send()
            if data:
                await self.stream.send_all(data)

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def run_reader(self) -> None:
        """Until the connection ends: receive, decode, hand over, answer."""
        conn = self.connection
        try:
            while True:
                deadline = conn.get_timer()
                data: bytes | None = None
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    try:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                now = trio.current_time()
                try:
                    if data is None:
                        conn.handle_timer(now)
                    else:
                        conn.receive_data(data, now=now)
                    while True:
                        event = conn.next_event()
                        if isinstance(event, _NeedData):
                            break
                        if isinstance(event, ConnectionClosed):
                            self.closed = event
                        await self._send_events.send(event)
                except ProtocolError:
                    pass  # the connection queued its Close; it is CLOSED now
                try:
                    await self.flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                self._wake()
                if self.closed is not None or data == b"" or conn.state.value == "CLOSED":
                    return
        finally:
            self._wake()
            await self._send_events.aclose()

    async def receive(self) -> Event | Packet:
        """The next event; raises :class:`LinkClosed` at the end."""
        try:
            event = await self._receive_events.receive()
        except trio.EndOfChannel:
            raise LinkClosed(self.closed) from None
        if isinstance(event, ConnectionClosed):
            raise LinkClosed(event)
        return event

    async def send(self, packet: Packet) -> None:
        """Queue ``packet`` and write what the connection lets out; waits
        while the peer lags behind (backpressure)."""
        while True:
            # The peer may have gone at any await: a closed connection queues
            # nothing, and that ends the transfer, never the service.
            if self.connection.state.value == "CLOSED":
                raise LinkClosed(self.closed)
            if self.connection.statistics().queued < MAX_QUEUED:
                break
            await self._progress.wait()
        try:
            self.connection.queue(packet)
            await self.flush()
        except (LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise LinkClosed(self.closed) from None

    async def close(self, code: int = 0, reason: str = "") -> None:
        """Close gracefully: what is queued goes first, then Close."""
        if self.connection.state.value != "CLOSED":
            self.connection.close(code, reason)
        try:
            with trio.move_on_after(2):
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
