"""The UDP envelope and the server's address-validation tokens (§6.9).

Theory of operation
-------------------
Every e-Link UDP datagram starts with a 9-byte envelope: a kind byte and the
8-byte connection id that the client chose for the connection.  The server
finds a datagram's connection by that id alone (§6.9.2).

A client sends INITIALs, padded to :data:`INITIAL_SIZE` bytes, until its
handshake completes.  A server that does not know the connection id answers
an INITIAL without a valid token with a RETRY carrying a token bound to the
source address (§6.9.3); only an INITIAL that returns the token opens a
connection.  The :class:`TokenMinter` makes and checks those tokens with an
HMAC over the address, so the server keeps nothing per unvalidated source.

Nothing here reads a clock or touches a socket: ``now`` is passed in and the
address is whatever bytes the host uses to name a source
(:func:`address_bytes` gives the canonical form for IP addresses).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable

import attrs

__all__ = [
    "CONNECTION_ID_SIZE",
    "DATA_FRAMES_LIMIT",
    "ENVELOPE_SIZE",
    "INITIAL_SIZE",
    "MAX_DATAGRAM_SIZE",
    "MAX_TOKEN_SIZE",
    "Envelope",
    "Kind",
    "TokenMinter",
    "address_bytes",
    "decode_envelope_untrusted",
    "encode_data",
    "encode_initial",
    "encode_retry",
]

#: Largest e-Link UDP datagram, envelope included (§6.9.7).
MAX_DATAGRAM_SIZE = 1200
#: Every INITIAL is padded to exactly this size (§6.9.1), so that the
#: server's answers are never larger than what a spoofed source sent.
INITIAL_SIZE = 1200
CONNECTION_ID_SIZE = 8
#: kind + connection id.
ENVELOPE_SIZE = 1 + CONNECTION_ID_SIZE
MAX_TOKEN_SIZE = 64
#: Bytes of frames a DATA datagram carries: the datagram size limit that
#: §4.6 and §6.6 use on UDP (``Config.max_datagram_size``).
DATA_FRAMES_LIMIT = MAX_DATAGRAM_SIZE - ENVELOPE_SIZE

#: Seconds a token stays valid after it was issued (§6.9.3).
TOKEN_LIFETIME = 10.0
#: Seconds between two changes of the token secret (§6.9.3).
SECRET_ROTATION = 60.0

_TOKEN_LABEL = b"e-Link retry"
_TOKEN_MAC_SIZE = 16

# kind (u8) | connection id (8 bytes)
_ENVELOPE = struct.Struct("!B8s")
# token length (u8)
_U8 = struct.Struct("!B")
# frames length (u16)
_U16 = struct.Struct("!H")
# issued, whole seconds (u32)
_U32 = struct.Struct("!I")


class Kind(enum.IntEnum):
    """The envelope kinds (§6.9.1)."""

    INITIAL = 0xE1
    RETRY = 0xE2
    DATA = 0xE3


@attrs.frozen(kw_only=True)
class Envelope:
    """One decoded UDP datagram."""

    kind: Kind
    """What the datagram is."""
    connection_id: bytes
    """The 8-byte connection id (§6.9.2)."""
    token: bytes = b""
    """INITIAL and RETRY: the address-validation token (§6.9.3)."""
    frames: bytes = b""
    """INITIAL and DATA: the e-Link frames (§4.6) the datagram carries."""


def encode_initial(connection_id: bytes, token: bytes, frames: bytes) -> bytes:
    """A client's INITIAL, padded to :data:`INITIAL_SIZE` bytes."""
    _check_id(connection_id)
    if len(token) > MAX_TOKEN_SIZE:
        raise ValueError(f"token of {len(token)} bytes; at most {MAX_TOKEN_SIZE}")
    head = (
        _ENVELOPE.pack(Kind.INITIAL, connection_id)
        + _U8.pack(len(token))
        + token
        + _U16.pack(len(frames))
    )
    if len(head) + len(frames) > INITIAL_SIZE:
        raise ValueError(f"{len(frames)} bytes of frames do not fit in an INITIAL")
    return head + frames + bytes(INITIAL_SIZE - len(head) - len(frames))


def encode_retry(connection_id: bytes, token: bytes) -> bytes:
    """A server's RETRY."""
    _check_id(connection_id)
    if not 1 <= len(token) <= MAX_TOKEN_SIZE:
        raise ValueError(f"token of {len(token)} bytes; 1 to {MAX_TOKEN_SIZE}")
    return _ENVELOPE.pack(Kind.RETRY, connection_id) + _U8.pack(len(token)) + token


def encode_data(connection_id: bytes, frames: bytes) -> bytes:
    """A DATA datagram."""
    _check_id(connection_id)
    if len(frames) > DATA_FRAMES_LIMIT:
        raise ValueError(f"{len(frames)} bytes of frames; at most {DATA_FRAMES_LIMIT}")
    return _ENVELOPE.pack(Kind.DATA, connection_id) + frames


def _check_id(connection_id: bytes) -> None:
    if len(connection_id) != CONNECTION_ID_SIZE:
        raise ValueError(f"connection id must be {CONNECTION_ID_SIZE} bytes")


def decode_envelope_untrusted(datagram: bytes) -> Envelope | None:
    """Decode one datagram's envelope; None when §6.9.1 says to discard it.

    The frames are not looked at: the connection checks them (§4.6)."""
    if len(datagram) < ENVELOPE_SIZE or len(datagram) > 65535:
        return None
    kind_byte, connection_id = _ENVELOPE.unpack_from(datagram)
    if kind_byte == Kind.DATA:
        return Envelope(kind=Kind.DATA, connection_id=connection_id, frames=datagram[9:])
    if kind_byte == Kind.RETRY:
        if len(datagram) < ENVELOPE_SIZE + 1:
            return None
        (size,) = _U8.unpack_from(datagram, ENVELOPE_SIZE)
        if not 1 <= size <= MAX_TOKEN_SIZE or len(datagram) != ENVELOPE_SIZE + 1 + size:
            return None
        return Envelope(kind=Kind.RETRY, connection_id=connection_id, token=datagram[10:])
    if kind_byte == Kind.INITIAL:
        if len(datagram) < INITIAL_SIZE:
            return None
        (size,) = _U8.unpack_from(datagram, ENVELOPE_SIZE)
        if size > MAX_TOKEN_SIZE:
            return None
        offset = ENVELOPE_SIZE + 1 + size
        token = datagram[ENVELOPE_SIZE + 1 : offset]
        (length,) = _U16.unpack_from(datagram, offset)
        offset += _U16.size
        end = offset + length
        if end > len(datagram) or datagram[end:].count(0) != len(datagram) - end:
            return None
        return Envelope(
            kind=Kind.INITIAL,
            connection_id=connection_id,
            token=token,
            frames=datagram[offset:end],
        )
    return None


def address_bytes(host: str, port: int) -> bytes:
    """The canonical bytes of an IP source address for tokens: the 16-byte
    IPv6 form (IPv4 mapped) and the port."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed + struct.pack("!H", port)


class TokenMinter:
    """Makes and checks the server's stateless address-validation tokens
    (§6.9.3).  Keeps two secrets (current and previous), replaced every
    ``rotation`` seconds of the ``now`` the host passes."""

    def __init__(
        self,
        *,
        now: float,
        lifetime: float = TOKEN_LIFETIME,
        rotation: float = SECRET_ROTATION,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if lifetime >= rotation:
            raise ValueError("a token must expire before its secret is dropped")
        self._lifetime = lifetime
        self._rotation = rotation
        self._random = random
        self._secret = random(32)
        self._previous = random(32)
        self._rotated_at = now

    def issue(self, connection_id: bytes, address: bytes, now: float) -> bytes:
        """A token for ``address`` and ``connection_id``, issued ``now``."""
        self._rotate(now)
        issued = _U32.pack(int(now) & 0xFFFFFFFF)
        return issued + self._mac(self._secret, issued, connection_id, address)

    def check(self, token: bytes, connection_id: bytes, address: bytes, now: float) -> bool:
        """True when ``token`` was issued by us, for this address and
        connection id, at most ``lifetime`` seconds ago."""
        self._rotate(now)
        if len(token) != _U32.size + _TOKEN_MAC_SIZE:
            return False
        issued = token[: _U32.size]
        (seconds,) = _U32.unpack(issued)
        age = (int(now) - seconds) & 0xFFFFFFFF
        if age > self._lifetime:
            return False
        mac = token[_U32.size :]
        good = False
        for secret in (self._secret, self._previous):
            # Both compared, constant time: which secret matched stays hidden.
            good |= hmac.compare_digest(mac, self._mac(secret, issued, connection_id, address))
        return good

    def _rotate(self, now: float) -> None:
        if now - self._rotated_at >= self._rotation:
            # After a long pause both secrets are stale: a token can live at
            # most ``lifetime`` < ``rotation``, so dropping both loses nothing.
            self._previous = (
                self._secret if now - self._rotated_at < 2 * self._rotation else self._random(32)
            )
            self._secret = self._random(32)
            self._rotated_at = now

    @staticmethod
    def _mac(secret: bytes, issued: bytes, connection_id: bytes, address: bytes) -> bytes:
        message = _TOKEN_LABEL + issued + connection_id + address
        return hmac.new(secret, message, hashlib.sha256).digest()[:_TOKEN_MAC_SIZE]
