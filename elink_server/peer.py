"""One client connection on the server: the Trio plumbing around one sans-IO
:class:`elink_protocol.Connection`.

Theory of operation
-------------------
A :class:`Peer` runs two tasks over one transport (a :class:`PeerTransport`:
a TCP stream here, a UDP connection of ``udp.py``'s endpoint there; the
transport is all that differs, the service plumbing below is shared):

* the **reader** receives input from the transport (at most
  :data:`RECEIVE_SIZE` bytes of a stream, or a bounded batch of datagrams),
  feeds it to the connection, handles every event they produced (handshake completion,
  application packets through the service table, the end of the connection)
  and then writes whatever the connection has to send;
* the **timer** sleeps until ``Connection.get_timer()`` and calls
  ``handle_timer(now)`` (heartbeats, delayed acks, rekeys, the handshake and
  idle deadlines), handles the events and writes.

Both mutate the connection only while holding ``_process_lock``, so events
are handled one at a time and in order, and services see one packet of a
peer at a time.  Writes are serialized by ``_send_lock`` (a
:class:`trio.StrictFIFOLock`): whoever writes takes the bytes from
``data_to_send()`` *inside* the lock, so bytes leave in the order the
connection produced them (the transport's ``write`` asks the connection for
them).

Memory per peer is bounded: the reader does not read again before the bytes
it caused (pongs, acks, replies) are written, so a peer that sends without
reading stops being read (TCP pushes back on it), and a write that makes no
progress for ``write_timeout`` seconds drops the connection.  The bounded
receive size also bounds how many control replies (one Pong per Ping) one
batch can queue inside the connection before they are written.

Each application packet is charged to the connection's request rate limit
(:mod:`elink_server.limits`) before it reaches a service: over the rate a
request is answered RATE_LIMITED, and a client far beyond it is closed with
RESOURCE_LIMIT, as is one whose answers no longer fit in its send queue.

Ending: on a protocol error the library has already queued a Close with the
spec's code; on a deadline it queues Close(TIMEOUT); when the server shuts
down :meth:`Peer.go_away` queues the GoingAway push and Close(GOING_AWAY).  The peer writes it,
half-closes the stream and drains the peer's bytes for a moment before
closing the socket, so the kernel does not answer unread input with a reset
that could destroy the Close in flight.
"""

from __future__ import annotations

import contextlib
import enum
import math
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio

from elink_protocol import (
    NEED_DATA,
    ConnectionClosed,
    ErrorCode,
    HandshakeComplete,
    KeyUpdated,
    LocalProtocolError,
    Packet,
    ProtocolError,
    RemoteProtocolError,
    ResumeRequested,
    UnknownPacket,
)
from elink_protocol.app import AppErrorCode, GoingAway, Request, check_sender
from elink_protocol.connection import Connection
from elink_protocol.state import Role

from .limits import RequestRateLimiter, Verdict

#: Bytes read per receive.  Small enough that one batch cannot queue more
#: control replies than the connection's send queue holds (a Ping frame is at
#: least 37 bytes: 16384 / 37 < 443), large enough to amortise the syscall.
RECEIVE_SIZE = 16384

#: After sending a Close, how long to drain the peer's bytes before closing
#: the socket (see the module docstring).
LINGER_SECONDS = 1.0

#: Most bytes drained during the linger.
LINGER_BYTES = 256 * 1024

#: Most packets kept for a peer whose connection ended before they could be
#: queued on it (see :attr:`Peer.undelivered`).
MAX_UNDELIVERED = 1024

#: Once the connection ended, how long the handler of the packet being
#: processed may still run (see :meth:`Peer._dispatch`).
HANDLER_GRACE = 10.0

#: How long the connection-end hook may run (it is shielded from the
#: cancellation of a shutdown, so it needs its own bound).
HOOK_TIMEOUT = 10.0

#: Packets the library's send queue holds beyond ``max_unacked_packets``
#: (``elink_protocol._connection_core``: ``max_unacked_packets + 64``).
SEND_QUEUE_EXTRA = 64

logger = structlog.get_logger("elink_server")

Handler = Callable[["Peer", Packet], Awaitable[None]]
"""A service: handles one application packet of a peer.  It may ``await
peer.send(...)``; an exception closes that peer with INTERNAL_ERROR."""


class PeerGone(Exception):
    """The connection is closed: nothing can be sent on it any more.

    ``queued`` tells what became of the packet: True when the connection took
    it (it was numbered and is part of the session's resumption state, so a
    resumed session re-sends it), False when it was kept in
    :attr:`Peer.undelivered` instead."""

    def __init__(self, message: str, *, queued: bool = False) -> None:
        super().__init__(message)
        self.queued = queued


class PeerTransport:
    """What a :class:`Peer` needs from its transport.  The stream version is
    :class:`StreamTransport`; ``udp.py`` has the datagram one."""

    async def receive(self) -> object:
        """Wait for input; return it for :meth:`feed`.  Never raises for
        what the network does."""
        raise NotImplementedError

    def feed(self, connection: Connection, data: object, now: float) -> None:
        """Hand input from :meth:`receive` to ``connection`` (may raise
        :class:`ProtocolError`)."""
        raise NotImplementedError

    async def write(self, connection: Connection) -> None:
        """Send what ``connection`` has to send, in order.  Raises
        :class:`trio.BrokenResourceError` when the transport is lost."""
        raise NotImplementedError

    async def finish(self, *, sent_close: bool) -> None:
        """The connection is over (the Close, if any, was written): release
        the transport.  Must not raise."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """``host:port`` of the client, as shown in logs."""
        raise NotImplementedError


class StreamTransport(PeerTransport):
    """A TCP stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        try:
            host, port = stream.socket.getpeername()[:2]
            self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except OSError:
            self._address = "?"

    @property
    def address(self) -> str:
        return self._address

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""  # a reset: the same as the end of the stream

    def feed(self, connection: Connection, data: object, now: float) -> None:
        assert isinstance(data, bytes)
        connection.receive_data(data, now=now)

    async def write(self, connection: Connection) -> None:
        data = connection.data_to_send()
        if data:
            try:
                await self.stream.send_all(data)
            except trio.ClosedResourceError:
                raise trio.BrokenResourceError("stream closed") from None

    async def finish(self, *, sent_close: bool) -> None:
        if sent_close:
            await self._linger()
        await trio.aclose_forcefully(self.stream)

    async def _linger(self) -> None:
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await self.stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    chunk = await self.stream.receive_some(RECEIVE_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass


class SessionHooks:
    """What the application does at the two points of a connection's life
    that are not packets: a client asking to resume a session, and the end
    of the connection.  The defaults refuse every resumption and do nothing
    at the end; :mod:`elink_server.services.app` overrides both."""

    async def resume_requested(self, peer: Peer, event: ResumeRequested) -> None:
        """Answer ``event`` with ``peer.connection.accept_resume(state)`` or
        ``reject_resume()`` (the handshake waits until one is called)."""
        peer.log.info("resumption refused", session=event.session_id.hex())
        peer.connection.reject_resume()

    async def connection_ended(self, peer: Peer) -> None:
        """``peer``'s connection is over: its reader has stopped, so
        ``peer.connection.resumption_state()`` holds everything it processed."""


class Phase(enum.Enum):
    """Where a peer is in its life, for statistics and shutdown."""

    WAITING = "waiting"
    """Accepted, waiting for a handshake slot (nothing read yet)."""
    HANDSHAKE = "handshake"
    """Holding a handshake slot; the handshake is running."""
    ESTABLISHED = "established"
    """The handshake completed; a session exists."""
    CLOSED = "closed"
    """Over (the transport may still be lingering)."""


class Peer:
    """One client connection (TCP or UDP).  Created by the host; services
    receive it as the first argument of their handler."""

    def __init__(
        self,
        *,
        transport: PeerTransport,
        connection: Connection,
        number: int,
        services: Mapping[type[Packet], Handler],
        write_timeout: float,
        on_established: Callable[[Peer], None],
        hooks: SessionHooks | None = None,
        rate_limiter: RequestRateLimiter | None = None,
    ) -> None:
        self.transport = transport
        self.connection = connection
        self.number = number
        """Serial number of the connection in this server process (for logs)."""
        self.phase = Phase.WAITING
        self.session_id = b""
        self.close_code: int | None = None
        """The code of the Close that ended the connection (sent or received),
        or None while open / when the transport was lost without one."""
        self.close_reason = ""
        self.closed_by_peer = False
        self.log = logger.bind(peer=transport.address, conn=number)
        self.holds_handshake_slot = False
        self.undelivered: list[Packet] = []
        """Packets sent to this peer after its connection ended (pushes for a
        session that may still be resumed, answers that came too late), in
        order, at most :data:`MAX_UNDELIVERED`.  A resumption re-sends them."""
        self.successor: Peer | None = None
        """The connection this peer's session was resumed on: whoever still
        sends to this (closed) peer reaches the session there."""
        self.undelivered_overflow = False
        """More than :data:`MAX_UNDELIVERED` packets were lost: the session
        can no longer be resumed exactly."""

        self.rate_limited = 0
        """Application packets refused by the rate limit (see ``limits.py``)."""

        self._services = services
        self._rate_limiter = rate_limiter
        self._limited_run = 0  # packets refused since the last one served
        self._hooks = hooks or SessionHooks()
        self._write_timeout = write_timeout
        self._on_established = on_established
        self._process_lock = trio.StrictFIFOLock()
        self._send_lock = trio.StrictFIFOLock()
        self._timer_changed = trio.Event()
        self._progress = trio.Event()  # see wait_progress
        self._armed: float | None = None
        self._done = False
        self._sent_close = False
        self._broken = False
        self._going_away = False
        self._nursery: trio.Nursery | None = None
        self._handler_scope: trio.CancelScope | None = None
        self.wait_scope = trio.CancelScope()
        """Cancelled by :meth:`go_away` while the peer waits for admission."""

    # ------------------------------------------------------------ services

    @property
    def address(self) -> str:
        """``host:port`` of the client (its latest address on UDP)."""
        return self.transport.address

    @property
    def is_closed(self) -> bool:
        """True once the connection ended (nothing more will be processed)."""
        return self._done

    async def send(self, packet: Packet) -> None:
        """Queue ``packet`` and write it (and anything queued before it).
        Raises :class:`PeerGone` when the connection is closed."""
        target = self._current()
        target.send_nowait(packet)
        await target.flush()
        if target._broken:
            raise PeerGone(f"connection {target.number} was lost", queued=True)

    def send_nowait(self, packet: Packet) -> None:
        """Queue ``packet`` without writing it (the next :meth:`flush`, or the
        peer's own loop, writes it).  Several calls in a row, with no await
        between them, keep their order against every other sender.  Raises
        :class:`PeerGone` when the connection is closed; the packet is then
        kept in :attr:`undelivered`.  Once a resumption moved the session to
        a new connection (:attr:`successor`), packets go there instead."""
        if self._done and self.successor is not None:
            self._current().send_nowait(packet)
            return
        if not self._done:
            try:
                self.connection.queue(packet)
            except LocalProtocolError:
                if not self._done:
                    raise
            else:
                return
        if len(self.undelivered) < MAX_UNDELIVERED:
            self.undelivered.append(packet)
        else:
            self.undelivered_overflow = True
        raise PeerGone(f"connection {self.number} is closed")

    def send_room(self) -> int:
        """How many more packets the connection's send queue takes now.

        Once the connection ended (and no resumption moved the session on),
        packets go to :attr:`undelivered`, which bounds itself: unbounded."""
        target = self._current()
        if target._done:
            return sys.maxsize
        capacity = target.connection.config.max_unacked_packets + SEND_QUEUE_EXTRA
        return capacity - target.connection.statistics().queued

    async def wait_progress(self) -> None:
        """Wait until the connection may have made room in its send queue:
        the next time it has read input (acknowledgements free the send
        window) and written, or its end.  Returns at once if it has ended."""
        target = self._current()
        if not target._done:
            await target._progress.wait()

    async def wait_processed(self) -> None:
        """Wait until no packet of this peer is being processed: a handler
        still running after the connection ended (it is shielded for up to
        :data:`HANDLER_GRACE` seconds) has finished, so its answer is in
        :attr:`undelivered` or the connection's resumption state."""
        async with self._process_lock:
            pass

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _current(self) -> Peer:
        """The peer that carries this peer's session now."""
        peer = self
        while peer._done and peer.successor is not None:
            peer = peer.successor
        return peer

    def start_soon(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``fn`` beside the peer's reader, for a service whose work must
        not hold up the peer's other packets (a login waiting in the queue).
        It is cancelled when the connection ends; an exception closes the peer
        with INTERNAL_ERROR, like one raised by a handler."""
        if self._nursery is None or self._done:
            raise PeerGone(f"connection {self.number} is closed")
        self._nursery.start_soon(self._guarded, fn, name)

    async def _guarded(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        try:
            await fn()
        except PeerGone:
            return
        except Exception:
            self.log.exception("service task failed", task=name)
            await self.close(ErrorCode.INTERNAL_ERROR, "internal error")

    async def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Send Close(``code``) after what is queued, and end the connection."""
        async with self._process_lock:
            if self._done:
                return
            self.connection.close(code, reason)
            self._sent_close = True
            self._finish(code, reason, by_peer=False)
        await self.flush()

    def close_nowait(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """:meth:`close` for a service handling one of this peer's own packets
        (it runs while the peer processes input, so it must not wait for
        that): the Close is written when the handler returns."""
        if not self._done:
            self.connection.close(code, reason)
            self._sent_close = True
            self._finish(code, reason, by_peer=False)

    # ------------------------------------------------------------ lifetime

    @property
    def going_away(self) -> bool:
        """True once :meth:`go_away` was called."""
        return self._going_away

    async def refuse(self, code: int, reason: str) -> None:
        """Before the handshake started: send a plaintext Close(``code``) and
        close the transport.  Used for admission refusals and timeouts."""
        if not self._done:
            if code == ErrorCode.TIMEOUT:
                # Let the library apply its own deadline: same Close, same state.
                self.connection.handle_timer(trio.current_time())
            self.connection.close(code, reason)  # no-op if the deadline closed it
            self._sent_close = True
            self._finish(code, reason, by_peer=False)
            await self.flush()
        await self._close_transport()

    async def run(self) -> None:
        """Serve the connection until it ends.  Never raises for anything the
        peer does; closes the transport before returning."""
        self.phase = Phase.HANDSHAKE
        try:
            if not self._done:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._timer_loop)
                    nursery.start_soon(self._reader_loop)
        finally:
            self.phase = Phase.CLOSED
            await self._run_end_hook()
            await self._close_transport()

    async def _run_end_hook(self) -> None:
        if not self.session_id:
            return  # no handshake, no session: nothing the services know of
        # Shielded: a shutdown cancels the peer, and the services must still
        # learn that the session ended (registry, presence).
        with trio.CancelScope(shield=True), trio.move_on_after(HOOK_TIMEOUT):
            try:
                await self._hooks.connection_ended(self)
            except Exception:
                self.log.exception("connection-end hook failed")

    async def go_away(
        self, reason: str = "server shutting down", *, reconnect_after_ms: int = 0
    ) -> None:
        """Server shutdown: tell the peer (Close with GOING_AWAY) and end."""
        self._going_away = True
        self.wait_scope.cancel()
        if self.phase is Phase.WAITING:
            return  # the admission code sees going_away and refuses
        if self.phase is Phase.ESTABLISHED and not self._done:
            # The application-level notice first (§11.3.4), then the Close,
            # which the connection sends after everything queued.
            with contextlib.suppress(LocalProtocolError):
                self.connection.queue(
                    GoingAway(reason=reason, reconnect_after_ms=reconnect_after_ms)
                )
        await self.close(ErrorCode.GOING_AWAY, reason)

    def _finish(self, code: int | None, reason: str, *, by_peer: bool) -> None:
        if self._done:
            return
        self._done = True
        self.close_code = code
        self.close_reason = reason
        self.closed_by_peer = by_peer
        self._progressed()  # wake wait_progress: nothing more will come
        if self._nursery is not None:
            # Both loops stop; the bytes already produced are written first
            # by whoever finished (flush happens outside this scope's work).
            self._nursery.cancel_scope.cancel()
        if self._handler_scope is not None:
            self._handler_scope.deadline = trio.current_time() + HANDLER_GRACE

    # ------------------------------------------------------------- writing

    async def flush(self) -> None:
        """Write everything the connection has produced.  A broken stream or
        a write stalled for ``write_timeout`` marks the peer lost."""
        # Shielded: our own cancellation (the peer finishing) must not cut
        # the Close that explains why, nor leave a frame half-written.  The
        # write timeout bounds the shield.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._write_timeout) as scope:
                async with self._send_lock:
                    if self._broken:
                        return
                    try:
                        await self.transport.write(self.connection)
                    except trio.BrokenResourceError:
                        self._lose("connection lost while writing")
                        return
            if scope.cancelled_caught:
                self._lose("peer stopped reading (write timeout)")
        # On datagrams a packet's retransmission timeout starts when it
        # leaves: the timer may be due earlier now.
        self._rearm_timer()

    def _lose(self, reason: str) -> None:
        self._broken = True
        if not self._done:
            self._finish(None, reason, by_peer=False)

    # ------------------------------------------------------------- reading

    async def _reader_loop(self) -> None:
        while not self._done:
            data = await self.transport.receive()
            async with self._process_lock:
                if self._done:
                    break
                try:
                    self.transport.feed(self.connection, data, trio.current_time())
                except ProtocolError as exc:
                    # The receive buffer limit: the library queues nothing here.
                    self._protocol_error(exc, queue_close=True)
                else:
                    await self._process_events()
            await self.flush()
            self._progressed()
            self._rearm_timer()

    async def _timer_loop(self) -> None:
        while not self._done:
            deadline = self.connection.get_timer()
            self._armed = deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()
            now = trio.current_time()
            if deadline is None or now < deadline:
                continue  # woken because the deadline moved
            async with self._process_lock:
                if self._done:
                    break
                self.connection.handle_timer(now)
                await self._process_events()
            await self.flush()

    def _rearm_timer(self) -> None:
        """Wake the timer loop if the connection now needs it earlier."""
        deadline = self.connection.get_timer()
        if deadline is not None and (self._armed is None or deadline < self._armed):
            self._timer_changed.set()

    # -------------------------------------------------------------- events

    async def _process_events(self) -> None:
        """Handle every ready event.  Caller holds ``_process_lock``."""
        connection = self.connection
        while not self._done:
            try:
                event = connection.next_event()
            except RemoteProtocolError as exc:
                self._protocol_error(exc, queue_close=False)
                return
            except LocalProtocolError as exc:
                # The connection could not queue a control reply (its send
                # queue is full): treat as the peer exceeding a limit.
                self._protocol_error(exc, queue_close=True)
                return
            if event is NEED_DATA:
                return
            if isinstance(event, Packet):
                await self._dispatch(event)
            elif isinstance(event, HandshakeComplete):
                self.phase = Phase.ESTABLISHED
                self.session_id = event.session_id
                self.log.info(
                    "handshake complete",
                    suite=f"{event.suite:#06x}",
                    session=event.session_id.hex(),
                    resumed=event.resumed,
                )
                self._on_established(self)
            elif isinstance(event, ResumeRequested):
                if not await self._resume(event):
                    return
            elif isinstance(event, ConnectionClosed):
                self._sent_close = self._sent_close or not event.by_peer
                code = event.code if event.graceful or not event.by_peer else None
                self._finish(code, event.reason, by_peer=event.by_peer)
            elif isinstance(event, KeyUpdated):
                self.log.debug("key updated", epoch=event.epoch, local=event.initiated_locally)

    async def _resume(self, event: ResumeRequested) -> bool:
        """Let the hooks decide; False when that ended the connection."""
        # The session this connection will carry if the hooks accept; the
        # HandshakeComplete that follows sets the final id either way.  Set
        # now so that a session bound during the hook is known by its id.
        self.session_id = event.session_id
        try:
            await self._hooks.resume_requested(self, event)
        except RemoteProtocolError as exc:
            # The stored state contradicts what the client claims (§6.5.5).
            self._protocol_error(exc, queue_close=True)
            return False
        except Exception:
            self.log.exception("resumption failed", session=event.session_id.hex())
            await self._close_locked(ErrorCode.INTERNAL_ERROR, "internal error")
            return False
        return not self._done

    async def _dispatch(self, packet: Packet) -> None:
        try:
            # §11.1.3: a client sending the server's packets is a protocol error.
            check_sender(packet, Role.SERVER)
        except RemoteProtocolError as exc:
            self._protocol_error(exc, queue_close=True)
            return
        if self._rate_limiter is not None and not self._within_rate(packet, self._rate_limiter):
            return
        handler = self._services.get(type(packet))
        if handler is None:
            if isinstance(packet, UnknownPacket):
                return  # an extension we do not serve: ignored (§5.3)
            await self._close_locked(
                ErrorCode.UNEXPECTED_PACKET, f"{type(packet).__name__} is not served here"
            )
            return
        try:
            # Shielded from the end of the connection (a failed write in any
            # task cancels the peer's tasks): the library already counts the
            # packet as processed (§6.5.1), so a resumed client will not send
            # it again, and a handler cut short could store a message and
            # never answer it.  Its late answers reach the session through
            # ``undelivered`` or the successor.  _finish bounds the shield.
            with trio.CancelScope(shield=True) as self._handler_scope:
                await handler(self, packet)
        except PeerGone:
            return
        except Exception as exc:
            if isinstance(exc, LocalProtocolError) and exc.error_code == ErrorCode.RESOURCE_LIMIT:
                # The answer did not fit in the connection's send queue: the
                # client sends requests without reading the answers.  Its
                # fault, not a bug of the service.
                self._protocol_error(exc, queue_close=True)
                return
            # Never swallowed silently: logged with the traceback, and only
            # this peer pays for it.
            self.log.exception("service failed", packet=type(packet).__name__)
            await self._close_locked(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            self._handler_scope = None

    def _within_rate(self, packet: Packet, limiter: RequestRateLimiter) -> bool:
        """Charge ``packet`` to the rate limit; False when it is not served.
        Caller holds ``_process_lock``."""
        verdict = limiter.admit(trio.current_time())
        if verdict is Verdict.ADMIT:
            if self._limited_run:
                self.log.info("rate limit lifted", refused=self._limited_run)
                self._limited_run = 0
            return True
        self.rate_limited += 1
        self._limited_run += 1
        if verdict is Verdict.FLOOD:
            self.log.warning(
                "request flood: closing", refused=self._limited_run, excess=limiter.excess
            )
            self.close_nowait(ErrorCode.RESOURCE_LIMIT, "request rate far above the limit")
            return False
        if self._limited_run == 1:  # once per episode, not once per request
            self.log.warning(
                "rate limited", rate=limiter.rate, burst=limiter.burst, packet=type(packet).__name__
            )
        if isinstance(packet, Request):
            answer = packet.failed(
                AppErrorCode.RATE_LIMITED,
                "too many requests",
                retry_after_ms=limiter.retry_after_ms(),
            )
            try:
                self.connection.queue(answer)
            except LocalProtocolError:
                # The answers cannot even be queued: the client neither reads
                # nor slows down.
                self.close_nowait(ErrorCode.RESOURCE_LIMIT, "send queue full")
        # Anything else (an extension packet) cannot be answered: dropped.
        return False

    async def _close_locked(self, code: int, reason: str) -> None:
        if not self._done:
            self.connection.close(code, reason)
            self._sent_close = True
            self._finish(code, reason, by_peer=False)

    def _protocol_error(self, exc: ProtocolError, *, queue_close: bool) -> None:
        if queue_close:
            self.connection.close(exc.error_code, str(exc))
        self._sent_close = True
        self.log.warning(
            "protocol error",
            code=_code_name(exc.error_code),
            reason=str(exc),
            phase=self.phase.value,
        )
        self._finish(exc.error_code, str(exc), by_peer=False)

    # ----------------------------------------------------------- transport

    async def _close_transport(self) -> None:
        with trio.CancelScope(shield=True):
            # Wait for a write in progress (bounded by the write timeout),
            # so the Close it carries is not cut by closing the socket.
            sent_close = False
            with trio.move_on_after(self._write_timeout):
                async with self._send_lock:
                    sent_close = self._sent_close and not self._broken
            self._broken = True  # nothing more may be written
            await self.transport.finish(sent_close=sent_close)

    def statistics(self) -> dict[str, Any]:
        """The connection's counters, for the server's snapshot."""
        stats = self.connection.statistics()
        return {
            "packets_in": stats.packets_received,
            "packets_out": stats.packets_sent,
            "bytes_in": stats.bytes_received,
            "bytes_out": stats.bytes_sent,
        }


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"{code:#06x}"
