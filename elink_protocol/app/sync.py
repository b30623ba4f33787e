"""Multi-device pull sync (docs/protocol.md §11.5).

Theory of operation.  The server keeps, per user, an append-only *event log*
numbered 1, 2, 3... without gaps: one entry per message in any of the user's
conversations (the user's own included), per recall, per read receipt.  Each
device keeps a *cursor*, the number of the last entry it has applied.  A
device *pulls* the entries after its cursor in pages (:class:`Pull`), applies
them in order, and confirms with :class:`Delivered`, which is also the
delivery receipt for every message in the confirmed range.  To avoid a round
trip the server may push an entry itself (:class:`EventPush`) or just say that
the log grew (:class:`EventsAvailable`); a device applies a pushed entry only
when it is the next one after its cursor and otherwise pulls.  Nothing is
lost when a push is: the log is the truth, the pushes are hints.

Entries are maps discriminated by ``k``: :class:`MessageEvent`,
:class:`RecallEvent`, :class:`StatusEvent`; kinds this revision does not know
parse as :class:`UnknownEvent`, which a device skips (advancing its cursor).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from elink_protocol.frame import Priority
from elink_protocol.packets import boolean, register, uint, wire
from elink_protocol.payload import encode_payload

from .base import AnsweredByOk, Push, Record, Request, Response, _tuple, fill
from .fields import choice, conversation_id, device_or_empty, kind, name, uint_range
from .messaging import Message, ReceiptKind

#: Most entries one PullResult may carry; the payload bound usually stops a
#: page earlier.
MAX_PULL = 1000


class EventKind(enum.StrEnum):
    """Kinds of event-log entries this revision defines (§11.5.2)."""

    MESSAGE = "message"
    RECALL = "recall"
    STATUS = "status"


@attrs.frozen(kw_only=True)
class SyncEvent(Record):
    """Base of event-log entries: every entry has a ``cursor`` and a kind."""

    KIND: ClassVar[str]

    cursor: int = wire("c", uint(64))
    """The entry's position in the user's log (1, 2, 3...)."""

    @property
    def kind(self) -> str:
        return self.KIND

    def to_wire(self) -> dict[str, Any]:
        return {"k": str(self.kind), **super().to_wire()}


@attrs.frozen(kw_only=True)
class MessageEvent(SyncEvent):
    """A message was added to one of the user's conversations (the user's own
    messages too, so every device sees them)."""

    KIND: ClassVar[str] = EventKind.MESSAGE

    message: Message = wire("m", Message.from_wire_untrusted)
    """The message as users see it now (no content if since recalled)."""


@attrs.frozen(kw_only=True)
class RecallEvent(SyncEvent):
    """A message in one of the user's conversations was recalled: devices
    MUST stop showing its content."""

    KIND: ClassVar[str] = EventKind.RECALL

    conversation: str = wire("cv", conversation_id)
    """The message's conversation."""
    msg_id: int = wire("id", uint(64))
    """The recalled message."""
    by: str = wire("by", name)
    """Who recalled it (its sender)."""
    at_ms: int = wire("at", uint(64))
    """When (ms since the Unix epoch)."""


@attrs.frozen(kw_only=True)
class StatusEvent(SyncEvent):
    """A receipt: a message was read (in the reader's log, so the reader's
    other devices clear it as unread; and in the sender's log) or delivered."""

    KIND: ClassVar[str] = EventKind.STATUS

    conversation: str = wire("cv", conversation_id)
    """The message's conversation."""
    msg_id: int = wire("id", uint(64))
    """The message."""
    status: ReceiptKind = wire("st", choice(ReceiptKind))
    """``read`` or ``delivered``."""
    by: str = wire("by", name)
    """The reader, or the recipient whose device received it."""
    device: str = wire("dv", device_or_empty, default="")
    """The receiving device (``delivered`` only)."""
    at_ms: int = wire("at", uint(64))
    """When (ms since the Unix epoch)."""

    def _check_untrusted(self) -> None:
        if (self.status is ReceiptKind.DELIVERED) != bool(self.device):
            raise ValueError("a device is named exactly for 'delivered'")


@attrs.frozen(kw_only=True)
class UnknownEvent(SyncEvent):
    """An entry of a kind this revision does not define.  A device skips it
    (its cursor still advances past it)."""

    KIND: ClassVar[str] = ""

    unknown_kind: str = attrs.field()
    """The ``k`` value received."""

    @property
    def kind(self) -> str:
        return self.unknown_kind


_EVENT_CLASSES: dict[str, type[SyncEvent]] = {
    cls.KIND: cls for cls in (MessageEvent, RecallEvent, StatusEvent)
}


def sync_event(v: Any) -> SyncEvent:
    """Validator: one event-log entry, parsed by its kind ``k``."""
    if type(v) is not dict:
        raise ValueError("an event must be a map")
    k = kind(v.get("k"))
    cls = _EVENT_CLASSES.get(k)
    if cls is None:
        return UnknownEvent(cursor=uint(64)(v.get("c")), unknown_kind=k)
    return cls.from_wire_untrusted(v)


def sync_events(v: Any) -> tuple[SyncEvent, ...]:
    """Validator: an array of at most :data:`MAX_PULL` entries."""
    if type(v) is not list or len(v) > MAX_PULL:
        raise ValueError(f"expected an array of at most {MAX_PULL} events")
    out = []
    for i, item in enumerate(v):
        try:
            out.append(sync_event(item))
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
    return tuple(out)


def event_size(event: SyncEvent) -> int:
    """Encoded size of one entry inside an array."""
    return len(encode_payload(event.to_wire()))


# --- packets -------------------------------------------------------------------


@register
@attrs.frozen(kw_only=True)
class EventsAvailable(Push):
    """Hint: the user's log has entries up to ``latest`` (§11.5.3.1).  Servers
    may coalesce these; a device whose cursor is below ``latest`` pulls."""

    TYPE: ClassVar[int] = 0x0210

    latest: int = wire("hd", uint(64))
    """The newest entry of the log."""


@register
@attrs.frozen(kw_only=True)
class EventPush(Push):
    """One log entry, pushed to save a round trip (§11.5.3.2).  Identical to
    what a Pull would return for that cursor."""

    TYPE: ClassVar[int] = 0x0211

    event: SyncEvent = wire("e", sync_event)
    """The entry."""


@register
@attrs.frozen(kw_only=True)
class Pull(Request):
    """Ask for the log entries after ``after`` (§11.5.4)."""

    TYPE: ClassVar[int] = 0x0212
    PRIORITY: ClassVar[Priority] = Priority.SYNC

    after: int = wire("af", uint(64))
    """The device's cursor: entries with a greater number are wanted."""
    limit: int = wire("n", uint_range(1, MAX_PULL), default=100)
    """Most entries wanted; the server may return fewer."""

    def result(self, events: Sequence[SyncEvent], *, head: int) -> PullResult:
        """The answer: the leading ``events`` (at most ``limit``) that fit in
        one payload; ``more`` is set while the page ends below ``head``."""

        def make(page: tuple[SyncEvent, ...]) -> PullResult:
            return PullResult(rid=self.rid, events=page, next_cursor=head, more=True, head=head)

        page = fill(make, events[: self.limit], item_size=event_size)
        next_cursor = page[-1].cursor if page else self.after
        return PullResult(
            rid=self.rid,
            events=page,
            next_cursor=next_cursor,
            more=next_cursor < head,
            head=head,
        )


@register
@attrs.frozen(kw_only=True)
class PullResult(Response):
    """A page of the log (§11.5.5)."""

    TYPE: ClassVar[int] = 0x0213
    PRIORITY: ClassVar[Priority] = Priority.SYNC

    events: tuple[SyncEvent, ...] = wire("ev", sync_events, converter=_tuple)
    """Entries after the requested cursor, ascending."""
    next_cursor: int = wire("nc", uint(64))
    """The cursor after applying this page: the last entry's number, or the
    request's ``after`` when the page is empty."""
    more: bool = wire("mo", boolean, default=False)
    """More entries follow ``next_cursor``: pull again."""
    head: int = wire("hd", uint(64))
    """The newest entry of the log when the page was read."""

    def _check_untrusted(self) -> None:
        previous = None
        for event in self.events:
            if previous is not None and event.cursor <= previous:
                raise ValueError("events must be in ascending cursor order")
            previous = event.cursor
        if previous is not None and self.next_cursor != previous:
            raise ValueError("next_cursor must be the last event's cursor")


@register
@attrs.frozen(kw_only=True)
class Delivered(Request, AnsweredByOk):
    """The device has applied every log entry up to ``cursor`` (§11.5.6).
    Answered with Ok."""

    TYPE: ClassVar[int] = 0x0214

    cursor: int = wire("c", uint(64))
    """The device's new cursor."""
