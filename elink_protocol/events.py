"""Events that :meth:`Connection.next_event` returns besides packets.

Application packets (and :class:`~elink_protocol.packets.UnknownPacket`) are
returned as the packet objects themselves: the same classes are used to send
and to receive.  The classes here describe things that happen *to the
connection*.
"""

from __future__ import annotations

import attrs


class _NeedData:
    """Sentinel: no event is ready; feed more bytes (or wait for the timer)."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@attrs.frozen(kw_only=True)
class Event:
    """Base of the connection events."""


@attrs.frozen(kw_only=True)
class HandshakeComplete(Event):
    """The handshake finished; application packets may flow (§7.3)."""

    version: int
    """Negotiated protocol version."""
    suite: int
    """Negotiated cipher suite (a :class:`~elink_protocol.crypto.suites.CipherSuite` value)."""
    features: tuple[str, ...]
    """Optional features both sides support."""
    session_id: bytes
    """16-byte id of the session (the old one when resumed)."""
    resumed: bool
    """True when an earlier session was resumed (§6.5)."""
    server_fingerprint: str
    """``SHA256:<hex>`` of the server's long-term key.  A client using trust
    on first use MUST check it against its known-servers file (§7.8)."""
    resent: int = 0
    """Resumed sessions: how many packets of ours are being re-sent because the
    peer had not processed them."""


@attrs.frozen(kw_only=True)
class ResumeRequested(Event):
    """Server only: the client asks to resume ``session_id`` (§6.5).  The host
    looks the session up and calls ``Connection.accept_resume(state)`` or
    ``Connection.reject_resume()``; until then nothing else happens."""

    session_id: bytes
    """The session the client wants back."""
    last_processed: int
    """The last PID of the old session's server-to-client packets that the
    client processed."""


@attrs.frozen(kw_only=True)
class KeyUpdated(Event):
    """A rekey completed: packets sent from now on use ``epoch`` (§7.7)."""

    epoch: int
    initiated_locally: bool


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    """The connection is over.  No more events follow."""

    code: int
    """An :class:`~elink_protocol.errors.ErrorCode` value; NO_ERROR for a
    normal close.  Codes the library does not know are passed through."""
    reason: str
    """Human-readable text from the Close packet, or the local reason."""
    by_peer: bool
    """True when the peer sent Close (or ended the stream)."""
    graceful: bool
    """False when the transport ended without a Close packet (a lost
    connection: the session may be resumed)."""
