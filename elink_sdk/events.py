"""What :meth:`Client.events() <elink_sdk.Client.events>` yields.

Two families:

* **Log events** come from the user's event log on the server (§11.5): every
  message in the user's conversations, every recall, every read receipt.  The
  client applies the log in order and hands each entry over exactly once per
  :class:`~elink_sdk.Client`, across lost connections and reconnects.  They
  carry ``cursor``, the entry's number in the log.
* **Live events** are notices the server sends only to devices online at the
  time: delivery receipts, presence changes, and the client's own connection
  state.  A notice sent while the client was reconnecting is not repeated;
  ask :meth:`~elink_sdk.SentMessage.refresh` or
  :meth:`~elink_sdk.Client.presence` for the current state.
"""

from __future__ import annotations

import attrs

from elink_protocol.app import DeviceKind, Message, PresenceStatus

__all__ = [
    "Disconnected",
    "Event",
    "MessageDelivered",
    "MessageRead",
    "MessageRecalled",
    "MessageReceived",
    "PresenceChanged",
    "Reconnected",
]


@attrs.frozen(kw_only=True)
class Event:
    """Base of every event."""


@attrs.frozen(kw_only=True)
class MessageReceived(Event):
    """A message in one of the user's conversations: from another user, or
    from the user's own other device (multi-device sync).  Messages this
    client sent itself are not repeated here."""

    message: Message
    cursor: int

    @property
    def sender(self) -> str:
        """Who sent the message."""
        return self.message.sender

    @property
    def conversation(self) -> str:
        """The conversation id (``d:alice:bob``)."""
        return self.message.conversation

    @property
    def text(self) -> str | None:
        """The message's text (or a file's caption); ``None`` if it has none."""
        return self.message.text


@attrs.frozen(kw_only=True)
class MessageRecalled(Event):
    """A message was recalled by its sender: stop showing its content."""

    conversation: str
    msg_id: int
    by: str
    at_ms: int
    cursor: int


@attrs.frozen(kw_only=True)
class MessageRead(Event):
    """``reader`` read a message (a receipt for the sender; for the reader's
    own other devices, a sign to clear the unread badge)."""

    conversation: str
    msg_id: int
    reader: str
    at_ms: int
    cursor: int


@attrs.frozen(kw_only=True)
class MessageDelivered(Event):
    """Live: one of this user's messages reached a device of its recipient."""

    conversation: str
    msg_id: int
    recipient: str
    device: str
    at_ms: int


@attrs.frozen(kw_only=True)
class PresenceChanged(Event):
    """Live: a followed user's device (or one of the user's own) changed its
    presence; ``aggregated`` is the user's status over all devices."""

    user: str
    device: str
    device_kind: DeviceKind
    status: PresenceStatus
    aggregated: PresenceStatus
    note: str
    at_ms: int


@attrs.frozen(kw_only=True)
class Disconnected(Event):
    """Live: the connection was lost; the client is reconnecting."""

    reason: str


@attrs.frozen(kw_only=True)
class Reconnected(Event):
    """Live: the client is connected again.  ``resumed`` is true when the
    server kept the session (nothing was re-sent); otherwise the client
    logged in again and re-sent what had no answer."""

    resumed: bool
