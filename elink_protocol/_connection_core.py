"""State and primitives shared by every part of a :class:`Connection`.

The connection is one object, but its code is split by concern, one module
each (STYLE.md: no 1,000-line connection module):

* ``_connection_core`` (this module): the state every part reads, sealing
  frames under the current key, emitting bytes, closing;
* ``_handshaking``: driving the handshake, flights on datagrams, and session
  resumption;
* ``_rekeying``: key updates during the connection;
* ``connection``: the public class: sending, acknowledging, receiving, timers.

Each part is a base class of :class:`~elink_protocol.connection.Connection`;
all state is created in :meth:`_ConnectionCore.__init__` so that every part
(and mypy) sees the same attributes.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable

import attrs

from . import packets as p
from .config import MAX_LIGHT_PAYLOAD, Config
from .crypto.handshake import SUPPORTED_VERSIONS, ClientHandshake, HandshakeResult, ServerHandshake
from .crypto.rekey import KeyUpdate
from .errors import ErrorCode
from .events import ConnectionClosed, Event
from .fragment import Reassembler, max_fragment_size, split_payload
from .frame import ENCRYPTED, UNNUMBERED, Flags, Frame, FrameBuffer, Priority, prefix_for
from .keyring import KeyRing
from .payload import encode_payload
from .pid import PID_MASK
from .reliability import AckScheduler, ReceiveWindow, SendWindow
from .resumption import ResumptionState, SentPacket
from .scheduler import PriorityScheduler
from .state import ConnectionState, Input, Role, SideEffect, transition

S = ConnectionState

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


class _ConnectionCore:
    """State and primitives of a connection (see the module docstring)."""

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
        self._buffer = FrameBuffer(
            max_buffer=config.max_receive_buffer, max_length=config.max_frame_length
        )
        self._events: deque[Event | p.Packet] = deque()
        self._last_processed = 0
        self._receive_window: ReceiveWindow[_Received] | None = (
            ReceiveWindow(config) if transport is Transport.DATAGRAM else None
        )
        self._ack_scheduler = AckScheduler(config) if transport is Transport.DATAGRAM else None
        self._stream_unacked_received = 0
        # Acknowledge at least every this many packets, so a sender holding
        # few unacked packets (the heavy bus) is never stalled by the delay.
        self._ack_every = max(1, min(64, config.max_unacked_packets // 4))
        self._stream_ack_due_at: float | None = None
        self._reassembler = Reassembler(config.max_payload_size)
        self._max_bin_len = max(MAX_LIGHT_PAYLOAD, config.max_payload_size)
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
        # Datagrams: did the one being received hold a fresh authentic frame
        # (§6.9.5)?  And the newest (epoch, counter) of the peer's unnumbered
        # frames, which makes an unnumbered frame fresh only once.
        self._fresh = False
        self._unnumbered_high = (-1, -1)

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

    def _tick(self, now: float | None) -> None:
        if now is not None and now > self._now:
            self._now = now

    def _emit(self, frame: bytes) -> None:
        self._bytes_sent += len(frame)
        self._last_sent = self._now
        if self.transport is Transport.STREAM:
            self._out += frame
        else:
            self._datagram_frames.append(frame)

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

    def _emit_closed(self, code: int, reason: str, *, by_peer: bool, graceful: bool) -> None:
        if not self._closed_event_sent:
            self._closed_event_sent = True
            self._events.append(
                ConnectionClosed(code=code, reason=reason, by_peer=by_peer, graceful=graceful)
            )

    def __repr__(self) -> str:
        return f"<Connection {self.role.value} {self.transport.value} {self._state.value}>"


def _truncate(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes of ``text``, cut at a character boundary."""
    return text.encode()[:limit].decode(errors="ignore")


class _Drop(Exception):
    """Internal: discard this datagram silently (§4.4)."""
