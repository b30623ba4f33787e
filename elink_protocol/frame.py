"""The frame codec (docs/protocol.md §4).

Every e-Link packet, on a stream or in a datagram, is one *frame*: a fixed
20-byte header followed by ``length`` payload bytes.  A datagram carries one or
more whole frames back to back; a stream carries an endless sequence of them.

Theory of operation: :class:`FrameBuffer` accumulates stream bytes and hands
out whole frames.  It is transactional: when the bytes for the next frame are
not all there yet it consumes nothing, so a frame split at any byte boundary
parses exactly as if it had arrived whole.  Functions that read peer bytes end
in ``_untrusted`` and raise only :class:`RemoteProtocolError`.
"""

from __future__ import annotations

import enum
import struct
import zlib

import attrs

from .errors import ErrorCode, RemoteProtocolError

PROTOCOL_VERSION = 1

#  0        1        2                 4                                  8
#  +--------+--------+--------+--------+--------+--------+--------+--------+
#  | version| flags  |  type (u16)     |            pid (u32)              |
#  +--------+--------+--------+--------+--------+--------+--------+--------+
#  |            ack (u32)              | length (u16)    |priority|  phase |
#  +--------+--------+--------+--------+--------+--------+--------+--------+
#  |            pck (u32)              |  payload (length bytes) ...
#  +--------+--------+--------+--------+
#  All integers big-endian.  pck = CRC-32 (ISO-HDLC, as zlib) over bytes 0..15
#  then the payload; 0 on encrypted frames, where the AEAD tag authenticates
#  bytes 0..15 (as associated data) and the payload instead.
HEADER = struct.Struct("!BBHIIHBBI")
HEADER_SIZE = HEADER.size  # 20
_PREFIX = struct.Struct("!BBHIIHBB")  # bytes 0..15, the part covered by pck / AEAD
PREFIX_SIZE = _PREFIX.size  # 16

#: Largest ``length`` any frame may announce: a 4096-byte payload plus the
#: largest record-protection overhead of any suite (CBC padding + HMAC, §7.5),
#: rounded up.  Receivers reject larger lengths before buffering (§4.2).
MAX_WIRE_PAYLOAD = 4096 + 64


class Flags(enum.IntFlag):
    """Header flag bits (§4.1).  Bits 3-7 are reserved and MUST be zero."""

    ENCRYPTED = 0x01
    """The payload is protected with the current record keys."""
    UNNUMBERED = 0x02
    """``pid`` is not a packet id but the sender's unnumbered-packet counter;
    the packet is not acknowledged, re-sent or de-duplicated (§6.2)."""
    MORE_FRAGMENTS = 0x04
    """The payload continues in the frame with the next PID (§6.6)."""


# The same bits as plain ints, for the per-frame hot path: operators on enum
# flags cost microseconds each in CPython 3.11.
ENCRYPTED = 0x01
UNNUMBERED = 0x02
MORE_FRAGMENTS = 0x04
_KNOWN_FLAGS = ENCRYPTED | UNNUMBERED | MORE_FRAGMENTS


class Priority(enum.IntEnum):
    """Priority classes (§6.1), most urgent first."""

    CONTROL = 0
    INTERACTIVE = 1
    SYNC = 2
    BULK = 3


_PRIORITIES = tuple(Priority)


@attrs.frozen(kw_only=True, slots=True)
class Frame:
    """One frame as it is on the wire.  ``payload`` is plaintext msgpack for
    plaintext frames and the protected record for encrypted ones."""

    type: int
    """Packet type (u16, §5.3)."""
    pid: int = 0
    """Packet id, or the unnumbered counter when ``UNNUMBERED`` is set."""
    ack: int = 0
    """Cumulative acknowledgement: every PID up to this one was processed."""
    flags: int = 0
    """Bit set of :class:`Flags` values (a plain int when parsed)."""
    priority: Priority = Priority.CONTROL
    key_phase: int = 0
    """Low 8 bits of the key epoch that protects the payload (§7.7)."""
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    def prefix(self) -> bytes:
        """Header bytes 0..15: what the checksum or the AEAD covers."""
        return _PREFIX.pack(
            self.version,
            int(self.flags),
            self.type,
            self.pid,
            self.ack,
            len(self.payload),
            int(self.priority),
            self.key_phase,
        )

    def encode(self) -> bytes:
        """The frame's bytes.  Plaintext frames get their CRC-32 here."""
        prefix = self.prefix()
        pck = 0 if self.flags & ENCRYPTED else zlib.crc32(self.payload, zlib.crc32(prefix))
        return prefix + pck.to_bytes(4, "big") + self.payload


def prefix_for(
    *,
    type: int,
    pid: int,
    ack: int,
    flags: int,
    priority: int,
    key_phase: int,
    length: int,
) -> bytes:
    """Header bytes 0..15 for a frame whose payload is not built yet (the
    encryptor needs them as associated data before the ciphertext exists)."""
    return _PREFIX.pack(
        PROTOCOL_VERSION, int(flags), type, pid, ack, length, int(priority), key_phase
    )


def parse_header_untrusted(
    header: bytes | bytearray | memoryview, max_length: int = MAX_WIRE_PAYLOAD
) -> tuple[int, ...]:
    """Unpack and validate a 20-byte header; returns the HEADER fields.

    Checks everything that can be checked before the payload is read, so that
    a hostile length is refused before a single payload byte is buffered."""
    fields = HEADER.unpack(header)
    version, flags, _type, _pid, _ack, length, priority, key_phase, pck = fields
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"unsupported framing version {version}", ErrorCode.UNSUPPORTED_VERSION
        )
    if flags & ~_KNOWN_FLAGS:
        raise RemoteProtocolError(
            f"reserved flag bits set: {flags:#04x}", ErrorCode.FRAME_MALFORMED
        )
    if priority > Priority.BULK:
        raise RemoteProtocolError(f"priority {priority} out of range", ErrorCode.FRAME_MALFORMED)
    if length > max_length:
        raise RemoteProtocolError(
            f"frame length {length} exceeds {max_length}", ErrorCode.FRAME_TOO_LARGE
        )
    if flags & ENCRYPTED:
        if pck != 0:
            raise RemoteProtocolError(
                "encrypted frame with non-zero pck", ErrorCode.FRAME_MALFORMED
            )
    elif key_phase != 0:
        raise RemoteProtocolError("plaintext frame with a key phase", ErrorCode.FRAME_MALFORMED)
    return fields


def _build_untrusted(fields: tuple[int, ...], header: bytes, payload: bytes) -> Frame:
    version, flags, type_, pid, ack, _length, priority, key_phase, pck = fields
    if not flags & ENCRYPTED and zlib.crc32(payload, zlib.crc32(header[:PREFIX_SIZE])) != pck:
        raise RemoteProtocolError("frame checksum (pck) mismatch", ErrorCode.CHECKSUM_MISMATCH)
    return Frame(
        type=type_,
        pid=pid,
        ack=ack,
        flags=flags,
        priority=_PRIORITIES[priority],
        key_phase=key_phase,
        payload=payload,
        version=version,
    )


def decode_frames_untrusted(data: bytes) -> list[Frame]:
    """Split a datagram into its frames (§4.4).  The datagram must hold whole
    frames only; a partial frame anywhere makes the whole datagram invalid."""
    frames = []
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER_SIZE:
            raise RemoteProtocolError("datagram ends inside a header", ErrorCode.FRAME_MALFORMED)
        header = bytes(view[offset : offset + HEADER_SIZE])
        fields = parse_header_untrusted(header)
        end = offset + HEADER_SIZE + fields[5]
        if end > len(data):
            raise RemoteProtocolError("datagram ends inside a payload", ErrorCode.FRAME_MALFORMED)
        frames.append(_build_untrusted(fields, header, bytes(view[offset + HEADER_SIZE : end])))
        offset = end
    return frames


class FrameBuffer:
    """Reassembles frames from a byte stream.

    ``feed()`` appends bytes; ``next_frame_untrusted()`` returns the next whole
    frame or ``None`` when more bytes are needed.  At most ``max_buffer``
    bytes are held; a frame announcing more than ``max_length`` (by default
    ``MAX_WIRE_PAYLOAD``; larger on the heavy bus, §9.4) is refused as soon
    as its header is complete.
    """

    def __init__(self, *, max_buffer: int, max_length: int = MAX_WIRE_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max_buffer = max_buffer
        self._max_length = max_length
        self._eof = False

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._eof and data:
            raise RemoteProtocolError("data after end of stream", ErrorCode.PROTOCOL_VIOLATION)
        if not data:
            self._eof = True
            return
        self._buf += data
        if len(self._buf) > self._max_buffer + HEADER_SIZE + self._max_length:
            raise RemoteProtocolError("receive buffer limit exceeded", ErrorCode.RESOURCE_LIMIT)

    @property
    def eof(self) -> bool:
        """True once the peer closed its side and no bytes remain."""
        return self._eof and not self._buf

    def next_frame_untrusted(self) -> Frame | None:
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            if self._eof and buf:
                raise RemoteProtocolError("stream ended inside a frame", ErrorCode.FRAME_MALFORMED)
            return None
        header = bytes(buf[:HEADER_SIZE])
        fields = parse_header_untrusted(header, self._max_length)
        end = HEADER_SIZE + fields[5]
        if len(buf) < end:
            if self._eof:
                raise RemoteProtocolError("stream ended inside a frame", ErrorCode.FRAME_MALFORMED)
            return None
        payload = bytes(buf[HEADER_SIZE:end])
        del buf[:end]
        return _build_untrusted(fields, header, payload)
