"""The e-Link connection: one sans-IO object per connection (§3-§7).

Theory of operation
-------------------
A :class:`Connection` turns bytes into events and packets into bytes.  It
never touches a socket or a clock: the host feeds it what arrived, asks it
what to send, and tells it the time.

* **Streams** (TCP): ``receive_data(data)`` buffers bytes (``b""`` is EOF);
  ``next_event()`` parses one frame at a time and returns an event or
  :data:`NEED_DATA`; ``send(packet)`` queues a packet and returns the bytes to
  write; ``data_to_send()`` returns bytes the connection produced on its own
  (handshake replies, acks, pongs, rekeys, Close).
* **Datagrams** (UDP): ``receive_datagram(data, now)`` processes a datagram
  at once; ``next_event()`` returns the events it produced;
  ``datagrams_to_send(now)`` returns the datagrams to transmit, re-sends
  included.
* **Time**: ``get_timer()`` says when ``handle_timer(now)`` must next be
  called (heartbeats, idle and handshake deadlines, acks, retransmission,
  rekeying).

Outgoing numbered packets wait in the priority scheduler (§6.1) and get their
PID only when they leave, so PID order is wire order.  Each numbered packet
is kept until the peer acknowledges it as processed: on datagrams to re-send
it (§6.4), on streams so that a resumed session can re-send it (§6.5).

Security state: the handshake object (``crypto.handshake``) produces the
epoch-0 master secret; :class:`KeyRing` holds the record protection for the
current send epoch and for the receive epochs still in use.  Each
``(key, nonce)`` pair is used once: the nonce counter is the PID for numbered
packets and a per-epoch counter with bit 32 set for unnumbered ones, and a
packet re-sent in the same epoch is re-sent as the identical bytes.
"""

from __future__ import annotations

from . import packets as p
from ._connection_core import (
    _HANDSHAKE_STATES,
    _UNNUMBERED_NONCE_BIT,
    ConnectionStatistics,
    S,
    Transport,
    _Drop,
    _Outgoing,
    _Record,
)
from ._handshaking import _Handshaking
from ._rekeying import _Rekeying
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import NEED_DATA, Event, _NeedData
from .frame import ENCRYPTED, MORE_FRAGMENTS, UNNUMBERED, Frame, Priority, decode_frames_untrusted
from .payload import decode_payload_untrusted, encode_payload
from .pid import pid_add, pid_after
from .reliability import DeliveryTimeout, Verdict
from .resumption import SentPacket
from .state import Input, Role, transition

#: Most control packets (mostly Pongs) queued before a peer that keeps
#: sending Pings without reading the answers is closed (§6.7.1).
MAX_QUEUED_PONGS = 64

__all__ = ["HARD_REKEY_LIMIT", "Connection", "ConnectionStatistics", "Transport"]


#: A sender MUST rekey before it has used one key for this many numbered (or
#: unnumbered) packets, so that the 32-bit counters in the nonce never repeat
#: under one key (§7.7).
HARD_REKEY_LIMIT = 1 << 31


class Connection(_Handshaking, _Rekeying):
    """One end of an e-Link connection.  See the module docstring."""

    # ------------------------------------------------------------ handshake

    # ------------------------------------------------------------- sending

    def queue(self, packet: p.Packet) -> None:
        """Queue an application packet (or :class:`~packets.UnknownPacket`)
        for sending.  The bytes come from :meth:`data_to_send` or
        :meth:`datagrams_to_send`."""
        if self._state is not S.ESTABLISHED:
            if self._state is S.CLOSED:
                raise LocalProtocolError("connection is closed")
            early = self.role is Role.CLIENT and self._state in (
                S.IDLE,
                S.CLIENT_HELLO_SENT,
                S.SERVER_HELLO_RECEIVED,
            )
            if not early:  # a client may queue early; packets leave after the handshake
                transition(self.role, self._state, Input.SEND_PACKET)
        if isinstance(packet, p.UnknownPacket):
            item = _Outgoing(
                type=packet.type, priority=packet.priority, payload=packet.payload, numbered=True
            )
        else:
            if packet.TYPE in p.CONTROL_TYPES or p.Phase.ESTABLISHED not in packet.PHASES:
                raise LocalProtocolError(f"{type(packet).__name__} is sent by the library itself")
            if not packet.BUS & self.config.bus:
                raise LocalProtocolError(
                    f"{type(packet).__name__} is not allowed on the "
                    f"{'light' if self.config.bus is p.Bus.LIGHT else 'heavy'} bus"
                )
            item = _Outgoing(
                type=packet.TYPE,
                priority=packet.PRIORITY,
                payload=encode_payload(packet.to_payload()),
                numbered=packet.NUMBERED,
            )
        if len(item.payload) > self.config.max_payload_size:
            raise LocalProtocolError(
                f"payload of {len(item.payload)} bytes exceeds the light-bus limit of "
                f"{self.config.max_payload_size}; use the heavy bus",
                ErrorCode.FRAME_TOO_LARGE,
            )
        self._scheduler.push(item.priority, item)

    def send(self, packet: p.Packet) -> bytes:
        """Stream transports: queue ``packet`` and return all bytes ready to
        write (this packet's included, unless the send window is full)."""
        self.queue(packet)
        return self.data_to_send()

    def ping(self, data: bytes = b"") -> None:
        """Queue a PING; the peer answers with a PONG (§6.7)."""
        self._queue_control(p.Ping(data=data))

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection: queued packets are sent first, then Close."""
        if self._state is S.CLOSED:
            return
        self._flush_queued()
        self._send_close(code, reason)
        self._apply(Input.SEND_CLOSE)

    def data_to_send(self) -> bytes:
        """Stream transports: every byte ready to be written, in order."""
        if self.transport is not Transport.STREAM:
            raise LocalProtocolError("data_to_send() is for stream transports")
        self._pump()
        if self._stream_ack_due_at is not None and self._stream_unacked_received >= self._ack_every:
            self._send_ack()
        data = bytes(self._out)
        self._out.clear()
        return data

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Datagram transports: the datagrams to transmit now."""
        if self.transport is not Transport.DATAGRAM:
            raise LocalProtocolError("datagrams_to_send() is for datagram transports")
        self._tick(now)
        assert self._ack_scheduler is not None
        self._pump()
        if self._keys is not None and self._ack_scheduler.ack_due(self._now):
            self._send_ack()
        return self._pack_datagrams()

    def _pack_datagrams(self) -> list[bytes]:
        datagrams: list[bytes] = []
        current = bytearray()
        limit = self.config.max_datagram_size
        for frame in self._datagram_frames:
            if current and len(current) + len(frame) > limit:
                datagrams.append(bytes(current))
                current.clear()
            current += frame
        if current:
            datagrams.append(bytes(current))
        self._datagram_frames.clear()
        return datagrams

    def _flush_queued(self) -> None:
        """Before a Close: on streams everything queued goes out first.  On
        datagrams only what the send window allows; the rest would need acks
        that a closing connection will not wait for."""
        if self._keys is not None and self._state is S.ESTABLISHED:
            self._pump(ignore_windows=self.transport is Transport.STREAM)

    def _pump(self, *, ignore_windows: bool = False) -> None:
        """Move packets from the scheduler onto the wire while allowed.

        Numbered packets pass through ``_resend_first`` (re-sends after a
        resumption, and the fragments of one packet), which is emptied first
        and in order, so the fragments of a packet take consecutive PIDs and
        nothing numbered slips between them (§6.6).  Unnumbered control
        packets (acks, pongs) are not held back by a full window."""
        if self._keys is None or self._state is not S.ESTABLISHED:
            return
        scheduler = self._scheduler
        while True:
            window_open = ignore_windows or self._may_send_numbered()
            if self._resend_first:
                if not window_open:
                    if scheduler.peek_priority() is not Priority.CONTROL:
                        return
                else:
                    item = self._resend_first.popleft()
                    self._send_numbered(item)
                    continue
            priority = scheduler.peek_priority()
            if priority is None:
                return
            if priority is not Priority.CONTROL:
                if not window_open or self._resend_first:
                    return
                if self._sealed_in_epoch >= HARD_REKEY_LIMIT:
                    # This key is used up: only control packets (the rekey)
                    # may pass until the update completes (§7.5.1).
                    self._begin_rekey()
                    if scheduler.peek_priority() is not Priority.CONTROL:
                        return
                    continue
            popped = scheduler.pop()
            assert popped is not None
            if not popped.numbered:
                self._emit(self._seal_unnumbered(popped.type, popped.payload))
            else:
                self._resend_first.extend(self._fragments(popped))

    def _may_send_numbered(self) -> bool:
        if len(self._unacked) >= self.config.max_unacked_packets:
            return False
        return self._send_window is None or self._send_window.can_send()

    def _send_numbered(self, item: _Outgoing) -> None:
        assert self._keys is not None
        payload, more = item.payload, item.more_fragments
        if item.pid is not None:
            pid = item.pid
        else:
            pid = self._next_pid
            self._next_pid = pid_add(pid, 1)
        flags = ENCRYPTED | MORE_FRAGMENTS if more else ENCRYPTED
        wire = self._seal(
            item.type, counter=pid, pid=pid, flags=flags, priority=item.priority, payload=payload
        )
        sent = SentPacket(
            pid=pid, type=item.type, priority=item.priority, more_fragments=more, payload=payload
        )
        self._unacked[pid] = _Record(sent, wire, self._keys.send_epoch)
        self._packets_sent += 1
        if self._send_window is not None:
            self._send_window.on_sent(pid, None, len(wire), self._now)
        self._emit(wire)
        if item.type == p.RekeyAck.TYPE and self._pending_switch is not None:
            self._switch_send_epoch()

    # ---------------------------------------------------------------- acks

    def _send_ack(self) -> None:
        ranges: list[tuple[int, int]] = []
        if self._chain is not None:
            # Fragments of an unfinished packet: received, not yet processed.
            ranges.append(self._chain)
        if self._receive_window is not None:
            ranges += self._receive_window.sack_ranges(64 - len(ranges))
        delay = 0
        if self._ack_scheduler is not None:
            delay = min(int(self._ack_scheduler.ack_delay(self._now) * 1e6), 0xFFFFFFFF)
        ack = p.Ack(ranges=tuple(ranges), delay=delay)
        self._emit(self._seal_unnumbered(p.Ack.TYPE, encode_payload(ack.to_payload())))
        if self._ack_scheduler is not None:
            self._ack_scheduler.on_ack_sent(self._now)

    def _on_peer_ack(
        self, cumulative: int, ranges: tuple[tuple[int, int], ...], delay: float
    ) -> None:
        """The peer processed everything up to ``cumulative`` (§6.3)."""
        if self._send_window is not None:
            # Retransmission state follows selective acks too ...
            self._send_window.on_ack(cumulative, ranges, delay, self._now)
        elif pid_after(cumulative, pid_add(self._next_pid, -1)):
            raise RemoteProtocolError(
                f"ack {cumulative} for a packet never sent", ErrorCode.PID_ERROR
            )
        # ... but a packet is only forgotten once processed (cumulative ack):
        # a selectively acked packet still dies with the peer's connection and
        # must be re-sent on resumption (§6.5.1).
        unacked = self._unacked
        while unacked:
            pid = next(iter(unacked))
            if pid_after(pid, cumulative):
                break
            del unacked[pid]

    # ------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Stream transports: bytes from the peer; ``b""`` means it closed its
        side.  Nothing is parsed until :meth:`next_event`."""
        if self.transport is not Transport.STREAM:
            raise LocalProtocolError("receive_data() is for stream transports")
        self._tick(now)
        if self._state is S.CLOSED:
            return
        self._bytes_received += len(data)
        try:
            self._buffer.feed(data)
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def next_event(self) -> Event | p.Packet | _NeedData:
        """The next event, or :data:`NEED_DATA`.  Raises
        :class:`RemoteProtocolError` when the peer broke the protocol; the
        connection is then CLOSED and a Close packet is ready to send."""
        while not self._events:
            if self.transport is Transport.DATAGRAM or self._state is S.CLOSED:
                return NEED_DATA
            try:
                frame = self._buffer.next_frame_untrusted()
                if frame is None:
                    if self._buffer.eof:
                        self._on_eof()
                        continue
                    return NEED_DATA
                self._last_received = self._now
                self._on_frame(frame)
            except RemoteProtocolError as exc:
                self._fail(exc)
                raise
        return self._events.popleft()

    def receive_datagram(self, data: bytes, now: float) -> bool:
        """Datagram transports: one datagram from the peer.  Undecodable,
        corrupted or unauthenticated datagrams are dropped silently (§4.4);
        a peer that breaks the protocol inside authenticated packets gets
        :class:`RemoteProtocolError`.

        Returns True when the datagram held a *fresh* authentic frame after
        the handshake: a numbered packet not seen before, or an unnumbered
        frame newer than every one received so far.  A replayed datagram is
        never fresh; a host lets only fresh datagrams move the peer's
        address (§6.9.5)."""
        if self.transport is not Transport.DATAGRAM:
            raise LocalProtocolError("receive_datagram() is for datagram transports")
        self._tick(now)
        if self._state is S.CLOSED:
            return False
        self._fresh = False
        self._bytes_received += len(data)
        try:
            frames = decode_frames_untrusted(data)
        except RemoteProtocolError:
            self._datagrams_dropped += 1
            return False
        try:
            for frame in frames:
                if self._is_closed():  # a Close earlier in this datagram
                    break
                try:
                    authentic = self._on_frame(frame)
                except _Drop:
                    self._datagrams_dropped += 1
                    break
                if authentic:
                    self._last_received = self._now
            if self._receive_window is not None:
                self._deliver_in_order()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        return self._fresh

    def _on_eof(self) -> None:
        self._apply(Input.EOF)
        self._emit_closed(ErrorCode.NO_ERROR, "connection lost", by_peer=True, graceful=False)

    def _on_frame(self, frame: Frame) -> bool:
        """Process one frame.  Returns True when it was authentic."""
        if not frame.flags & ENCRYPTED:
            return self._on_plaintext_frame(frame)
        if self._keys is None:
            if self.transport is Transport.DATAGRAM:
                raise _Drop
            raise RemoteProtocolError(
                "encrypted frame before keys exist", ErrorCode.UNEXPECTED_PACKET
            )
        counter = frame.pid | (_UNNUMBERED_NONCE_BIT if frame.flags & UNNUMBERED else 0)
        protection = self._keys.receiving(frame.key_phase)
        try:
            if protection is None:
                raise RemoteProtocolError(
                    f"no key for phase {frame.key_phase}", ErrorCode.DECRYPT_ERROR
                )
            plaintext = protection.open_untrusted(counter, frame.prefix(), frame.payload)
        except RemoteProtocolError:
            if self.transport is Transport.DATAGRAM:
                raise _Drop from None
            raise
        self._keys.on_received_in(frame.key_phase, self._now)
        self._packets_received += 1
        if self._state is not S.ESTABLISHED:
            # Client before ServerFinished (datagram reordering) or a server
            # waiting for the host's resume decision: the peer re-sends.
            if self.transport is Transport.DATAGRAM:
                raise _Drop
            raise RemoteProtocolError(
                "encrypted packet before the handshake completed", ErrorCode.UNEXPECTED_PACKET
            )
        if frame.flags & UNNUMBERED:
            if frame.flags & MORE_FRAGMENTS:
                raise RemoteProtocolError("fragmented unnumbered packet", ErrorCode.FRAME_MALFORMED)
            mark = (self._keys.epoch_of(frame.key_phase), frame.pid)
            if mark > self._unnumbered_high:
                self._unnumbered_high = mark
                self._fresh = True
            self._on_unnumbered(frame, plaintext)
        else:
            self._on_numbered(frame, plaintext)
        return True

    def _on_plaintext_frame(self, frame: Frame) -> bool:
        if frame.type == p.Close.TYPE and self._state in _HANDSHAKE_STATES:
            close = p.Close.from_payload_untrusted(decode_payload_untrusted(frame.payload))
            self._on_close(close)
            return True
        if frame.flags != UNNUMBERED or frame.pid != 0 or frame.ack != 0:
            if self.transport is Transport.DATAGRAM:
                raise _Drop
            raise RemoteProtocolError("malformed handshake frame", ErrorCode.FRAME_MALFORMED)
        if self._state not in _HANDSHAKE_STATES:
            if self.transport is Transport.DATAGRAM:
                cls = p.PACKET_TYPES.get(frame.type)
                if cls is not None and self._datagram_duplicate_flight(cls, frame.payload):
                    return True
                raise _Drop
            raise RemoteProtocolError(
                "plaintext packet after the handshake", ErrorCode.UNEXPECTED_PACKET
            )
        if self.transport is Transport.DATAGRAM:
            try:
                self._on_handshake_packet(frame)
            except RemoteProtocolError as exc:
                # On datagrams a malformed plaintext packet may be spoofed;
                # only a verified negotiation failure ends the handshake.
                if exc.error_code in (ErrorCode.PAYLOAD_INVALID, ErrorCode.UNEXPECTED_PACKET):
                    raise _Drop from None
                raise
        else:
            self._on_handshake_packet(frame)
        return True

    def _on_unnumbered(self, frame: Frame, plaintext: bytes) -> None:
        self._on_peer_ack(frame.ack, (), 0.0)
        cls = p.PACKET_TYPES.get(frame.type)
        if cls is None:
            if frame.type >= p.IGNORABLE_TYPES_START:
                return  # an unnumbered extension we do not know: ignore (§5.3)
            raise RemoteProtocolError(
                f"unknown packet type {frame.type:#06x}", ErrorCode.UNKNOWN_PACKET_TYPE
            )
        if cls.NUMBERED:
            raise RemoteProtocolError(
                f"{cls.__name__} must be numbered", ErrorCode.PROTOCOL_VIOLATION
            )
        packet = cls.from_payload_untrusted(decode_payload_untrusted(plaintext))
        if isinstance(packet, p.Ack):
            self._on_peer_ack(frame.ack, packet.ranges, packet.delay / 1e6)
        elif isinstance(packet, p.Ping):
            if self._scheduler.pending(Priority.CONTROL) >= MAX_QUEUED_PONGS:
                # Pings faster than we can answer them: a flood, not liveness.
                raise RemoteProtocolError("too many unanswered pings", ErrorCode.RESOURCE_LIMIT)
            self._queue_control(packet.response())
        elif isinstance(packet, p.Close):
            self._on_close(packet)
        elif isinstance(packet, p.Pong):
            pass  # liveness already noted by receiving it
        else:
            raise RemoteProtocolError(
                f"{cls.__name__} is not allowed after the handshake", ErrorCode.UNEXPECTED_PACKET
            )

    def _on_numbered(self, frame: Frame, plaintext: bytes) -> None:
        self._on_peer_ack(frame.ack, (), 0.0)
        if self._receive_window is None:
            # Fragments are not made for streams, but a session resumed from a
            # datagram connection re-sends the rest of a chain (§6.6.4).
            expected = pid_add(self._chain[1] if self._chain else self._last_processed, 1)
            if frame.pid != expected:
                raise RemoteProtocolError(
                    f"PID {frame.pid} where {expected} was due", ErrorCode.PID_ERROR
                )
            self._process_numbered(frame.pid, frame.type, frame.priority, frame.flags, plaintext)
            self._stream_unacked_received += 1
            if self._stream_ack_due_at is None:
                self._stream_ack_due_at = self._now + max(self.config.ack_delay, 0.2)
            return
        assert self._ack_scheduler is not None
        verdict = self._receive_window.on_received(
            frame.pid, (frame.pid, frame.type, frame.priority, frame.flags, plaintext)
        )
        if verdict is Verdict.NEW:
            self._fresh = True
        self._ack_scheduler.on_received(frame.pid, verdict, self._now)

    def _deliver_in_order(self) -> None:
        assert self._receive_window is not None
        for pid, type_, priority, flags, plaintext in self._receive_window.pop_deliverable():
            self._process_numbered(pid, type_, priority, flags, plaintext)

    def _process_numbered(
        self, pid: int, type_: int, priority: Priority, flags: int, plaintext: bytes
    ) -> None:
        """Handle one numbered packet, in PID order.  It counts as processed
        (§6.5.1) once it is whole: the fragments of an unfinished packet are
        only selectively acknowledged, so that if the connection dies they
        are re-sent on resumption with the rest of their packet."""
        payload = self._reassembler.add_untrusted(type_, flags, plaintext)
        if payload is None:
            self._chain = (pid if self._chain is None else self._chain[0], pid)
            return
        self._chain = None
        self._last_processed = pid
        if len(self._events) >= self.config.max_pending_events:
            raise RemoteProtocolError("too many unread events", ErrorCode.RESOURCE_LIMIT)
        cls = p.PACKET_TYPES.get(type_)
        if cls is None:
            if type_ >= p.IGNORABLE_TYPES_START:
                decode_payload_untrusted(payload)  # still a valid payload (§5.3)
                self._events.append(p.UnknownPacket(type=type_, payload=payload, priority=priority))
                return
            raise RemoteProtocolError(
                f"unknown packet type {type_:#06x}", ErrorCode.UNKNOWN_PACKET_TYPE
            )
        if not cls.NUMBERED:
            raise RemoteProtocolError(
                f"{cls.__name__} must not be numbered", ErrorCode.PROTOCOL_VIOLATION
            )
        if p.Phase.ESTABLISHED not in cls.PHASES:
            raise RemoteProtocolError(
                f"{cls.__name__} is not allowed after the handshake", ErrorCode.UNEXPECTED_PACKET
            )
        if not cls.BUS & self.config.bus:
            bus = "light" if self.config.bus is p.Bus.LIGHT else "heavy"
            raise RemoteProtocolError(
                f"{cls.__name__} is not allowed on the {bus} bus",
                ErrorCode.UNEXPECTED_PACKET,
            )
        packet = cls.from_payload_untrusted(
            decode_payload_untrusted(payload, max_bin_len=self._max_bin_len)
        )
        if isinstance(packet, p.Rekey):
            self._on_rekey(packet, payload)
        elif isinstance(packet, p.RekeyAck):
            self._on_rekey_ack(packet, payload)
        else:
            self._events.append(packet)

    def _on_close(self, close: p.Close) -> None:
        self._apply(Input.RECV_CLOSE)
        self._emit_closed(close.code, close.reason, by_peer=True, graceful=True)

    def _fail(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: queue Close with the code, go CLOSED."""
        if self._state is S.CLOSED:
            return
        self._send_close(exc.error_code, str(exc))
        self._state = S.CLOSED
        self._closed_event_sent = True

    # --------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        if self._state is S.CLOSED:
            return None
        timers: list[float] = []
        if self._state is not S.ESTABLISHED:
            if self._state is not S.IDLE or self.role is Role.SERVER:
                timers.append(self._started + self.config.handshake_timeout)
            if self._flight_retransmit_at is not None:
                timers.append(self._flight_retransmit_at)
            return min(timers) if timers else None
        timers.append(self._last_received + self.config.idle_timeout)
        timers.append(self._last_sent + self.config.heartbeat_interval)
        timers.append(self._epoch_started + self.config.rekey_after_seconds)
        if self._stream_ack_due_at is not None:
            timers.append(self._stream_ack_due_at)
        if self._ack_scheduler is not None:
            t = self._ack_scheduler.get_timer()
            if t is not None:
                timers.append(t)
        if self._send_window is not None:
            t = self._send_window.get_timer()
            if t is not None:
                timers.append(t)
        assert self._keys is not None
        t = self._keys.get_timer()
        if t is not None:
            timers.append(t)
        return min(timers)

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now``: retransmissions, acks, heartbeats,
        rekeys, deadlines.  A deadline that passes closes the connection with
        TIMEOUT (a :class:`ConnectionClosed` event tells the host)."""
        self._tick(now)
        now = self._now
        if self._state is S.CLOSED:
            return
        if self._state is not S.ESTABLISHED:
            if now >= self._started + self.config.handshake_timeout and (
                self._state is not S.IDLE or self.role is Role.SERVER
            ):
                self._timeout("handshake did not complete in time")
                return
            if self._flight_retransmit_at is not None and now >= self._flight_retransmit_at:
                self._flight_count += 1
                if self._flight_count > self.config.max_retransmissions:
                    self._timeout("handshake flight was never answered")
                    return
                self._flight_timeout = min(self._flight_timeout * 2, self.config.max_rto)
                self._flight_retransmit_at = now + self._flight_timeout
                for frame in self._flight:
                    self._emit(frame)
            return
        if now >= self._last_received + self.config.idle_timeout:
            self._timeout("peer was silent for longer than the idle timeout")
            return
        assert self._keys is not None
        self._keys.handle_timer(now)
        if self._send_window is not None:
            try:
                resend = self._send_window.on_timer(now)
            except DeliveryTimeout as exc:
                self._timeout(str(exc))
                return
            for pid, _ in resend:
                self._retransmit(pid)
        if self._stream_ack_due_at is not None and now >= self._stream_ack_due_at:
            self._send_ack()
        if now >= self._epoch_started + self.config.rekey_after_seconds or (
            self._sealed_in_epoch >= self.config.rekey_after_packets
        ):
            self._begin_rekey()
        if now >= self._last_sent + self.config.heartbeat_interval:
            self.ping()
        if self.transport is Transport.STREAM:
            self._pump()

    def _retransmit(self, pid: int) -> None:
        assert self._keys is not None and self._send_window is not None
        record = self._unacked.get(pid)
        if record is None:
            return
        keys = self._keys
        if record.epoch != keys.send_epoch and keys.peer_holds >= keys.send_epoch:
            # The key changed since and the peer has the new one: seal again
            # under it (each (key, PID) pair is still used once, §7.5).  Until
            # the peer is known to hold it -- a RekeyAck still on its way, or
            # a packet before it -- the identical old bytes are re-sent: the
            # peer cannot open the new key before it processed them (§7.7.2).
            sent = record.packet
            flags = ENCRYPTED | MORE_FRAGMENTS if sent.more_fragments else ENCRYPTED
            record.wire = self._seal(
                sent.type,
                counter=pid,
                pid=pid,
                flags=flags,
                priority=sent.priority,
                payload=sent.payload,
            )
            record.epoch = self._keys.send_epoch
        self._retransmissions += 1
        self._emit(record.wire)

    def _timeout(self, reason: str) -> None:
        self._send_close(ErrorCode.TIMEOUT, reason)
        self._apply(Input.TIMEOUT)
        self._emit_closed(ErrorCode.TIMEOUT, reason, by_peer=False, graceful=False)

    # ------------------------------------------------------------- helpers
