"""Login, the login queue, logout and going away (docs/protocol.md §11.3).

After the handshake, the first application request of a client is
:class:`Login`.  While the server's admission queue holds it, the server
reports the queue position with :class:`LoginQueued`; the login ends with
:class:`LoginOk` or :class:`~elink_protocol.app.base.RequestFailed`.  Before
LoginOk every other request fails with ``NOT_LOGGED_IN``.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs

from elink_protocol.packets import register, text, uint, wire

from .base import AnsweredByOk, Push, Request, Response
from .fields import MAX_REASON, choice, name, nonempty_text

#: Longest password, in UTF-8 bytes.
MAX_PASSWORD = 256
#: Longest client version string, in UTF-8 bytes.
MAX_VERSION = 64


class DeviceKind(enum.StrEnum):
    """What kind of terminal a device is."""

    PC = "pc"
    MOBILE = "mobile"
    WEB = "web"
    BOT = "bot"


@register
@attrs.frozen(kw_only=True)
class Login(Request):
    """Authenticate a user on one device (§11.3.1)."""

    TYPE: ClassVar[int] = 0x0100

    user: str = wire("u", name)
    """The user name."""
    password: str = wire("pw", nonempty_text(MAX_PASSWORD))
    """The password, in clear inside the encrypted connection."""
    device_id: str = wire("d", name)
    """The device's id, chosen once by the device and kept (unique per user)."""
    device_kind: DeviceKind = wire("dk", choice(DeviceKind))
    """``pc``, ``mobile``, ``web`` or ``bot``."""
    client_version: str = wire("ver", text(MAX_VERSION), default="")
    """The client software's version, for upgrade hints and logs."""

    def ok(
        self,
        *,
        pending: int,
        cursor: int,
        recall_window_s: int,
        server_time_ms: int,
        heartbeat_s: int = 0,
        latest_version: str = "",
    ) -> LoginOk:
        """The success answer.  ``pending`` saturates at ``2**32 - 1``."""
        return LoginOk(
            rid=self.rid,
            user=self.user,
            device_id=self.device_id,
            pending=min(pending, 0xFFFFFFFF),
            cursor=cursor,
            recall_window_s=recall_window_s,
            server_time_ms=server_time_ms,
            heartbeat_s=heartbeat_s,
            latest_version=latest_version,
        )

    def queued(self, *, position: int, estimated_wait_ms: int) -> LoginQueued:
        """The provisional answer while the login waits for admission."""
        return LoginQueued(rid=self.rid, position=position, estimated_wait_ms=estimated_wait_ms)


@register
@attrs.frozen(kw_only=True)
class LoginOk(Response):
    """The login succeeded; the session belongs to ``user`` on ``device_id``
    (§11.3.2)."""

    TYPE: ClassVar[int] = 0x0101

    user: str = wire("u", name)
    """The user, as the server spells it."""
    device_id: str = wire("d", name)
    """The device."""
    pending: int = wire("pe", uint(32))
    """Event-log entries waiting for this device (saturating): what the
    device has to pull (§11.5)."""
    cursor: int = wire("c", uint(64))
    """The device's stored sync cursor (0 for a new device)."""
    recall_window_s: int = wire("rw", uint(32))
    """How long after sending a message its sender may recall it (§11.7)."""
    server_time_ms: int = wire("st", uint(64))
    """The server's clock (ms since the Unix epoch), to correct displayed times."""
    heartbeat_s: int = wire("hb", uint(16), default=0)
    """If non-zero, the client SHOULD send something (a Ping will do) at least
    this often: the server's idle timeout is longer than this."""
    latest_version: str = wire("lv", text(MAX_VERSION), default="")
    """If non-empty, the newest client version: the client MAY offer an upgrade."""


@register
@attrs.frozen(kw_only=True)
class LoginQueued(Response):
    """The login waits in the server's admission queue (§11.3.3).  Sent again
    when the position changes; LoginOk or RequestFailed follows."""

    TYPE: ClassVar[int] = 0x0102

    position: int = wire("p", uint(32))
    """Logins ahead of this one (0: next)."""
    estimated_wait_ms: int = wire("w", uint(32))
    """The server's estimate of the wait; 0 if it has none."""


@register
@attrs.frozen(kw_only=True)
class Logout(Request, AnsweredByOk):
    """End the session (§11.3.4).  Answered with Ok, then the server closes
    the connection with NO_ERROR; the session cannot be resumed."""

    TYPE: ClassVar[int] = 0x0103


@register
@attrs.frozen(kw_only=True)
class GoingAway(Push):
    """The server is shutting down (§11.3.5).  Close with GOING_AWAY follows."""

    TYPE: ClassVar[int] = 0x0104

    reason: str = wire("m", text(MAX_REASON), default="")
    """Human-readable reason, for logs."""
    reconnect_after_ms: int = wire("ra", uint(32), default=0)
    """The client SHOULD wait at least this long (plus a random jitter) before
    reconnecting."""
