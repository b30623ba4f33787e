"""Fragmentation and reassembly of light-bus packets (docs/protocol.md §6.6).

A numbered packet whose frame would not fit one datagram is sent as a chain
of consecutive numbered frames of the same type; every frame but the last has
``MORE_FRAGMENTS``.  The payload is cut *before* record protection, so each
fragment frame is protected on its own and the receiver, after removing the
protection, concatenates the plaintext pieces.

Because the reliability layer delivers numbered frames in PID order with no
gaps (§6.4), reassembly needs no buffer per chain beyond the bytes so far:
the frames of a chain arrive back to back, and anything else in between is a
protocol violation.
"""

from __future__ import annotations

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .frame import HEADER_SIZE, MORE_FRAGMENTS, UNNUMBERED


def max_fragment_size(max_datagram_size: int, protection_overhead: int) -> int:
    """The most payload bytes one fragment can carry when its frame must fit
    a datagram of ``max_datagram_size`` by itself: the datagram minus the
    20-byte header minus the record-protection overhead of the suite (the
    largest overhead for that payload size, e.g. the AEAD tag)."""
    size = max_datagram_size - HEADER_SIZE - protection_overhead
    if size < 1:
        raise LocalProtocolError(
            f"a {max_datagram_size}-byte datagram leaves no room for a fragment payload"
        )
    return size


def split_payload(payload: bytes, max_fragment: int) -> list[bytes]:
    """Cut a plaintext payload into fragments of at most ``max_fragment``
    bytes, all full except possibly the last.  A payload that fits is
    returned as one piece (also when empty); one piece means "do not
    fragment"."""
    if max_fragment < 1:
        raise LocalProtocolError(f"max_fragment must be positive, got {max_fragment}")
    if len(payload) <= max_fragment:
        return [payload]
    return [payload[i : i + max_fragment] for i in range(0, len(payload), max_fragment)]


class Reassembler:
    """Joins fragment chains back into payloads on the receiving side.

    Feed every numbered frame, after in-order delivery and record
    protection are dealt with, to :meth:`add_untrusted`; it returns the whole
    payload when a packet is complete and ``None`` while a chain is open.
    Unnumbered frames may be fed too: they are returned at once and do not
    touch an open chain (they live outside the PID sequence).
    """

    __slots__ = ("_max_payload_size", "_parts", "_size", "_type")

    def __init__(self, max_payload_size: int) -> None:
        self._max_payload_size = max_payload_size
        self._type: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def in_progress(self) -> bool:
        """True while a chain is open (its last fragment has not arrived)."""
        return self._type is not None

    def add_untrusted(self, type: int, flags: int, payload: bytes) -> bytes | None:
        """Take one frame's type, flags and plaintext payload.

        Raises :class:`RemoteProtocolError`: ``FRAME_MALFORMED`` for
        ``MORE_FRAGMENTS`` on an unnumbered frame or an empty non-final
        fragment, ``PROTOCOL_VIOLATION`` when a chain is interrupted by a frame
        of another type, ``FRAME_TOO_LARGE`` when a payload (whole, or a
        chain's so far) exceeds the maximum payload size.
        """
        more = bool(flags & MORE_FRAGMENTS)
        unnumbered = bool(flags & UNNUMBERED)
        if unnumbered and more:
            raise RemoteProtocolError(
                "MORE_FRAGMENTS on an unnumbered frame", ErrorCode.FRAME_MALFORMED
            )
        if unnumbered or (self._type is None and not more):
            # A packet in one frame: the common case.
            if len(payload) > self._max_payload_size:
                raise RemoteProtocolError(
                    f"payload exceeds {self._max_payload_size} bytes", ErrorCode.FRAME_TOO_LARGE
                )
            return payload
        if self._type is None:
            self._type = type
        elif type != self._type:
            raise RemoteProtocolError(
                f"fragment chain of type {self._type:#06x} interrupted by type {type:#06x}",
                ErrorCode.PROTOCOL_VIOLATION,
            )
        if more and not payload:
            # Empty fragments would let a chain grow without bound in frames.
            raise RemoteProtocolError("empty non-final fragment", ErrorCode.FRAME_MALFORMED)
        self._size += len(payload)
        if self._size > self._max_payload_size:
            raise RemoteProtocolError(
                f"reassembled payload exceeds {self._max_payload_size} bytes",
                ErrorCode.FRAME_TOO_LARGE,
            )
        self._parts.append(payload)
        if more:
            return None
        whole = b"".join(self._parts)
        self._type = None
        self._parts = []
        self._size = 0
        return whole
