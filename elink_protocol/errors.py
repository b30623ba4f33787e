"""Error codes from the specification (docs/protocol.md §8) and the exceptions
that carry them.

Every failure says who is at fault:

* :class:`LocalProtocolError` -- *you*, the caller, misused the API (sent an
  event in a state where it is not allowed, passed an oversized payload...).
* :class:`RemoteProtocolError` -- the *peer* broke the protocol.  Receiving
  methods raise nothing else; a fuzz test holds the library to that.

Both carry ``error_code``, an :class:`ErrorCode` from the spec, so a host can
put the right code into the ``CLOSE`` packet it sends before disconnecting.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Wire error codes (u16).  The spec's table in §8 lists the same values;
    ``tests/protocol/test_spec_agreement.py`` checks that both agree."""

    NO_ERROR = 0x0000
    PROTOCOL_VIOLATION = 0x0001
    FRAME_MALFORMED = 0x0002
    CHECKSUM_MISMATCH = 0x0003
    FRAME_TOO_LARGE = 0x0004
    UNSUPPORTED_VERSION = 0x0005
    UNEXPECTED_PACKET = 0x0006
    PAYLOAD_INVALID = 0x0007
    UNKNOWN_PACKET_TYPE = 0x0008
    HANDSHAKE_FAILURE = 0x0009
    INSUFFICIENT_SECURITY = 0x000A
    BAD_SIGNATURE = 0x000B
    DECRYPT_ERROR = 0x000C
    PID_ERROR = 0x000D
    TIMEOUT = 0x000E
    RESOURCE_LIMIT = 0x000F
    RESUME_REJECTED = 0x0010
    REKEY_FAILURE = 0x0011
    GOING_AWAY = 0x0012
    INTERNAL_ERROR = 0x00FF


class ProtocolError(Exception):
    """Base of all protocol errors.

    ``error_code`` is the spec's code for the failure; ``str(exc)`` is a
    human-readable explanation meant for logs, and is also what goes into the
    ``reason`` field of a ``CLOSE`` packet.
    """

    def __init__(self, message: str, error_code: ErrorCode) -> None:
        super().__init__(message)
        self.error_code = error_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, {self.error_code.name})"


class LocalProtocolError(ProtocolError):
    """The local caller misused the API or asked for something the protocol
    forbids.  Nothing was sent; the connection state is unchanged unless the
    message says otherwise."""

    def __init__(self, message: str, error_code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION) -> None:
        super().__init__(message, error_code)


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    The connection is closed after this is raised; the host should send the
    bytes from ``Connection.data_to_send()`` (which then hold a ``CLOSE``
    packet carrying ``error_code``) and disconnect."""


class UntrustedServerKey(RemoteProtocolError):
    """Client only: the server presented a key outside
    ``Config.trusted_server_keys`` (§7.8.2).  ``fingerprint`` is the key it
    presented, so a host can tell the user which key changed."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(f"server key {fingerprint} is not trusted", ErrorCode.HANDSHAKE_FAILURE)
        self.fingerprint = fingerprint
