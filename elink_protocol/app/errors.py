"""Application error codes (docs/protocol.md §11.10).

They share the u16 code space of §8.1, in the range ``0x0100-0x7FFF`` that
§8.1 reserves for the application protocol.  Most travel in
:class:`~elink_protocol.app.base.RequestFailed` (the request failed, the
connection lives on); the session-level ones can also be the code of a Close
packet, when the server ends a session for an application reason.
"""

from __future__ import annotations

import enum

#: First and last code of the application range (§8.1).
APP_ERROR_FIRST = 0x0100
APP_ERROR_LAST = 0x7FFF


class AppErrorCode(enum.IntEnum):
    """Application error codes (u16).  The table in §11.10 lists the same
    values; ``tests/protocol/test_app_spec.py`` checks that both agree.

    A receiver MUST treat a code it does not know as a failure of the request
    (or the end of the session, in a Close) with no further meaning."""

    # --- session (§11.3) ---
    AUTH_FAILED = 0x0100
    ACCOUNT_DISABLED = 0x0101
    RATE_LIMITED = 0x0102
    NOT_LOGGED_IN = 0x0103
    ALREADY_LOGGED_IN = 0x0104
    LOGIN_QUEUE_FULL = 0x0105
    SERVER_BUSY = 0x0106
    CLIENT_UPGRADE_REQUIRED = 0x0107
    SESSION_REPLACED = 0x0108
    # --- requests (§11.2-§11.9) ---
    INVALID_REQUEST = 0x0110
    NOT_FOUND = 0x0111
    PERMISSION_DENIED = 0x0112
    CONTENT_TOO_LARGE = 0x0113
    UNSUPPORTED_CONTENT = 0x0114
    RECALL_WINDOW_EXPIRED = 0x0115
    RECIPIENT_BACKLOG_FULL = 0x0116
    CURSOR_INVALID = 0x0117
    # --- files and the heavy bus (§9) ---
    FILE_TOO_LARGE = 0x0120
    QUOTA_EXCEEDED = 0x0121
    TOKEN_INVALID = 0x0122
    HASH_MISMATCH = 0x0123
    FILE_EXPIRED = 0x0124
    PATH_INVALID = 0x0125
    STORAGE_UNAVAILABLE = 0x0126
    RANGE_INVALID = 0x0127
    TRANSFER_BUSY = 0x0128
    SERVER_ERROR = 0x01FF
