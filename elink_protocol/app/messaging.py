"""Messages, receipts and recall (docs/protocol.md §11.4, §11.6, §11.7).

A client sends :class:`SendMessage`; the server stores the message durably,
then answers :class:`MessageAccepted`.  Messages reach devices through the
sync log (:mod:`elink_protocol.app.sync`), as :class:`Message` records.
Delivery and read receipts come back to the sender as :class:`StatusUpdate`
pushes and can be queried with :class:`QueryStatus`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from elink_protocol.packets import boolean, register, uint, wire

from .base import (
    AnsweredByOk,
    Push,
    Record,
    Request,
    Response,
    _tuple,
    fill,
    record_size,
    records,
)
from .content import check_content, mapping
from .fields import choice, client_msg_id, conversation_id, device_or_empty, kind, name

#: Most receipts of each list a MessageStatus can carry (the payload bound
#: usually stops the list earlier).
MAX_RECEIPTS = 512


class DeliveryState(enum.StrEnum):
    """Where a message stands for its sender (§11.6)."""

    SENT = "sent"
    """Stored by the server; no recipient device has it yet."""
    DELIVERED = "delivered"
    """At least one recipient device processed it."""
    READ = "read"
    """At least one recipient read it."""


class ReceiptKind(enum.StrEnum):
    """The receipts a StatusUpdate or status event reports."""

    DELIVERED = "delivered"
    READ = "read"


@attrs.frozen(kw_only=True)
class Message(Record):
    """A stored message as users see it (§11.4.4).  A recalled message has
    ``recalled_at_ms`` set and no ``content``."""

    msg_id: int = wire("id", uint(64))
    """Server-assigned id, unique on the server and never reused."""
    conversation: str = wire("cv", conversation_id)
    """The conversation id (§11.2.3)."""
    seq: int = wire("sq", uint(64))
    """Position in the conversation: 1, 2, 3... without gaps."""
    sender: str = wire("fr", name)
    """The sending user."""
    sender_device: str = wire("fd", name)
    """The device it was sent from."""
    client_msg_id: str = wire("cm", client_msg_id)
    """The sender's idempotency key (§11.2.4)."""
    kind: str = wire("k", kind)
    """What the message carries (§11.4.1)."""
    content: dict[str, Any] | None = wire("c", mapping, default=None)
    """Kind-specific fields (§11.4.2); ``None`` exactly when recalled."""
    created_at_ms: int = wire("t", uint(64))
    """When the server accepted it (ms since the Unix epoch)."""
    recalled_at_ms: int | None = wire("rc", uint(64), default=None)
    """When the sender recalled it, or ``None``."""
    flags: int = wire("fl", uint(32), default=0)
    """:class:`~elink_protocol.app.content.MessageFlags` bits."""

    @property
    def recalled(self) -> bool:
        return self.recalled_at_ms is not None

    @property
    def text(self) -> str | None:
        """The searchable text of the content (§11.4.2): the text of a ``text``
        message, the caption of a file; ``None`` when there is none or the
        message was recalled."""
        if self.content is None:
            return None
        value = self.content.get("text")
        return value if isinstance(value, str) else None

    def _check_untrusted(self) -> None:
        if self.recalled:
            if self.content is not None:
                raise ValueError("a recalled message carries no content")
        elif self.content is None:
            raise ValueError("a message that is not recalled needs content")
        else:
            check_content(self.kind, self.content)


@register
@attrs.frozen(kw_only=True)
class SendMessage(Request):
    """Send a message (§11.4.5).  Exactly one of ``to`` and ``conversation``
    is set.  Sending is idempotent per ``(sender, client_msg_id)``."""

    TYPE: ClassVar[int] = 0x0200

    client_msg_id: str = wire("cm", client_msg_id)
    """The client's id for this message; a retry MUST reuse it."""
    to: str = wire("to", name, default="")
    """The peer user of a direct conversation (oneself: the file assistant)."""
    conversation: str = wire("cv", conversation_id, default="")
    """A conversation id, instead of ``to`` (group conversations: ``g:...``)."""
    kind: str = wire("k", kind)
    """What the message carries (§11.4.1)."""
    content: dict[str, Any] = wire("c", mapping)
    """Kind-specific fields (§11.4.2)."""
    flags: int = wire("fl", uint(32), default=0)
    """:class:`~elink_protocol.app.content.MessageFlags` bits."""

    def _check_untrusted(self) -> None:
        if bool(self.to) == bool(self.conversation):
            raise ValueError("exactly one of 'to' and 'cv' must be present")
        check_content(self.kind, self.content)

    def accepted(
        self,
        *,
        msg_id: int,
        conversation: str,
        seq: int,
        created_at_ms: int,
        duplicate: bool = False,
        recipient_backlog_full: bool = False,
    ) -> MessageAccepted:
        """The answer once the message is durable."""
        return MessageAccepted(
            rid=self.rid,
            client_msg_id=self.client_msg_id,
            msg_id=msg_id,
            conversation=conversation,
            seq=seq,
            created_at_ms=created_at_ms,
            duplicate=duplicate,
            recipient_backlog_full=recipient_backlog_full,
        )


@register
@attrs.frozen(kw_only=True)
class MessageAccepted(Response):
    """The message is stored durably (§11.4.6)."""

    TYPE: ClassVar[int] = 0x0201

    client_msg_id: str = wire("cm", client_msg_id)
    """Echo of the request's client message id."""
    msg_id: int = wire("id", uint(64))
    """The server's id of the message."""
    conversation: str = wire("cv", conversation_id)
    """The conversation it was stored in."""
    seq: int = wire("sq", uint(64))
    """Its position in the conversation."""
    created_at_ms: int = wire("t", uint(64))
    """When the server accepted it (ms since the Unix epoch)."""
    duplicate: bool = wire("dup", boolean, default=False)
    """The message had been accepted before (a retry): every other field
    describes the original, and nothing new was delivered."""
    recipient_backlog_full: bool = wire("bf", boolean, default=False)
    """A recipient has more unpulled events than the server's offline cap:
    the message is stored and will be delivered, but that recipient is far
    behind (§11.5.7)."""


# --- receipts and status (§11.6) -----------------------------------------------


@register
@attrs.frozen(kw_only=True)
class MarkRead(Request, AnsweredByOk):
    """The user has read every message of ``conversation`` up to ``up_to_seq``
    (§11.6.1).  Answered with Ok."""

    TYPE: ClassVar[int] = 0x0220

    conversation: str = wire("cv", conversation_id)
    """The conversation."""
    up_to_seq: int = wire("sq", uint(64))
    """Every message with ``seq <= up_to_seq`` sent by others is now read."""


@register
@attrs.frozen(kw_only=True)
class StatusUpdate(Push):
    """Live notice to a sender's devices: one of its messages was delivered
    to a device, or read by a user (§11.6.2)."""

    TYPE: ClassVar[int] = 0x0221

    msg_id: int = wire("id", uint(64))
    """The message."""
    conversation: str = wire("cv", conversation_id)
    """Its conversation."""
    status: ReceiptKind = wire("st", choice(ReceiptKind))
    """``delivered`` or ``read``."""
    user: str = wire("u", name)
    """The recipient."""
    device: str = wire("dv", device_or_empty, default="")
    """The recipient's device (``delivered`` only)."""
    at_ms: int = wire("at", uint(64))
    """When it happened (ms since the Unix epoch)."""

    def _check_untrusted(self) -> None:
        if (self.status is ReceiptKind.DELIVERED) != bool(self.device):
            raise ValueError("a device is named exactly for 'delivered'")


@attrs.frozen(kw_only=True)
class DeliveryReceipt(Record):
    """A message reached one device of a recipient."""

    user: str = wire("u", name)
    """The recipient."""
    device: str = wire("dv", name)
    """The device."""
    at_ms: int = wire("at", uint(64))
    """When (ms since the Unix epoch)."""


@attrs.frozen(kw_only=True)
class ReadReceipt(Record):
    """A recipient read a message (on any device)."""

    user: str = wire("u", name)
    """The reader."""
    at_ms: int = wire("at", uint(64))
    """When it was first read (ms since the Unix epoch)."""


@register
@attrs.frozen(kw_only=True)
class QueryStatus(Request):
    """Ask for the receipts of one of the user's own messages (§11.6.4)."""

    TYPE: ClassVar[int] = 0x0222

    msg_id: int = wire("id", uint(64))
    """The message."""

    def status(
        self,
        *,
        state: DeliveryState,
        sent_at_ms: int,
        delivered: Sequence[DeliveryReceipt],
        read: Sequence[ReadReceipt],
    ) -> MessageStatus:
        """The answer, with as many receipts as fit (delivered first, then
        read, each oldest first) and the full counts."""

        def make(dl: tuple[DeliveryReceipt, ...], rd: tuple[ReadReceipt, ...]) -> MessageStatus:
            return MessageStatus(
                rid=self.rid,
                msg_id=self.msg_id,
                state=state,
                sent_at_ms=sent_at_ms,
                delivered=dl,
                read=rd,
                delivered_count=len(delivered),
                read_count=len(read),
            )

        dl = fill(lambda d: make(d, ()), delivered[:MAX_RECEIPTS], item_size=record_size)
        rd = fill(lambda r: make(dl, r), read[:MAX_RECEIPTS], item_size=record_size)
        return make(dl, rd)


@register
@attrs.frozen(kw_only=True)
class MessageStatus(Response):
    """Sent / delivered / read state of a message, with its receipts
    (§11.6.5).  The lists may be cut to fit; the counts are complete."""

    TYPE: ClassVar[int] = 0x0223

    msg_id: int = wire("id", uint(64))
    """The message."""
    state: DeliveryState = wire("s", choice(DeliveryState))
    """``read`` if any recipient read it, else ``delivered`` if any recipient
    device has it, else ``sent``."""
    sent_at_ms: int = wire("t", uint(64))
    """When the server accepted it (ms since the Unix epoch)."""
    delivered: tuple[DeliveryReceipt, ...] = wire(
        "dl", records(DeliveryReceipt, MAX_RECEIPTS), converter=_tuple
    )
    """Deliveries, oldest first (possibly cut: see ``delivered_count``)."""
    read: tuple[ReadReceipt, ...] = wire("rd", records(ReadReceipt, MAX_RECEIPTS), converter=_tuple)
    """Read receipts, oldest first (possibly cut: see ``read_count``)."""
    delivered_count: int = wire("nd", uint(32))
    """How many deliveries there are in all."""
    read_count: int = wire("nr", uint(32))
    """How many read receipts there are in all."""

    @property
    def complete(self) -> bool:
        """Every receipt is in the lists."""
        return len(self.delivered) == self.delivered_count and len(self.read) == self.read_count


# --- recall (§11.7) ------------------------------------------------------------


@register
@attrs.frozen(kw_only=True)
class Recall(Request):
    """Recall one of the user's own messages (§11.7.1)."""

    TYPE: ClassVar[int] = 0x0230

    msg_id: int = wire("id", uint(64))
    """The message."""

    def ok(self, *, recalled_at_ms: int) -> RecallOk:
        """The success answer."""
        return RecallOk(rid=self.rid, msg_id=self.msg_id, recalled_at_ms=recalled_at_ms)


@register
@attrs.frozen(kw_only=True)
class RecallOk(Response):
    """The message is recalled, now or by an earlier request (§11.7.2)."""

    TYPE: ClassVar[int] = 0x0231

    msg_id: int = wire("id", uint(64))
    """The message."""
    recalled_at_ms: int = wire("at", uint(64))
    """When it was recalled (ms since the Unix epoch)."""
