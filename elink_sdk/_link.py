"""One transport connection of the client: the anyio plumbing around one
sans-IO :class:`elink_protocol.connection.Connection`.

Theory of operation
-------------------
A :class:`Link` runs three tasks over one transport (a byte stream for
:class:`StreamLink`, a UDP socket for :class:`DatagramLink`), all in the caller's
event loop (Trio or asyncio, through anyio):

* the **reader** receives bytes, feeds them to the connection and hands every
  event it produced to ``on_event``, a plain function that must not block;
* the **writer** sleeps until something was queued and writes whatever
  ``data_to_send()`` returns, so bytes leave in the order the connection
  produced them and only one task ever writes;
* the **timer** sleeps until ``get_timer()`` and calls ``handle_timer()``
  (heartbeats, delayed acks, rekeys, the handshake and idle deadlines).

Anything that changes the connection (``send``, the reader, the timer) wakes
the writer and the timer.  The link ends when the connection reports
:class:`ConnectionClosed`, the peer breaks the protocol, or the stream
fails; ``ended`` is then set and ``closed`` tells how.  Ending writes what is
left (a Close packet, say) for a short moment, then closes the stream.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from elink_protocol import (
    ConnectionClosed,
    ErrorCode,
    Packet,
    ProtocolError,
    udp,
)
from elink_protocol.connection import Connection
from elink_protocol.events import Event, _NeedData
from elink_protocol.state import ConnectionState

#: Bytes read per receive.
RECEIVE_SIZE = 65536

#: How long the link tries to write its last bytes (a Close) when it ends.
FINAL_WRITE_SECONDS = 1.0

_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class Link:
    """Drives one :class:`Connection` over one transport: the shared part of
    :class:`StreamLink` (TCP) and :class:`DatagramLink` (UDP)."""

    def __init__(
        self,
        connection: Connection,
        on_event: Callable[[Event | Packet], None],
    ) -> None:
        self.connection = connection
        self._on_event = on_event
        self._wake_writer = anyio.Event()
        self._wake_timer = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self.ended = anyio.Event()
        self.closed: ConnectionClosed | None = None
        """How the connection ended (set when ``ended`` is)."""
        self.error: ProtocolError | None = None
        """The protocol error that ended it, if one did."""

    # ------------------------------------------------------------ the API

    def send(self, packet: Packet) -> None:
        """Queue ``packet``.  Raises the library's LocalProtocolError when the
        connection is closed or its send queue is full."""
        self.connection.queue(packet)
        self.kick()

    def kick(self) -> None:
        """Something was queued on the connection: write it, re-arm the timer."""
        self._wake_writer.set()
        self._wake_timer.set()

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Send Close and end the link once it is written."""
        if self.closed is not None:
            return
        self.connection.close(code, reason)
        self._end(ConnectionClosed(code=code, reason=reason, by_peer=False, graceful=True))

    async def run(self) -> None:
        """Run until the connection ends; then write what is left and close
        the stream."""
        try:
            async with anyio.create_task_group() as tasks:
                self._scope = tasks.cancel_scope
                if self.closed is not None:  # closed before it started
                    tasks.cancel_scope.cancel()
                tasks.start_soon(self._writer)
                tasks.start_soon(self._timer)
                tasks.start_soon(self._reader)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_WRITE_SECONDS):
                try:
                    await self._write_pending()
                except (*_STREAM_ERRORS, ProtocolError):
                    pass
                await self._close_transport()
            if self.closed is None:
                self.closed = ConnectionClosed(
                    code=ErrorCode.NO_ERROR, reason="link stopped", by_peer=False, graceful=False
                )
            self.ended.set()

    # ------------------------------------------------------------ the tasks

    def _end(self, closed: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = closed
        if self._scope is not None:
            self._scope.cancel()

    def _drain(self) -> None:
        """Hand every ready event to ``on_event``; end on ConnectionClosed or
        on a protocol error (whose Close the library has queued)."""
        while not self.ended.is_set() and self.closed is None:
            try:
                event = self.connection.next_event()
            except ProtocolError as exc:
                self.error = exc
                self._end(
                    ConnectionClosed(
                        code=exc.error_code, reason=str(exc), by_peer=False, graceful=True
                    )
                )
                return
            if isinstance(event, _NeedData):
                break
            if isinstance(event, ConnectionClosed):
                self._end(event)
                return
            try:
                self._on_event(event)
            except ProtocolError as exc:  # the handler found the packet illegal
                self.error = exc
                self.close(exc.error_code, str(exc))
                return
        self.kick()

    async def _reader(self) -> None:
        raise NotImplementedError

    async def _write_pending(self) -> None:
        """Write what the connection has to send (raises the transport's
        errors)."""
        raise NotImplementedError

    async def _close_transport(self) -> None:
        raise NotImplementedError

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = anyio.Event()
            try:
                await self._write_pending()
            except _STREAM_ERRORS:
                self._end(
                    ConnectionClosed(
                        code=ErrorCode.NO_ERROR,
                        reason="connection lost",
                        by_peer=True,
                        graceful=False,
                    )
                )
                return
            # What was just sent may need a timer (a retransmission timeout
            # starts when a datagram packet leaves, not when it is queued).
            self._wake_timer.set()

    async def _timer(self) -> None:
        while True:
            self._wake_timer = anyio.Event()
            deadline = self.connection.get_timer()
            if deadline is None:
                await self._wake_timer.wait()
                continue
            delay = deadline - anyio.current_time()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake_timer.wait()
                continue
            self.connection.handle_timer(anyio.current_time())
            self._drain()
            await self._after_timer()

    async def _after_timer(self) -> None:
        """After ``handle_timer``: what the transport must do before the
        timer is looked at again."""


class StreamLink(Link):
    """A :class:`Link` over one anyio byte stream (TCP)."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        connection: Connection,
        on_event: Callable[[Event | Packet], None],
    ) -> None:
        super().__init__(connection, on_event)
        self._stream = stream

    async def _reader(self) -> None:
        while True:
            try:
                data = await self._stream.receive(RECEIVE_SIZE)
            except _STREAM_ERRORS:
                data = b""
            try:
                self.connection.receive_data(data, anyio.current_time())
            except ProtocolError as exc:
                self.error = exc
                self._end(
                    ConnectionClosed(
                        code=exc.error_code, reason=str(exc), by_peer=False, graceful=True
                    )
                )
                return
            self._drain()
            if not data:  # end of stream: the library reported how, or we end here
                self._end(
                    ConnectionClosed(
                        code=ErrorCode.NO_ERROR,
                        reason="connection lost",
                        by_peer=True,
                        graceful=False,
                    )
                )
                return

    async def _write_pending(self) -> None:
        data = self.connection.data_to_send()
        if data:
            await self._stream.send(data)

    async def _close_transport(self) -> None:
        await self._stream.aclose()


_BEFORE_SERVER_HELLO = (ConnectionState.IDLE, ConnectionState.CLIENT_HELLO_SENT)


class DatagramLink(Link):
    """A :class:`Link` over a connected anyio UDP socket (§6.9).

    Wraps the connection's datagrams in the UDP envelope: INITIALs padded to
    1200 bytes until the handshake completes (carrying the server's
    address-validation token once a RETRY brought one), DATA afterwards.  A
    RETRY makes the link re-send its latest INITIAL at once with the token.
    Datagrams for another connection id, and anything undecodable, are
    dropped; the connection itself drops corrupted or forged frames."""

    def __init__(
        self,
        socket: anyio.abc.ConnectedUDPSocket,
        connection: Connection,
        on_event: Callable[[Event | Packet], None],
        *,
        connection_id: bytes,
    ) -> None:
        super().__init__(connection, on_event)
        self._socket = socket
        self.connection_id = connection_id
        self._token = b""
        self._heard_server = False
        self._last_initial = b""  # frames of the latest INITIAL sent
        self._send_lock = anyio.Lock()  # the reader re-sends on RETRY too
        self.retries = 0
        """RETRYs the server sent this link (address validation)."""

    async def _reader(self) -> None:
        while True:
            try:
                datagram = await self._socket.receive()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._end(
                    ConnectionClosed(
                        code=ErrorCode.NO_ERROR,
                        reason="socket closed",
                        by_peer=False,
                        graceful=False,
                    )
                )
                return
            except OSError:
                continue  # an ICMP error for an earlier datagram: just loss
            envelope = udp.decode_envelope_untrusted(datagram)
            if envelope is None or envelope.connection_id != self.connection_id:
                continue
            if envelope.kind is udp.Kind.RETRY:
                # A RETRY is not authenticated: a corrupted one may carry a
                # bad token, so every RETRY replaces the token until the
                # server has answered with an authentic frame (§6.9.3).
                if not self._heard_server and self._last_initial:
                    self._token = envelope.token
                    self.retries += 1
                    await self._send_initial(self._last_initial)
                continue
            if envelope.kind is not udp.Kind.DATA:
                continue
            try:
                self.connection.receive_datagram(envelope.frames, anyio.current_time())
            except ProtocolError as exc:
                self.error = exc
                self._end(
                    ConnectionClosed(
                        code=exc.error_code, reason=str(exc), by_peer=False, graceful=True
                    )
                )
                return
            # The server's first flight was accepted: tokens are settled.
            self._heard_server = self.connection.state not in _BEFORE_SERVER_HELLO
            self._drain()

    async def _after_timer(self) -> None:
        # On datagrams some timers (the delayed ack) are served by
        # datagrams_to_send(), not handle_timer(): write before looking at
        # the timer again, or it would still be due.
        await self._write_pending()

    async def _write_pending(self) -> None:
        now = anyio.current_time()
        for datagram in self.connection.datagrams_to_send(now):
            if self.connection.state is ConnectionState.ESTABLISHED:
                await self._send(udp.encode_data(self.connection_id, datagram))
            else:
                self._last_initial = datagram
                await self._send_initial(datagram)

    async def _send_initial(self, frames: bytes) -> None:
        try:
            initial = udp.encode_initial(self.connection_id, self._token, frames)
        except ValueError:
            return  # a flight too large for UDP: it never completes, the deadline ends it
        await self._send(initial)

    async def _send(self, datagram: bytes) -> None:
        try:
            async with self._send_lock:
                await self._socket.send(datagram)
        except OSError:
            pass  # an ICMP error or a full buffer: the datagram is lost, as on the path

    async def _close_transport(self) -> None:
        await self._socket.aclose()
