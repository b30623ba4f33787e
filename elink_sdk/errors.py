"""The errors the SDK raises: one small hierarchy, each carrying the spec's code.

::

    ElinkError                      every SDK error; .code is the spec's code or None
    ├── AuthenticationError         AUTH_FAILED, ACCOUNT_DISABLED, CLIENT_UPGRADE_REQUIRED
    ├── PermissionDenied            PERMISSION_DENIED
    ├── NotFound                    NOT_FOUND
    │   └── FileExpired             FILE_EXPIRED: the file passed its retention and is deleted
    ├── RateLimited                 RATE_LIMITED, LOGIN_QUEUE_FULL, SERVER_BUSY,
    │                               TRANSFER_BUSY, STORAGE_UNAVAILABLE (.retry_after)
    ├── RequestRejected             any other refusal (INVALID_REQUEST, CONTENT_TOO_LARGE, ...)
    │   ├── RecallWindowExpired     RECALL_WINDOW_EXPIRED
    │   ├── FileTooLarge            FILE_TOO_LARGE
    │   └── QuotaExceeded           QUOTA_EXCEEDED
    ├── ConnectionLost              no connection, or it ended for good
    │   ├── ServerUnavailable       the server could not be reached at all
    │   └── SessionEnded            the server ended the session (SESSION_REPLACED, ...)
    ├── ServerKeyMismatch           the server's key is not the one trusted: possible attack
    ├── ProtocolError               the server broke the protocol
    └── DeadlineExceeded            the caller's deadline passed (also a TimeoutError)

Codes below ``0x0100`` are connection codes (docs/protocol.md §8); from
``0x0100`` they are application codes (§11.10).
"""

from __future__ import annotations

from elink_protocol import ErrorCode
from elink_protocol.app import AppErrorCode

__all__ = [
    "AuthenticationError",
    "ConnectionLost",
    "DeadlineExceeded",
    "ElinkError",
    "FileExpired",
    "FileTooLarge",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "QuotaExceeded",
    "RateLimited",
    "RecallWindowExpired",
    "RequestRejected",
    "ServerKeyMismatch",
    "ServerUnavailable",
    "SessionEnded",
    "code_name",
    "error_for_code",
]


def code_name(code: int | None) -> str:
    """The spec's name of ``code`` (``"NOT_FOUND"``), or its hex value."""
    if code is None:
        return "-"
    for enum in (AppErrorCode, ErrorCode):
        try:
            return enum(code).name
        except ValueError:
            continue
    return f"0x{code:04X}"


class ElinkError(Exception):
    """Base of every SDK error.

    ``code`` is the spec's error code when the server (or the protocol
    library) named one, else ``None``; ``code_name`` is its name."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def code_name(self) -> str:
        """The spec's name of ``code`` (``"NOT_FOUND"``), ``"-"`` without one."""
        return code_name(self.code)

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.code_name})" if self.code is not None else text


class AuthenticationError(ElinkError):
    """The login was refused: wrong user or password (the server does not
    say which), a disabled account, or a client version it no longer takes.
    Retrying with the same credentials will not help."""


class PermissionDenied(ElinkError):
    """The user may not do this (not a member, not the sender...)."""


class NotFound(ElinkError):
    """No such user, group, conversation or message (or not visible)."""


class FileExpired(NotFound):
    """The file passed the server's retention period and was deleted for
    good (FILE_EXPIRED): it cannot be downloaded any more."""


class RateLimited(ElinkError):
    """Too many requests, a full login queue, or a busy server.  Nothing was
    done; ``retry_after`` (seconds, possibly 0) says when to try again."""

    def __init__(self, message: str, *, code: int | None = None, retry_after: float = 0.0):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class RequestRejected(ElinkError):
    """The server refused a well-formed request for a reason not covered by
    a more specific class; ``code`` says which."""


class RecallWindowExpired(RequestRejected):
    """Too late to recall the message: the server's recall window passed."""


class FileTooLarge(RequestRejected):
    """The file is larger than the server accepts (FILE_TOO_LARGE)."""


class QuotaExceeded(RequestRejected):
    """The user's file storage quota on the server is used up (QUOTA_EXCEEDED)."""


class ConnectionLost(ElinkError):
    """The client has no working connection to the server and will not get
    one in time: the caller's deadline passed while reconnecting, the client
    was closed, or reconnection is switched off."""


class ServerUnavailable(ConnectionLost):
    """The server could not be reached (refused, unreachable, no answer)."""


class SessionEnded(ConnectionLost):
    """The server ended the session and the client must not reconnect on
    its own: another login of the same user and device replaced it
    (SESSION_REPLACED), or the account was disabled."""


class ServerKeyMismatch(ElinkError):
    """The server presented a key that is not the pinned one, or not the one
    the known-servers file lists for it.  Either the server's key changed or
    someone is intercepting the connection: check with the operator before
    you trust the new key (remove the old line from the known-servers file).
    """

    def __init__(self, server: str, presented: str, expected: frozenset[str], source: str):
        listed = ", ".join(sorted(expected)) or "none"
        super().__init__(
            f"SERVER KEY MISMATCH for {server}: it presented {presented}, but {source} "
            f"trusts only {listed}. The connection was refused; someone may be "
            "intercepting it, or the server's key was changed.",
            code=ErrorCode.HANDSHAKE_FAILURE,
        )
        self.server = server
        self.presented = presented
        self.expected = expected
        self.source = source


class ProtocolError(ElinkError):
    """The server broke the protocol (a malformed or unexpected packet); the
    connection was closed with ``code``."""


class DeadlineExceeded(ElinkError, TimeoutError):
    """The deadline the caller gave passed.  For a send, the message may or
    may not have reached the server: send again with the same
    ``client_msg_id`` and the server stores it at most once."""


_BY_CODE: dict[int, type[ElinkError]] = {
    AppErrorCode.AUTH_FAILED: AuthenticationError,
    AppErrorCode.ACCOUNT_DISABLED: AuthenticationError,
    AppErrorCode.CLIENT_UPGRADE_REQUIRED: AuthenticationError,
    AppErrorCode.PERMISSION_DENIED: PermissionDenied,
    AppErrorCode.NOT_FOUND: NotFound,
    AppErrorCode.RECALL_WINDOW_EXPIRED: RecallWindowExpired,
    AppErrorCode.SESSION_REPLACED: SessionEnded,
    AppErrorCode.FILE_EXPIRED: FileExpired,
    AppErrorCode.FILE_TOO_LARGE: FileTooLarge,
    AppErrorCode.QUOTA_EXCEEDED: QuotaExceeded,
}

_RETRY_LATER = frozenset(
    {
        AppErrorCode.RATE_LIMITED,
        AppErrorCode.LOGIN_QUEUE_FULL,
        AppErrorCode.SERVER_BUSY,
        AppErrorCode.TRANSFER_BUSY,
        AppErrorCode.STORAGE_UNAVAILABLE,
    }
)


def error_for_code(code: int, message: str = "", *, retry_after_ms: int = 0) -> ElinkError:
    """The SDK error for an application error code (a RequestFailed answer)."""
    text = message or code_name(code).replace("_", " ").lower()
    if code in _RETRY_LATER:
        return RateLimited(text, code=code, retry_after=retry_after_ms / 1000)
    return _BY_CODE.get(code, RequestRejected)(text, code=code)
