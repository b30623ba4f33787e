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

import enum
import os
from collections import deque
from collections.abc import Callable

import attrs

from . import packets as p
from .config import Config
from .crypto.handshake import (
    SUPPORTED_VERSIONS,
    ClientHandshake,
    HandshakeResult,
    ServerHandshake,
)
from .crypto.rekey import KeyUpdate, respond_to_rekey
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    KeyUpdated,
    ResumeRequested,
    _NeedData,
)
from .fragment import Reassembler, max_fragment_size, split_payload
from .frame import (
    ENCRYPTED,
    MORE_FRAGMENTS,
    UNNUMBERED,
    Flags,
    Frame,
    FrameBuffer,
    Priority,
    decode_frames_untrusted,
    prefix_for,
)
from .keyring import KeyRing
from .payload import decode_payload_untrusted, encode_payload
from .pid import PID_MASK, pid_add, pid_after
from .reliability import AckScheduler, DeliveryTimeout, ReceiveWindow, SendWindow
from .resumption import ResumptionState, SentPacket
from .scheduler import PriorityScheduler
from .state import ConnectionState, Input, Role, SideEffect, transition

S = ConnectionState

#: A sender MUST rekey before it has used one key for this many numbered (or
#: unnumbered) packets, so that the 32-bit counters in the nonce never repeat
#: under one key (§7.7).
HARD_REKEY_LIMIT = 1 << 31

_UNNUMBERED_NONCE_BIT = 1 << 32


class Transport(enum.Enum):
    STREAM = "stream"
    DATAGRAM = "datagram"


@attrs.frozen(kw_only=True)
class ConnectionStatistics:
    """An immutable snapshot of a connection's counters."""

    state: ConnectionState
    packets_sent: int
    packets_received: int
    bytes_sent: int
    bytes_received: int
    retransmissions: int
    datagrams_dropped: int
    queued: int
    unacked: int
    send_epoch: int


@attrs.define(slots=True)
class _Outgoing:
    """A packet waiting in the scheduler, payload already encoded."""

    type: int
    priority: Priority
    payload: bytes
    numbered: bool
    more_fragments: bool = False
    pid: int | None = None  # set for packets re-sent after resumption


_Received = tuple[int, int, Priority, int, bytes]
"""A numbered frame held for in-order delivery: pid, type, priority, flags, plaintext."""


@attrs.define(slots=True)
class _Record:
    """A sent numbered frame kept until acknowledged."""

    packet: SentPacket
    wire: bytes
    epoch: int


_HANDSHAKE_STATES = frozenset(
    {
        S.IDLE,
        S.CLIENT_HELLO_SENT,
        S.SERVER_HELLO_RECEIVED,
        S.CLIENT_FINISHED_SENT,
        S.SERVER_HELLO_SENT,
        S.RESUME_PENDING,
    }
)

_HANDSHAKE_INPUTS: dict[type[p.Packet], Input] = {
    p.ClientHello: Input.RECV_CLIENT_HELLO,
    p.ServerHello: Input.RECV_SERVER_HELLO,
    p.ServerAuth: Input.RECV_SERVER_AUTH,
    p.ClientFinished: Input.RECV_CLIENT_FINISHED,
    p.ServerFinished: Input.RECV_SERVER_FINISHED,
}


class Connection:
    """One end of an e-Link connection.  See the module docstring."""

    def __init__(
        self,
        *,
        role: Role,
        config: Config,
        transport: Transport = Transport.STREAM,
        random: Callable[[int], bytes] = os.urandom,
        now: float = 0.0,
    ) -> None:
        self.role = role
        self.config = config
        self.transport = transport
        self._random = random
        self._state = S.IDLE
        self._now = now
        self._started = now
        self._last_received = now
        self._last_sent = now

        self._handshake: ClientHandshake | ServerHandshake
        if role is Role.CLIENT:
            self._handshake = ClientHandshake(config, random=random)
        else:
            self._handshake = ServerHandshake(config, random=random)
        self._result: HandshakeResult | None = None
        self._keys: KeyRing | None = None
        self._session_id = b""
        self._resumption_secret = b""

        # handshake flights (re-sent on datagrams, §6.4.6)
        self._flight: list[bytes] = []
        self._flight_retransmit_at: float | None = None
        self._flight_timeout = config.initial_rtt * 2
        self._flight_count = 0
        self._first_client_hello = b""
        self._client_finished_payload = b""

        # sending
        self._scheduler: PriorityScheduler[_Outgoing] = PriorityScheduler.from_config(
            config, max_items=config.max_unacked_packets + 64
        )
        self._resend_first: deque[_Outgoing] = deque()
        self._next_pid = 1
        self._unnumbered_counter = 0
        self._sealed_in_epoch = 0
        self._epoch_started = now
        self._out = bytearray()  # stream output
        self._datagram_frames: list[bytes] = []  # datagram output, frames not yet packed
        self._unacked: dict[int, _Record] = {}
        self._send_window: SendWindow[None] | None = (
            SendWindow(config) if transport is Transport.DATAGRAM else None
        )
        self._pending_resume: ResumptionState | None = None

        # receiving
        self._buffer = FrameBuffer(max_buffer=config.max_receive_buffer)
        self._events: deque[Event | p.Packet] = deque()
        self._last_processed = 0
        self._receive_window: ReceiveWindow[_Received] | None = (
            ReceiveWindow(config) if transport is Transport.DATAGRAM else None
        )
        self._ack_scheduler = AckScheduler(config) if transport is Transport.DATAGRAM else None
        self._stream_unacked_received = 0
        self._stream_ack_due_at: float | None = None
        self._reassembler = Reassembler(config.max_payload_size)
        self._chain: tuple[int, int] | None = None  # PIDs of an unfinished fragment chain
        self._closed_event_sent = False

        # rekeying (§7.7)
        self._rekey: KeyUpdate | None = None
        self._rekey_queued = False
        # Responder: (epoch, master) to switch the send side to once the
        # RekeyAck is sealed under the old key.
        self._pending_switch: tuple[int, bytes] | None = None

        # counters
        self._packets_sent = 0
        self._packets_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._retransmissions = 0
        self._datagrams_dropped = 0

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def session_id(self) -> bytes:
        """The session id (empty until the handshake completes)."""
        return self._session_id

    def _is_closed(self) -> bool:
        return self._state is S.CLOSED

    def _apply(self, event: Input) -> SideEffect | None:
        result = transition(self.role, self._state, event)
        self._state = result.state
        return result.side_effect

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            state=self._state,
            packets_sent=self._packets_sent,
            packets_received=self._packets_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            retransmissions=self._retransmissions,
            datagrams_dropped=self._datagrams_dropped,
            queued=len(self._scheduler) + len(self._resend_first),
            unacked=len(self._unacked),
            send_epoch=self._keys.send_epoch if self._keys else 0,
        )

    # ------------------------------------------------------------ handshake

    def initiate(self, now: float | None = None) -> None:
        """Client: start the handshake (queues ClientHello)."""
        self._tick(now)
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only a client initiates")
        self._apply(Input.INITIATE)
        assert isinstance(self._handshake, ClientHandshake)
        self._started = self._now
        self._send_flight(self._handshake.start())

    def request_resume(self, state: ResumptionState) -> None:
        """Client: ask to resume ``state``'s session in this handshake.  Call
        before :meth:`initiate`."""
        if self.role is not Role.CLIENT or self._state is not S.IDLE:
            raise LocalProtocolError("request_resume() is for a client before initiate()")
        assert isinstance(self._handshake, ClientHandshake)
        self._handshake.request_resume(
            session_id=state.session_id,
            resumption_secret=state.resumption_secret,
            last_processed=state.last_processed,
        )
        self._pending_resume = state

    def accept_resume(self, state: ResumptionState) -> None:
        """Server: resume ``state`` (answering :class:`ResumeRequested`)."""
        if self._state is not S.RESUME_PENDING:
            raise LocalProtocolError("no resumption is pending")
        assert isinstance(self._handshake, ServerHandshake)
        request = self._handshake.resume_request
        if request is None or request.session_id != state.session_id:
            raise LocalProtocolError("state is for another session than the one requested")
        flight = self._handshake.accept_resume(
            resumption_secret=state.resumption_secret, last_processed=state.last_processed
        )
        result = self._handshake.result
        self._apply(Input.RESUME_DECIDED)
        self._send_flight(flight)
        if result is not None and result.resumed:
            self._pending_resume = state
        self._complete_handshake()

    def reject_resume(self) -> None:
        """Server: refuse the requested resumption; the connection continues
        as a fresh session."""
        if self._state is not S.RESUME_PENDING:
            raise LocalProtocolError("no resumption is pending")
        assert isinstance(self._handshake, ServerHandshake)
        flight = self._handshake.reject_resume()
        self._apply(Input.RESUME_DECIDED)
        self._send_flight(flight)
        self._complete_handshake()

    def _send_flight(self, flight: list[tuple[p.Packet, bytes]]) -> None:
        frames = [
            Frame(
                type=packet.TYPE,
                flags=Flags.UNNUMBERED,
                priority=Priority.CONTROL,
                payload=payload,
            ).encode()
            for packet, payload in flight
        ]
        if not frames:
            return
        self._flight = frames
        self._flight_count = 0
        if self.transport is Transport.DATAGRAM and self.role is Role.CLIENT:
            self._flight_retransmit_at = self._now + self._flight_timeout
        for frame in frames:
            self._emit(frame)

    def _on_handshake_packet(self, frame: Frame) -> None:
        cls = p.PACKET_TYPES.get(frame.type)
        if cls is None or cls is p.Close or not (cls.PHASES & p.Phase.HANDSHAKE):
            raise RemoteProtocolError(
                f"packet type {frame.type:#06x} during the handshake", ErrorCode.UNEXPECTED_PACKET
            )
        if self._datagram_duplicate_flight(cls, frame.payload):
            return
        packet = cls.from_payload_untrusted(decode_payload_untrusted(frame.payload))
        event = _HANDSHAKE_INPUTS[cls]
        if isinstance(packet, p.ClientFinished) and packet.resume_session:
            event = Input.RECV_CLIENT_FINISHED_RESUME
        transition(self.role, self._state, event)  # legality first, then crypto
        flight = self._handshake.receive(packet, frame.payload)
        self._apply(event)
        if isinstance(packet, p.ClientHello):
            self._first_client_hello = frame.payload
        elif isinstance(packet, p.ClientFinished):
            self._client_finished_payload = frame.payload
        self._send_flight(flight)
        if event is Input.RECV_CLIENT_FINISHED_RESUME:
            assert isinstance(self._handshake, ServerHandshake)
            request = self._handshake.resume_request
            assert request is not None
            self._events.append(
                ResumeRequested(
                    session_id=request.session_id, last_processed=request.last_processed
                )
            )
        elif self._handshake.complete:
            self._flight_retransmit_at = None
            self._complete_handshake()

    def _datagram_duplicate_flight(self, cls: type[p.Packet], payload: bytes) -> bool:
        """On datagrams a peer re-sends its last flight when ours was lost.
        Answer a repeated ClientHello or ClientFinished with our flight again;
        ignore other repeats (§6.4.6)."""
        if self.transport is not Transport.DATAGRAM:
            return False
        if self.role is Role.SERVER:
            repeat = (cls is p.ClientHello and payload == self._first_client_hello) or (
                cls is p.ClientFinished and payload == self._client_finished_payload
            )
            if repeat:
                for frame in self._flight:
                    self._emit(frame)
                return True
            if self._state is not S.IDLE and cls is p.ClientHello:
                return True  # a different ClientHello: stale or spoofed
            return self._state is S.ESTABLISHED or self._state is S.RESUME_PENDING
        # client: repeats of the server's flights are harmless
        return self._state is S.ESTABLISHED or (
            self._state is S.CLIENT_FINISHED_SENT and cls in (p.ServerHello, p.ServerAuth)
        )

    def _complete_handshake(self) -> None:
        result = self._handshake.result
        assert result is not None
        self._result = result
        # Datagrams reorder: keep the previous receive key a while after the
        # peer's first packet under a new one (§7.7.2).  Streams do not.
        grace = 3 * self.config.max_rto if self.transport is Transport.DATAGRAM else 0.0
        self._keys = KeyRing(result.suite, result.master_secret, self.role, grace=grace)
        self._session_id = result.session_id
        self._resumption_secret = result.resumption_secret
        self._epoch_started = self._now
        resent = 0
        if result.resumed and self._pending_resume is not None:
            resent = self._adopt(self._pending_resume, result.peer_last_processed)
        self._pending_resume = None
        self._events.append(
            HandshakeComplete(
                version=result.version,
                suite=result.suite,
                features=result.features,
                session_id=result.session_id,
                resumed=result.resumed,
                server_fingerprint=result.server_fingerprint,
                resent=resent,
            )
        )

    def _adopt(self, state: ResumptionState, peer_last_processed: int) -> int:
        """Continue ``state``'s session: PIDs carry on; re-send what the peer
        did not process, under the original PIDs (§6.5)."""
        self._next_pid = state.next_pid
        self._last_processed = state.last_processed
        resend = [sent for sent in state.unacked if pid_after(sent.pid, peer_last_processed)]
        if resend:
            first = resend[0].pid
            if pid_after(first, pid_add(peer_last_processed, 1)):
                raise RemoteProtocolError(
                    "peer claims to have processed fewer packets than it acknowledged",
                    ErrorCode.RESUME_REJECTED,
                )
        elif pid_after(peer_last_processed, pid_add(state.next_pid, -1)):
            raise RemoteProtocolError(
                "peer claims to have processed packets never sent", ErrorCode.RESUME_REJECTED
            )
        if self.transport is Transport.DATAGRAM:
            first_expected = pid_add(state.last_processed, 1)
            self._receive_window = ReceiveWindow(self.config, first_pid=first_expected)
            self._ack_scheduler = AckScheduler(self.config, first_pid=first_expected)
            first_resent = resend[0].pid if resend else state.next_pid
            self._send_window = SendWindow(self.config, first_pid=first_resent)
        for sent in resend:
            self._resend_first.append(
                _Outgoing(
                    type=sent.type,
                    priority=sent.priority,
                    payload=sent.payload,
                    numbered=True,
                    more_fragments=sent.more_fragments,
                    pid=sent.pid,
                )
            )
        return len(resend)

    def resumption_state(self) -> ResumptionState:
        """A snapshot for resuming this session on a later connection.  Take
        it after the last event of this connection was processed."""
        if not self._session_id:
            raise LocalProtocolError("no session to resume before the handshake completes")
        unacked = [record.packet for record in self._unacked.values()]
        queued = [
            SentPacket(
                pid=item.pid,
                type=item.type,
                priority=item.priority,
                more_fragments=item.more_fragments,
                payload=item.payload,
            )
            for item in self._resend_first
            if item.pid is not None
        ]
        return ResumptionState(
            session_id=self._session_id,
            resumption_secret=self._resumption_secret,
            next_pid=self._next_pid,
            last_processed=self._last_processed,
            unacked=tuple(
                sorted(unacked + queued, key=lambda s: (s.pid - self._next_pid) & PID_MASK)
            ),
        )

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

    def start_rekey(self, now: float | None = None) -> None:
        """Start a key update now (§7.7).  Does nothing if one is running."""
        self._tick(now)
        if self._state is not S.ESTABLISHED:
            raise LocalProtocolError("rekeying needs an established connection")
        self._begin_rekey()

    def _queue_control(self, packet: p.Packet) -> None:
        self._scheduler.push(
            Priority.CONTROL,
            _Outgoing(
                type=packet.TYPE,
                priority=Priority.CONTROL,
                payload=encode_payload(packet.to_payload()),
                numbered=packet.NUMBERED,
            ),
        )

    def _send_close(self, code: int, reason: str) -> None:
        versions = SUPPORTED_VERSIONS if code == ErrorCode.UNSUPPORTED_VERSION else ()
        close = p.Close(code=code, reason=_truncate(reason, 200), versions=versions)
        payload = encode_payload(close.to_payload())
        if self._keys is None:
            self._emit(Frame(type=p.Close.TYPE, flags=Flags.UNNUMBERED, payload=payload).encode())
        else:
            self._emit(self._seal_unnumbered(p.Close.TYPE, payload))

    def data_to_send(self) -> bytes:
        """Stream transports: every byte ready to be written, in order."""
        if self.transport is not Transport.STREAM:
            raise LocalProtocolError("data_to_send() is for stream transports")
        self._pump()
        if self._stream_ack_due_at is not None and self._stream_unacked_received >= 64:
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

    def _emit(self, frame: bytes) -> None:
        self._bytes_sent += len(frame)
        self._last_sent = self._now
        if self.transport is Transport.STREAM:
            self._out += frame
        else:
            self._datagram_frames.append(frame)

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

    def _fragments(self, item: _Outgoing) -> list[_Outgoing]:
        if self.transport is Transport.STREAM:
            return [item]
        assert self._keys is not None
        room = max_fragment_size(self.config.max_datagram_size, self._keys.max_overhead)
        chunks = split_payload(item.payload, room)
        last = len(chunks) - 1
        return [
            _Outgoing(
                type=item.type,
                priority=item.priority,
                payload=chunk,
                numbered=True,
                more_fragments=i < last,
            )
            for i, chunk in enumerate(chunks)
        ]

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

    def _seal(
        self,
        type_: int,
        *,
        counter: int,
        pid: int,
        flags: int,
        priority: Priority,
        payload: bytes,
    ) -> bytes:
        assert self._keys is not None
        protection = self._keys.send
        prefix = prefix_for(
            type=type_,
            pid=pid,
            ack=self._last_processed,
            flags=flags,
            priority=priority,
            key_phase=self._keys.send_epoch & 0xFF,
            length=protection.sealed_length(len(payload)),
        )
        self._note_ack_sent()
        self._sealed_in_epoch += 1
        return prefix + b"\x00\x00\x00\x00" + protection.seal(counter, prefix, payload)

    def _seal_unnumbered(self, type_: int, payload: bytes) -> bytes:
        counter = self._unnumbered_counter
        self._unnumbered_counter += 1
        return self._seal(
            type_,
            counter=_UNNUMBERED_NONCE_BIT | counter,
            pid=counter & PID_MASK,
            flags=ENCRYPTED | UNNUMBERED,
            priority=Priority.CONTROL,
            payload=payload,
        )

    # ---------------------------------------------------------------- acks

    def _note_ack_sent(self) -> None:
        """Every frame's header carries the cumulative ack; on datagrams it
        stands in for an Ack packet only when there are no selective ranges
        to report (§6.3)."""
        self._stream_unacked_received = 0
        self._stream_ack_due_at = None
        if self._ack_scheduler is not None:
            assert self._receive_window is not None
            if self._receive_window.buffered == 0 and self._chain is None:
                self._ack_scheduler.on_ack_sent(self._now)

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
        self._buffer.feed(data)

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

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Datagram transports: one datagram from the peer.  Undecodable,
        corrupted or unauthenticated datagrams are dropped silently (§4.4);
        a peer that breaks the protocol inside authenticated packets gets
        :class:`RemoteProtocolError`."""
        if self.transport is not Transport.DATAGRAM:
            raise LocalProtocolError("receive_datagram() is for datagram transports")
        self._tick(now)
        if self._state is S.CLOSED:
            return
        self._bytes_received += len(data)
        try:
            frames = decode_frames_untrusted(data)
        except RemoteProtocolError:
            self._datagrams_dropped += 1
            return
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
            if frame.flags & MORE_FRAGMENTS:
                raise RemoteProtocolError("fragment on a stream", ErrorCode.FRAME_MALFORMED)
            expected = pid_add(self._last_processed, 1)
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
        packet = cls.from_payload_untrusted(decode_payload_untrusted(payload))
        if isinstance(packet, p.Rekey):
            self._on_rekey(packet, payload)
        elif isinstance(packet, p.RekeyAck):
            self._on_rekey_ack(packet, payload)
        else:
            self._events.append(packet)

    def _on_close(self, close: p.Close) -> None:
        self._apply(Input.RECV_CLOSE)
        self._emit_closed(close.code, close.reason, by_peer=True, graceful=True)

    def _emit_closed(self, code: int, reason: str, *, by_peer: bool, graceful: bool) -> None:
        if not self._closed_event_sent:
            self._closed_event_sent = True
            self._events.append(
                ConnectionClosed(code=code, reason=reason, by_peer=by_peer, graceful=graceful)
            )

    def _fail(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: queue Close with the code, go CLOSED."""
        if self._state is S.CLOSED:
            return
        self._send_close(exc.error_code, str(exc))
        self._state = S.CLOSED
        self._closed_event_sent = True

    # ------------------------------------------------------------- rekeying

    def _begin_rekey(self) -> None:
        assert self._keys is not None and self._result is not None
        if self._rekey is not None or self._pending_switch is not None:
            return
        self._rekey = KeyUpdate(
            suite=self._result.suite,
            master=self._keys.latest_master,
            epoch=self._keys.latest_epoch,
            random=self._random,
        )
        _, payload = self._rekey.initiate()
        self._scheduler.push(
            Priority.CONTROL,
            _Outgoing(type=p.Rekey.TYPE, priority=Priority.CONTROL, payload=payload, numbered=True),
        )

    def _on_rekey(self, packet: p.Rekey, payload: bytes) -> None:
        assert self._keys is not None and self._result is not None
        if self._rekey is not None:
            # Both sides started a rekey at once: the client's wins (§7.7.2).
            if self.role is Role.CLIENT:
                return
            self._rekey = None
        if self._pending_switch is not None:
            raise RemoteProtocolError(
                "a second Rekey before the first completed", ErrorCode.REKEY_FAILURE
            )
        _, ack_payload, master = respond_to_rekey(
            suite=self._result.suite,
            master=self._keys.latest_master,
            epoch=self._keys.latest_epoch,
            rekey=packet,
            rekey_payload=payload,
            random=self._random,
        )
        new_epoch = packet.epoch
        self._keys.install_receive(new_epoch, master)
        self._pending_switch = (new_epoch, master)
        self._scheduler.push(
            Priority.CONTROL,
            _Outgoing(
                type=p.RekeyAck.TYPE, priority=Priority.CONTROL, payload=ack_payload, numbered=True
            ),
        )
        # Everything queued from here on leaves after the RekeyAck, under the
        # new key (the switch happens as the RekeyAck is sealed).
        self._events.append(KeyUpdated(epoch=new_epoch, initiated_locally=False))

    def _on_rekey_ack(self, packet: p.RekeyAck, payload: bytes) -> None:
        assert self._keys is not None
        if self._rekey is None:
            raise RemoteProtocolError("RekeyAck without a Rekey", ErrorCode.REKEY_FAILURE)
        master = self._rekey.complete(packet, payload)
        self._rekey = None
        self._keys.install_receive(packet.epoch, master)
        self._keys.switch_send(packet.epoch, master, peer_holds=True)
        self._reset_epoch_counters()
        self._events.append(KeyUpdated(epoch=packet.epoch, initiated_locally=True))

    def _switch_send_epoch(self) -> None:
        assert self._keys is not None and self._pending_switch is not None
        epoch, master = self._pending_switch
        self._pending_switch = None
        self._keys.switch_send(epoch, master)
        self._reset_epoch_counters()

    def _reset_epoch_counters(self) -> None:
        self._sealed_in_epoch = 0
        self._unnumbered_counter = 0
        self._epoch_started = self._now

    # --------------------------------------------------------------- timers

    def _tick(self, now: float | None) -> None:
        if now is not None and now > self._now:
            self._now = now

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

    def __repr__(self) -> str:
        return f"<Connection {self.role.value} {self.transport.value} {self._state.value}>"


def _truncate(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes of ``text``, cut at a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


class _Drop(Exception):
    """Internal: discard this datagram silently (§4.4)."""
