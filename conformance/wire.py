"""The suite's own client connection: every byte under the case's control.

Theory of operation
-------------------
A conformance suite must send *wrong* bytes on purpose -- a bad checksum, a
PID out of sequence, a record sealed under the wrong key -- so it cannot use
the reference :class:`elink_protocol.Connection`, which refuses to.  A
:class:`RawConnection` is built from the protocol library's parts instead:
the frame codec, the payload codec, the packet classes and the record
protection.  Sending is explicit: :meth:`RawConnection.seal` takes every
header field as an optional override, and :meth:`RawConnection.send_bytes`
writes anything at all.

Receiving is strict.  Every frame the server sends is checked against the
spec as it arrives -- header fields, checksum, record authentication, PID
sequence, payload schema, the direction of application packets, nothing
after a Close -- and a breach raises :class:`~conformance.results.
ServerViolation`, which fails whatever case is running, with the section
broken.  The client also does what a well-behaved peer must (answering
Pings, following server-initiated key updates), unless a case turns that off.

The handshake itself is driven by :mod:`conformance.handshake`, which puts
the keys it derives into :meth:`RawConnection.install_keys`.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Callable
from typing import Any, Self

import attrs
import trio

from elink_protocol import (
    MAX_HEAVY_PAYLOAD,
    ErrorCode,
    Packet,
    Priority,
    RemoteProtocolError,
)
from elink_protocol import packets as p
from elink_protocol.app import AppErrorCode, check_sender
from elink_protocol.crypto.record import RecordProtection, record_protection
from elink_protocol.crypto.rekey import KeyUpdate, respond_to_rekey
from elink_protocol.frame import (
    ENCRYPTED,
    MAX_WIRE_PAYLOAD,
    MORE_FRAGMENTS,
    UNNUMBERED,
    Frame,
    FrameBuffer,
    prefix_for,
)
from elink_protocol.payload import decode_payload_untrusted, encode_payload
from elink_protocol.state import Role

from .results import Fail, ServerViolation

#: Largest plaintext payload (§4.2).
MAX_PAYLOAD = 4096
#: Largest plaintext payload on a heavy-bus connection (§9.4).
MAX_HEAVY = MAX_HEAVY_PAYLOAD
#: Largest frame ``length`` on a heavy-bus connection (§9.4).
MAX_HEAVY_WIRE = 65_535
#: Bytes read per receive.
RECEIVE_SIZE = 65536
#: After the server's Close: how long to watch for (forbidden) further bytes
#: before the transport's end is taken as final.
AFTER_CLOSE = 1.0
#: Seconds a write may make no progress before the case fails.
WRITE_TIMEOUT = 10.0
#: Lines of traffic kept per connection for the report.
LOG_LINES = 30
#: Records remembered to catch a (key, nonce) pair used twice (§7.5.1).
NONCE_MEMORY = 20_000

_UNNUMBERED_NONCE_BIT = 1 << 32


def code_name(code: int | None) -> str:
    """``TIMEOUT (0x000e)`` for any error or application code."""
    if code is None:
        return "no Close (the connection just ended)"
    for enum_type in (ErrorCode, AppErrorCode):
        try:
            return f"{enum_type(code).name} ({code:#06x})"
        except ValueError:
            continue
    return f"{code:#06x}"


def describe(packet: Packet) -> str:
    """A one-line summary of a packet for the traffic log."""
    name = type(packet).__name__
    if isinstance(packet, p.UnknownPacket):
        return f"Unknown({packet.type:#06x}, {len(packet.payload)} bytes)"
    fields = ", ".join(
        f"{key}={_short(value)}" for key, value in sorted(packet.to_payload().items())
    )
    return f"{name}({fields})"


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        return value[:8].hex() + ("..." if len(value) > 8 else "")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@attrs.frozen(kw_only=True)
class Closed:
    """The server ended the connection."""

    code: int | None
    """The Close packet's code, or None when the stream ended without one."""
    reason: str = ""
    encrypted: bool = False
    """The Close came encrypted (after the handshake) rather than plaintext."""

    def describe(self) -> str:
        reason = f" ({self.reason!r})" if self.reason else ""
        return f"Close {code_name(self.code)}{reason}"


@attrs.frozen(kw_only=True)
class Received:
    """One packet from the server."""

    frame: Frame
    """The frame as it arrived (its payload is the record when encrypted)."""
    packet: Packet
    plaintext: bytes
    """The payload after record protection was removed."""


@attrs.define(kw_only=True)
class SentPacket:
    """A numbered packet the client sent, kept for resumption."""

    pid: int
    type: int
    priority: int
    payload: bytes


@attrs.frozen(kw_only=True)
class SessionState:
    """What the client needs to resume a session on a new connection."""

    session_id: bytes
    resumption_secret: bytes
    next_pid: int
    """The PID the client's next numbered packet takes."""
    last_processed: int
    """The last server PID the client processed."""
    sent: tuple[SentPacket, ...]
    """Numbered packets the server had not acknowledged."""


class RawConnection:
    """One TCP connection to the server under test (see the module docstring)."""

    def __init__(
        self, stream: trio.abc.Stream, *, name: str = "conn", bus: p.Bus = p.Bus.LIGHT
    ) -> None:
        self.stream = stream
        self.name = name
        self.bus = bus
        """The kind of connection (§9.1): the heavy bus allows larger payloads
        (§9.4) and its own packets only."""
        self.max_payload = MAX_PAYLOAD if bus is p.Bus.LIGHT else MAX_HEAVY
        self.max_wire = MAX_WIRE_PAYLOAD if bus is p.Bus.LIGHT else MAX_HEAVY_WIRE
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.auto_pong = True
        """Answer the server's Pings (a case watching the idle timeout turns it off)."""
        self.auto_rekey = True
        """Answer a server-initiated Rekey."""
        self.frozen_ack: int | None = None
        """When set, frames carry this cumulative ack instead of the real one
        (a client that withholds acknowledgements)."""
        self.auto_ack = True
        """Acknowledge processed packets whenever the client is about to wait
        for more (a conforming client acknowledges within a second, §6.5.2)."""
        self._ack_sent = 0
        self.pings_received = 0
        self.closed: Closed | None = None
        self.eof = False

        self._buffer = FrameBuffer(max_buffer=4 * RECEIVE_SIZE, max_length=self.max_wire)
        self._peer_closed_stream = False
        self._we_closed = False

        # keys and numbering, set by install_keys()
        self.suite: int | None = None
        self.session_id = b""
        self.resumption_secret = b""
        self.send_epoch = 0
        self.latest_master = b""
        self._send: RecordProtection | None = None
        self._receive: dict[int, tuple[int, RecordProtection]] = {}
        self.next_pid = 1
        self.unnumbered = 0
        self.last_processed = 0
        """The last server PID processed (the cumulative ack we send)."""
        self.server_ack = 0
        """The highest cumulative ack the server sent us."""
        self.sent: dict[int, SentPacket] = {}
        self._rekey: KeyUpdate | None = None
        self.key_updates = 0
        self._seen_records: dict[tuple[int, int], bytes] = {}
        self.observed: list[tuple[type[Packet], bytes, dict[str, Any]]] = []
        """Every packet the server sent, with its plaintext payload and map."""

    # ------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls, host: str, port: int, *, name: str, timeout: float, bus: p.Bus = p.Bus.LIGHT
    ) -> Self:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
        return cls(stream, name=name, bus=bus)

    @property
    def established(self) -> bool:
        return self._send is not None

    def install_keys(
        self, *, suite: int, master: bytes, session_id: bytes, resumption_secret: bytes
    ) -> None:
        """The handshake completed: protect everything from now on."""
        self.suite = suite
        self.session_id = session_id
        self.resumption_secret = resumption_secret
        self.latest_master = master
        self.send_epoch = 0
        self._send = record_protection(suite, master, 0, "c2s")
        self._receive = {0: (0, record_protection(suite, master, 0, "s2c"))}

    def adopt(self, state: SessionState, *, server_last_processed: int) -> list[SentPacket]:
        """A resumed session continues ``state``'s numbering.  Returns the
        packets the server did not process, for the caller to re-send."""
        self.next_pid = state.next_pid
        self.last_processed = state.last_processed
        unprocessed = [s for s in state.sent if _after(s.pid, server_last_processed)]
        self.sent = {s.pid: s for s in unprocessed}
        return unprocessed

    def session_state(self) -> SessionState:
        """A snapshot for resuming this session later."""
        unacked = tuple(s for s in self.sent.values() if _after(s.pid, self.server_ack))
        return SessionState(
            session_id=self.session_id,
            resumption_secret=self.resumption_secret,
            next_pid=self.next_pid,
            last_processed=self.last_processed,
            sent=unacked,
        )

    # ------------------------------------------------------------ sending

    def note(self, line: str) -> None:
        self.log.append(f"{self.name}: {line}")

    async def send_bytes(self, data: bytes, *, note: str | None = None) -> None:
        """Write ``data`` as it is.  A connection the server already closed
        is not an error here: the case learns it from what it receives."""
        if note is not None:
            self.note(f"-> {note}")
        if self._peer_closed_stream:
            return
        try:
            with trio.fail_after(WRITE_TIMEOUT):
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._peer_closed_stream = True
        except trio.TooSlowError:
            raise Fail(f"{self.name}: the server took no bytes for {WRITE_TIMEOUT:g} s") from None

    async def send_eof(self) -> None:
        """Half-close: the server sees the end of the stream."""
        self.note("-> end of stream")
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is not None:
            try:
                await send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._peer_closed_stream = True

    async def send_plaintext(self, packet: Packet, *, payload: bytes | None = None) -> None:
        """A handshake-style plaintext frame: UNNUMBERED, pid 0, ack 0."""
        body = encode_payload(packet.to_payload()) if payload is None else payload
        frame = Frame(type=packet.TYPE, flags=UNNUMBERED, payload=body)
        await self.send_bytes(frame.encode(), note=f"{describe(packet)} (plaintext)")

    def ack_value(self) -> int:
        return self.last_processed if self.frozen_ack is None else self.frozen_ack

    def seal(
        self,
        type_: int,
        payload: bytes,
        *,
        numbered: bool,
        priority: int = Priority.CONTROL,
        pid: int | None = None,
        ack: int | None = None,
        flags: int | None = None,
        key_phase: int | None = None,
        counter: int | None = None,
        pck: int = 0,
        length: int | None = None,
        version: int = 1,
        protection: RecordProtection | None = None,
        remember: bool = True,
    ) -> bytes:
        """One encrypted frame.  Every field defaults to what a correct
        client sends; each can be overridden to make it wrong."""
        sealer = protection or self._send
        if sealer is None:
            raise RuntimeError("no keys yet: the handshake has not completed")
        if pid is None:
            if numbered:
                pid = self.next_pid
                self.next_pid = (pid + 1) & 0xFFFFFFFF
            else:
                pid = self.unnumbered & 0xFFFFFFFF
                self.unnumbered += 1
        if flags is None:
            flags = ENCRYPTED if numbered else ENCRYPTED | UNNUMBERED
        if counter is None:
            counter = pid | (_UNNUMBERED_NONCE_BIT if flags & UNNUMBERED else 0)
        header = _prefix(
            version=version,
            type_=type_,
            pid=pid,
            ack=self.ack_value() if ack is None else ack,
            flags=flags,
            priority=priority,
            key_phase=self.send_epoch & 0xFF if key_phase is None else key_phase,
            length=sealer.sealed_length(len(payload)) if length is None else length,
        )
        record = sealer.seal(counter, header, payload)
        self._ack_sent = self.ack_value() if ack is None else ack
        if numbered and remember:
            self.sent[pid] = SentPacket(pid=pid, type=type_, priority=priority, payload=payload)
        return header + pck.to_bytes(4, "big") + record

    async def send(self, packet: Packet, **overrides: Any) -> int:
        """Send ``packet`` encrypted; returns the PID (or unnumbered counter)
        it took.  ``overrides`` go to :meth:`seal`."""
        payload = encode_payload(packet.to_payload())
        return await self.send_payload(
            packet.TYPE,
            payload,
            numbered=overrides.pop("numbered", packet.NUMBERED),
            priority=overrides.pop("priority", packet.PRIORITY),
            note=describe(packet),
            **overrides,
        )

    async def send_payload(
        self,
        type_: int,
        payload: bytes,
        *,
        numbered: bool = True,
        priority: int = Priority.INTERACTIVE,
        note: str | None = None,
        **overrides: Any,
    ) -> int:
        """Send an arbitrary payload under an arbitrary type, encrypted."""
        pid = overrides.get("pid")
        if pid is None:
            pid = self.next_pid if numbered else self.unnumbered & 0xFFFFFFFF
        data = self.seal(type_, payload, numbered=numbered, priority=priority, **overrides)
        label = note or f"type {type_:#06x} ({len(payload)} bytes)"
        await self.send_bytes(data, note=f"{label} [{'pid' if numbered else 'u'}={pid}]")
        return int(pid)

    async def ack(self) -> None:
        """An Ack packet carrying our cumulative acknowledgement."""
        await self.send(p.Ack())

    async def ping(self, data: bytes = b"") -> None:
        await self.send(p.Ping(data=data))

    async def rekey(self) -> int:
        """Start a key update (§7.7); the RekeyAck completes it on receipt."""
        assert self.suite is not None
        self._rekey = KeyUpdate(suite=self.suite, master=self.latest_master, epoch=self.send_epoch)
        rekey, payload = self._rekey.initiate()
        return await self.send_payload(
            rekey.TYPE, payload, numbered=True, priority=Priority.CONTROL, note=describe(rekey)
        )

    async def close(self, code: int = ErrorCode.NO_ERROR) -> None:
        """End the connection politely (Close, then the transport)."""
        if not self._we_closed and self.closed is None and not self._peer_closed_stream:
            self._we_closed = True
            close = p.Close(code=code)
            if self.established:
                with trio.move_on_after(2):
                    await self.send(close)
            else:
                with trio.move_on_after(2):
                    await self.send_plaintext(close)
        await self.aclose()

    async def aclose(self) -> None:
        """Drop the transport without a Close (a lost connection)."""
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)
        self._peer_closed_stream = True

    # ---------------------------------------------------------- receiving

    async def receive(self, timeout: float) -> Received | Closed:
        """The next packet, or how the connection ended.  Fails the case if
        nothing arrives within ``timeout`` seconds."""
        event = await self.poll(timeout)
        if event is None:
            raise Fail(f"{self.name}: nothing from the server within {timeout:g} s")
        return event

    async def poll(self, timeout: float) -> Received | Closed | None:
        """Like :meth:`receive`, but None when nothing arrives in time."""
        if self.closed is not None:
            return self.closed
        with trio.move_on_after(timeout):
            while True:
                event = await self._next()
                if event is not None:
                    return event
        return None

    async def expect(
        self,
        match: type[Packet] | Callable[[Packet], bool],
        timeout: float,
        *,
        what: str | None = None,
    ) -> Received:
        """The next packet that ``match``es; control packets and others that
        do not match are skipped.  A Close or the timeout fails the case."""
        test = (lambda pkt: isinstance(pkt, match)) if isinstance(match, type) else match
        wanted = what or (match.__name__ if isinstance(match, type) else "the expected packet")
        with trio.move_on_after(timeout):
            while True:
                event = await self.receive(math.inf)
                if isinstance(event, Closed):
                    raise Fail(f"{self.name}: expected {wanted}, got {event.describe()}")
                if test(event.packet):
                    return event
        raise Fail(f"{self.name}: expected {wanted} within {timeout:g} s, got nothing")

    async def expect_close(self, timeout: float) -> Closed:
        """Read until the server ends the connection; other packets are
        skipped.  Fails the case if it stays open ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            while True:
                event = await self.receive(math.inf)
                if isinstance(event, Closed):
                    await self._watch_after_close()
                    return event
        raise Fail(f"{self.name}: the connection was still open after {timeout:g} s")

    async def _watch_after_close(self) -> None:
        """After a Close nothing may follow (§8.3): read until the stream ends."""
        with trio.move_on_after(AFTER_CLOSE):
            while not self.eof:
                await self._read_more()
                frame = self._next_frame()
                if frame is not None:
                    raise ServerViolation(
                        "8.3", f"sent a frame (type {frame.type:#06x}) after its Close"
                    )

    async def _read_more(self) -> None:
        if self.eof:
            await trio.sleep_forever()
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            self._peer_closed_stream = True
        try:
            self._buffer.feed(bytes(data))
        except RemoteProtocolError as exc:
            raise ServerViolation("4.5", f"stream error: {exc}") from None

    def _next_frame(self) -> Frame | None:
        try:
            return self._buffer.next_frame_untrusted()
        except RemoteProtocolError as exc:
            section = {
                ErrorCode.UNSUPPORTED_VERSION: "4.1",
                ErrorCode.CHECKSUM_MISMATCH: "4.3",
                ErrorCode.FRAME_TOO_LARGE: "4.2",
            }.get(exc.error_code, "4.4")
            if self._buffer.eof and exc.error_code is ErrorCode.FRAME_MALFORMED:
                section = "4.5"
            raise ServerViolation(section, f"invalid frame from the server: {exc}") from None

    async def _next(self) -> Received | Closed | None:
        """Process one frame (reading as needed).  None: nothing to report
        (an Ack, or a packet the client consumed itself)."""
        frame = self._next_frame()
        while frame is None:
            if self.eof:
                self.closed = Closed(code=None)
                self.note("<- end of stream")
                return self.closed
            if (
                self.auto_ack
                and self.established
                and self.frozen_ack is None
                and self.last_processed != self._ack_sent
                and not self._peer_closed_stream
            ):
                await self.ack()
            await self._read_more()
            frame = self._next_frame()
        if frame.flags & ENCRYPTED:
            return await self._on_encrypted(frame)
        return self._on_plaintext(frame)

    def _on_plaintext(self, frame: Frame) -> Received | Closed:
        cls = p.PACKET_TYPES.get(frame.type)
        if self.established:
            raise ServerViolation(
                "5.5", f"plaintext frame (type {frame.type:#06x}) after the handshake"
            )
        if frame.flags != UNNUMBERED or frame.pid != 0 or frame.ack != 0:
            raise ServerViolation(
                "5.5",
                f"handshake frame with flags {frame.flags:#04x}, pid {frame.pid}, ack {frame.ack}"
                " (must be UNNUMBERED, 0, 0)",
            )
        if cls is None or not (cls.PHASES & p.Phase.HANDSHAKE):
            raise ServerViolation("5.5", f"plaintext packet of type {frame.type:#06x}")
        packet = self._parse(cls, frame.payload)
        if isinstance(packet, p.Close):
            self.closed = Closed(code=packet.code, reason=packet.reason)
            self.note(f"<- {describe(packet)} (plaintext)")
            return self.closed
        if cls in (p.ClientHello, p.ClientFinished):
            raise ServerViolation("3.1", f"the server sent {cls.__name__}")
        self.note(f"<- {describe(packet)}")
        return Received(frame=frame, packet=packet, plaintext=frame.payload)

    async def _on_encrypted(self, frame: Frame) -> Received | Closed | None:
        if not self.established:
            raise ServerViolation("3.4", "an encrypted frame before the handshake completed")
        entry = self._receive.get(frame.key_phase)
        if entry is None:
            raise ServerViolation(
                "7.7.2", f"a frame under key phase {frame.key_phase}, no live key"
            )
        unnumbered = bool(frame.flags & UNNUMBERED)
        counter = frame.pid | (_UNNUMBERED_NONCE_BIT if unnumbered else 0)
        try:
            plaintext = entry[1].open_untrusted(counter, frame.prefix(), frame.payload)
        except RemoteProtocolError:
            raise ServerViolation("7.5", "a record that fails authentication") from None
        self._check_nonce_reuse(entry[0], counter, frame)
        section = "4.2" if self.bus is p.Bus.LIGHT else "9.4"
        if len(plaintext) > self.max_payload:
            raise ServerViolation(
                section, f"a payload of {len(plaintext)} bytes (limit {self.max_payload})"
            )
        if len(frame.payload) > self.max_wire:
            raise ServerViolation(section, f"a frame length of {len(frame.payload)}")
        if frame.flags & MORE_FRAGMENTS:
            raise ServerViolation("6.6.1", "MORE_FRAGMENTS on a stream (a sender never fragments)")
        if _after(frame.ack, (self.next_pid - 1) & 0xFFFFFFFF):
            raise ServerViolation(
                "6.3.1",
                f"acknowledged PID {frame.ack}, but the client's last PID is {self.next_pid - 1}",
            )
        if _after(frame.ack, self.server_ack):
            self.server_ack = frame.ack
        if not unnumbered:
            expected = (self.last_processed + 1) & 0xFFFFFFFF
            if frame.pid != expected:
                raise ServerViolation(
                    "6.5.2", f"numbered frame with PID {frame.pid}, expected {expected}"
                )
            self.last_processed = frame.pid
        cls = p.PACKET_TYPES.get(frame.type)
        if cls is None:
            if frame.type < p.IGNORABLE_TYPES_START:
                raise ServerViolation("5.3", f"a packet of unknown critical type {frame.type:#06x}")
            packet: Packet = p.UnknownPacket(
                type=frame.type, payload=plaintext, priority=Priority(frame.priority)
            )
            self._decode(plaintext)
        else:
            if unnumbered == cls.NUMBERED:
                raise ServerViolation(
                    "5.5",
                    f"{cls.__name__} sent {'unnumbered' if unnumbered else 'numbered'}",
                )
            if not cls.PHASES & p.Phase.ESTABLISHED:
                raise ServerViolation("5.5", f"{cls.__name__} after the handshake")
            if not cls.BUS & self.bus:
                bus = "light" if self.bus is p.Bus.LIGHT else "heavy"
                raise ServerViolation("9.1", f"{cls.__name__} on a {bus}-bus connection")
            packet = self._parse(cls, plaintext)
            try:
                check_sender(packet, Role.CLIENT)
            except RemoteProtocolError:
                raise ServerViolation("11.1.3", f"the server sent {cls.__name__}") from None
        self.note(f"<- {describe(packet)} [{'u' if unnumbered else 'pid'}={frame.pid}]")
        return await self._consume(frame, packet, plaintext)

    async def _consume(self, frame: Frame, packet: Packet, plaintext: bytes) -> Received | Closed:
        """What a well-behaved client does with control packets itself."""
        if isinstance(packet, p.Close):
            self.closed = Closed(code=packet.code, reason=packet.reason, encrypted=True)
            return self.closed
        if isinstance(packet, p.Ping):
            self.pings_received += 1
            if self.auto_pong:
                await self.send(packet.response())
        elif isinstance(packet, p.Ack):
            self._check_ack_ranges(frame.ack, packet)
        elif isinstance(packet, p.RekeyAck):
            self._complete_rekey(packet, plaintext)
        elif isinstance(packet, p.Rekey) and self.auto_rekey:
            await self._answer_rekey(packet, plaintext)
        return Received(frame=frame, packet=packet, plaintext=plaintext)

    def _decode(self, plaintext: bytes) -> dict[str, Any]:
        try:
            return decode_payload_untrusted(plaintext, max_bin_len=self.max_payload)
        except RemoteProtocolError as exc:
            raise ServerViolation("5.2", f"an invalid payload: {exc}") from None

    def _parse(self, cls: type[Packet], plaintext: bytes) -> Packet:
        fields = self._decode(plaintext)
        try:
            packet = cls.from_payload_untrusted(fields)
        except RemoteProtocolError as exc:
            section = "11.1.5" if cls.TYPE >= 0x0100 else "5.2"
            raise ServerViolation(section, f"{exc}") from None
        self.observed.append((cls, plaintext, fields))
        return packet

    def _check_nonce_reuse(self, epoch: int, counter: int, frame: Frame) -> None:
        key = (epoch, counter)
        digest = hashlib.sha256(frame.prefix() + frame.payload).digest()
        seen = self._seen_records.get(key)
        if seen is not None and seen != digest:
            raise ServerViolation(
                "7.5.1", f"two different records with nonce counter {counter} in epoch {epoch}"
            )
        if len(self._seen_records) < NONCE_MEMORY:
            self._seen_records[key] = digest

    def _check_ack_ranges(self, ack: int, packet: p.Ack) -> None:
        previous = ack
        for first, last in packet.ranges:
            if _after(first, last) or not _after(first, previous):
                raise ServerViolation("6.3.2", f"Ack ranges {packet.ranges} above ack {ack}")
            if _after(last, (self.next_pid - 1) & 0xFFFFFFFF):
                raise ServerViolation("6.3.2", f"Ack range names PID {last}, never sent")
            previous = last

    def _complete_rekey(self, packet: p.RekeyAck, plaintext: bytes) -> None:
        if self._rekey is None:
            raise ServerViolation("7.7.1", "a RekeyAck without a Rekey")
        update, self._rekey = self._rekey, None
        try:
            master = update.complete(packet, plaintext)
        except RemoteProtocolError as exc:
            raise ServerViolation("7.7.1", f"bad RekeyAck: {exc}") from None
        self._switch(packet.epoch, master)

    async def _answer_rekey(self, packet: p.Rekey, plaintext: bytes) -> None:
        assert self.suite is not None
        try:
            ack, ack_payload, master = respond_to_rekey(
                suite=self.suite,
                master=self.latest_master,
                epoch=self.send_epoch,
                rekey=packet,
                rekey_payload=plaintext,
            )
        except RemoteProtocolError as exc:
            raise ServerViolation("7.7.1", f"bad Rekey: {exc}") from None
        await self.send_payload(
            ack.TYPE, ack_payload, numbered=True, priority=Priority.CONTROL, note=describe(ack)
        )
        self._switch(packet.epoch, master)

    def _switch(self, epoch: int, master: bytes) -> None:
        assert self.suite is not None
        self.latest_master = master
        self.send_epoch = epoch
        self._send = record_protection(self.suite, master, epoch, "c2s")
        self._receive = {
            phase: entry for phase, entry in self._receive.items() if entry[0] >= epoch - 1
        }
        self._receive[epoch & 0xFF] = (epoch, record_protection(self.suite, master, epoch, "s2c"))
        self.key_updates += 1


def _prefix(
    *,
    version: int,
    type_: int,
    pid: int,
    ack: int,
    flags: int,
    priority: int,
    key_phase: int,
    length: int,
) -> bytes:
    header = prefix_for(
        type=type_,
        pid=pid,
        ack=ack,
        flags=flags,
        priority=priority,
        key_phase=key_phase,
        length=length,
    )
    if version != 1:
        header = bytes([version]) + header[1:]
    return header


def _after(a: int, b: int) -> bool:
    """PID ``a`` comes after ``b`` in serial-number arithmetic (§6.2.3)."""
    return 0 < (a - b) & 0xFFFFFFFF < 1 << 31
