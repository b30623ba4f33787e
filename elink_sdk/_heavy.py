"""One heavy-bus connection of the client (docs/protocol.md §9.4-§9.8): the
anyio plumbing around one sans-IO :class:`~elink_protocol.connection.Connection`
made with :func:`~elink_protocol.heavy_bus_config`.

Theory of operation
-------------------
A heavy-bus connection carries one transfer and never logs in, so it is much
simpler than the light bus's :class:`~elink_sdk._link.Link`: one *reader*
task receives bytes, runs the connection's timers (it wakes at least every
:data:`TICK` seconds to do so), and hands the packets it decodes to the
transfer through a small bounded channel.  The transfer's own task sends:
:meth:`HeavyLink.send` waits while the connection holds more than
:data:`MAX_QUEUED` packets the peer has not taken yet, so a slow server
bounds the memory an upload holds, and a full channel stops the reader, so a
slow disk bounds the memory a download holds (TCP pushes back on the server).

Anything that ends the connection before the transfer is complete raises
:class:`HeavyCut` (the caller resumes on a new connection); a TransferFailed
from the server raises :class:`HeavyRefused` with its code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from elink_protocol import (
    Config,
    ConnectionClosed,
    ErrorCode,
    HandshakeComplete,
    LocalProtocolError,
    Packet,
    ProtocolError,
    Role,
    UntrustedServerKey,
)
from elink_protocol.app import TransferFailed
from elink_protocol.connection import Connection
from elink_protocol.events import Event, _NeedData
from elink_protocol.packets import UnknownPacket

#: Bytes read per receive.
RECEIVE_SIZE = 256 * 1024
#: Packets queued in the connection (not yet on the wire) before a sender waits.
MAX_QUEUED = 8
#: Decoded packets waiting for the transfer before the reader stops reading.
CHANNEL_SIZE = 64
#: How long closing tries to write the Close packet.
FINAL_WRITE_SECONDS = 1.0
#: Longest the reader sleeps before it looks at the connection's timers.
TICK = 0.25

_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class HeavyCut(Exception):
    """The heavy-bus connection could not be made or ended early: resume on
    a new one."""


class HeavyRefused(Exception):
    """The server ended the transfer with TransferFailed (§9.8)."""

    def __init__(self, failed: TransferFailed) -> None:
        super().__init__(failed.reason or f"transfer failed (0x{failed.code:04X})")
        self.code = failed.code
        self.reason = failed.reason
        self.retry_after = failed.retry_after_ms / 1000


class HeavyLink:
    """Drives one heavy-bus :class:`Connection` over one anyio byte stream."""

    def __init__(
        self, stream: anyio.abc.ByteStream, connection: Connection, *, stall_timeout: float
    ) -> None:
        self.connection = connection
        self.stall_timeout = stall_timeout
        """Longest :meth:`send` or :meth:`receive` waits for the server
        before the connection counts as cut."""
        self._stream = stream
        self._events: tuple[MemoryObjectSendStream[Packet], MemoryObjectReceiveStream[Packet]] = (
            anyio.create_memory_object_stream[Packet](CHANNEL_SIZE)
        )
        self._progress = anyio.Event()
        self._write_lock = anyio.Lock()
        self.handshake: HandshakeComplete | None = None
        self.failed: TransferFailed | None = None
        """The server's TransferFailed, once one arrived."""
        self.ended = False
        self.reason = ""
        """Why the connection ended (once ``ended``)."""
        self.error: ProtocolError | None = None
        """The protocol error that ended it, if one did (an untrusted key...)."""
        self._abandoned = False

    # ------------------------------------------------------------ sending

    async def _flush(self) -> None:
        async with self._write_lock:
            data = self.connection.data_to_send()
            if data:
                try:
                    await self._stream.send(data)
                except _STREAM_ERRORS:
                    self._end("connection lost")

    def _check_open(self) -> None:
        if self.failed is not None:
            raise HeavyRefused(self.failed)
        if self.ended or self.connection.state.value == "CLOSED":
            raise HeavyCut(self.reason or "the heavy-bus connection ended")

    async def send(self, packet: Packet) -> None:
        """Queue ``packet`` and write what the connection lets out; waits
        while the server lags behind."""
        with anyio.move_on_after(self.stall_timeout) as scope:
            while True:
                self._check_open()
                if self.connection.statistics().queued < MAX_QUEUED:
                    break
                progress = self._progress
                await progress.wait()
        if scope.cancelled_caught:
            raise HeavyCut("the heavy-bus connection stalled: the server takes nothing")
        try:
            self.connection.queue(packet)
        except LocalProtocolError as exc:
            raise HeavyCut(f"the heavy-bus connection is closing: {exc}") from None
        with anyio.move_on_after(self.stall_timeout) as scope:
            await self._flush()
        if scope.cancelled_caught:  # a write may be half done: nothing more on this stream
            self._abandoned = True
            self._end("stalled while writing")
            raise HeavyCut("the heavy-bus connection stalled: the server reads nothing")

    # ------------------------------------------------------------ receiving

    async def receive(self) -> Packet:
        """The next packet from the server.  Raises :class:`HeavyRefused` for
        TransferFailed and :class:`HeavyCut` when the connection ended."""
        packet: Packet | None = None
        with anyio.move_on_after(self.stall_timeout):
            try:
                packet = await self._events[1].receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._check_open()
                raise HeavyCut(self.reason or "the heavy-bus connection ended") from None
        if packet is None:
            raise HeavyCut("the heavy-bus connection stalled: the server says nothing")
        if isinstance(packet, TransferFailed):
            raise HeavyRefused(packet)
        return packet

    def _end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.reason = reason
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def _deliver(self, event: Event | Packet) -> None:
        if isinstance(event, HandshakeComplete):
            self.handshake = event
        elif isinstance(event, ConnectionClosed):
            self._end(event.reason or "closed by the server")
        elif isinstance(event, UnknownPacket):
            pass  # an extension this client does not know: ignored (§5.3)
        elif isinstance(event, Packet):
            if isinstance(event, TransferFailed):
                self.failed = event
            await self._events[0].send(event)

    async def run_reader(self) -> None:
        """Until the connection ends: receive, decode, hand over, answer."""
        conn = self.connection
        try:
            while not self.ended:
                timer = conn.get_timer()
                now = anyio.current_time()
                wait = TICK if timer is None else min(TICK, max(0.0, timer - now))
                data: bytes | None = None
                with anyio.move_on_after(wait):
                    try:
                        data = await self._stream.receive(RECEIVE_SIZE)
                    except _STREAM_ERRORS:
                        data = b""
                now = anyio.current_time()
                try:
                    if data is not None:
                        conn.receive_data(data, now)
                    timer = conn.get_timer()
                    if timer is not None and timer <= now:
                        conn.handle_timer(now)
                    while True:
                        event = conn.next_event()
                        if isinstance(event, _NeedData):
                            break
                        await self._deliver(event)
                except ProtocolError as exc:
                    self.error = exc
                    self._end(f"protocol error: {exc}")  # the library queued its Close
                await self._flush()
                self._wake()
                if data == b"":
                    self._end("connection lost")
        finally:
            self._end(self.reason or "connection ended")
            self._events[0].close()

    async def aclose(self) -> None:
        """Say Close (briefly) and close the stream."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(FINAL_WRITE_SECONDS):
                if self.connection.state.value != "CLOSED":
                    with contextlib.suppress(LocalProtocolError, ProtocolError):
                        self.connection.close(ErrorCode.NO_ERROR, "")
                async with self._write_lock:  # the reader may be writing (an ack)
                    with contextlib.suppress(*_STREAM_ERRORS, ProtocolError):
                        if self._abandoned:
                            raise anyio.ClosedResourceError
                        data = self.connection.data_to_send()
                        if data:
                            await self._stream.send(data)
            with contextlib.suppress(*_STREAM_ERRORS):
                await self._stream.aclose()


@contextlib.asynccontextmanager
async def open_heavy(
    host: str, port: int, config: Config, *, connect_timeout: float, stall_timeout: float
) -> AsyncIterator[HeavyLink]:
    """A heavy-bus connection to ``host:port`` whose handshake completed.

    ``config`` is the light bus's configuration (same trust, same pinned
    keys) made into a heavy-bus one by the caller; ``stall_timeout`` bounds
    every wait for the server.  Raises :class:`HeavyCut`
    when the listener cannot be reached or the handshake fails; the
    library's own errors (an untrusted server key) propagate."""
    try:
        with anyio.fail_after(connect_timeout):
            stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError) as exc:
        raise HeavyCut(f"cannot connect to the heavy bus at {host}:{port}: {exc}") from None
    connection = Connection(role=Role.CLIENT, config=config, now=anyio.current_time())
    link = HeavyLink(stream, connection, stall_timeout=stall_timeout)
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(link.run_reader)
            try:
                connection.initiate(anyio.current_time())
                await link._flush()
                with anyio.move_on_after(connect_timeout):
                    while link.handshake is None and not link.ended:
                        progress = link._progress
                        await progress.wait()
                if link.handshake is None:
                    if isinstance(link.error, UntrustedServerKey):
                        raise link.error
                    raise HeavyCut(f"heavy-bus handshake failed: {link.reason or 'timed out'}")
                yield link
            except BaseException as exc:  # carried out of the task group by hand
                failure = exc
            finally:
                tasks.cancel_scope.cancel()  # the reader stops (its write, if any)
                await link.aclose()
    finally:
        link._events[0].close()
        link._events[1].close()
    if failure is not None:
        raise failure


__all__ = ["HeavyCut", "HeavyLink", "HeavyRefused", "open_heavy"]
