"""Getting pushes to devices without letting a slow device hold anyone up.

Theory of operation
-------------------
A service that changed a user's event log (a message, a recall, a read
receipt) or has a live notice for a sender (a StatusUpdate) must tell the
user's online devices, but it must not wait for them: the request that caused
the change is answered first, and a device whose socket is full (a phone on a
bad network) must not stall the sender's connection.

So every push goes through a per-connection **outbox**: a bounded Trio memory
channel drained by one task that awaits ``peer.send`` for each packet in
order.  :meth:`Outboxes.post` never blocks: it puts the packet in the outbox
(creating the outbox and its task on first use) or, when the outbox is full,
drops it.  Dropping is safe because every push of §11.5.3 is a hint (the log
is the truth): the outbox remembers the highest log entry it dropped and,
once it has drained, sends one EventsAvailable naming it, so the device pulls
what it missed.  StatusUpdate notices dropped that way stay queryable with
QueryStatus (and read receipts are in the log as well).

An outbox's task exits when its connection is gone (``PeerGone``) or after
:data:`OUTBOX_IDLE` seconds without a packet, so idle sessions cost nothing
here and closed connections leave nothing behind.  Memory is bounded by
:data:`OUTBOX_CAPACITY` packets per connection that has pushes in flight.

Order: packets posted to one connection are sent in the order they were
posted.  A packet posted before the service awaits its own answer
(``peer.send(answer)``) is still written after that answer, because
``peer.send`` queues synchronously while the outbox task has not run yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
import trio

from elink_protocol import LocalProtocolError, Packet
from elink_protocol.app import (
    EventPush,
    EventsAvailable,
    Message,
    MessageEvent,
    RecallEvent,
    ReceiptKind,
    StatusEvent,
    SyncEvent,
)
from elink_server.peer import Peer, PeerGone
from elink_server.storage import EventKind, EventRecord, EventRef, MessageRecord

from .context import SessionRegistry

logger = structlog.get_logger("elink_server")

#: Packets one connection's outbox holds before further pushes are dropped
#: (and replaced by one EventsAvailable hint).
OUTBOX_CAPACITY = 256
#: Seconds an outbox task waits for a packet before it exits.
OUTBOX_IDLE = 30.0

Spawn = Callable[[Callable[[], Awaitable[None]]], None]
"""Starts a background task (``nursery.start_soon`` without arguments)."""


# --- store records -> wire records -------------------------------------------------


def to_ms(seconds: float) -> int:
    """Store times (float seconds) as wire times (integer milliseconds)."""
    return round(seconds * 1000)


def message_view(record: MessageRecord) -> Message:
    """A stored message as users see it (§11.4.4)."""
    return Message(
        msg_id=record.msg_id,
        conversation=record.conversation,
        seq=record.seq,
        sender=record.sender,
        sender_device=record.sender_device,
        client_msg_id=record.client_msg_id,
        kind=str(record.kind),
        content=None if record.recalled else record.content,
        created_at_ms=to_ms(record.created_at),
        recalled_at_ms=None if record.recalled_at is None else to_ms(record.recalled_at),
        flags=int(record.flags),
    )


def sync_event(record: EventRecord) -> SyncEvent:
    """A log entry as Pull and EventPush carry it (§11.5.2)."""
    if record.kind is EventKind.MESSAGE:
        assert record.message is not None
        return MessageEvent(cursor=record.user_seq, message=message_view(record.message))
    if record.kind is EventKind.RECALL:
        return RecallEvent(
            cursor=record.user_seq,
            conversation=record.conversation,
            msg_id=record.msg_id,
            by=record.actor,
            at_ms=to_ms(record.created_at),
        )
    return StatusEvent(
        cursor=record.user_seq,
        conversation=record.conversation,
        msg_id=record.msg_id,
        status=ReceiptKind.READ,
        by=record.actor,
        at_ms=to_ms(record.created_at),
    )


def message_entries(
    refs: Iterable[EventRef], message: MessageRecord
) -> list[tuple[str, SyncEvent]]:
    """The ``message`` entries an append created, per user."""
    view = message_view(message)
    return [(ref.user, MessageEvent(cursor=ref.user_seq, message=view)) for ref in refs]


# --- outboxes ----------------------------------------------------------------------


class _Outbox:
    __slots__ = ("dropped_head", "receive", "send")

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Packet](OUTBOX_CAPACITY)
        self.dropped_head = 0
        """Highest log entry dropped since the last hint (0: none)."""


class Outboxes:
    """One bounded outbox per connection with pushes in flight (see the
    module docstring).  ``spawn`` starts the draining tasks."""

    def __init__(self, registry: SessionRegistry, spawn: Spawn) -> None:
        self._registry = registry
        self._spawn = spawn
        self._boxes: dict[Peer, _Outbox] = {}
        self.dropped = 0
        """Packets dropped because an outbox was full (for statistics)."""

    def __len__(self) -> int:
        """Outboxes alive now."""
        return len(self._boxes)

    def post(self, peer: Peer, packet: Packet, *, head: int = 0) -> bool:
        """Queue ``packet`` for ``peer`` without blocking.  ``head``: the log
        entry the packet announces, if any (remembered when dropped).
        Returns False if it was dropped."""
        box = self._boxes.get(peer)
        if box is None:
            box = self._boxes[peer] = _Outbox()
            self._spawn(lambda: self._drain(peer, box))
        try:
            box.send.send_nowait(packet)
        except trio.WouldBlock:
            self.dropped += 1
            box.dropped_head = max(box.dropped_head, head)
            return False
        return True

    def push_entries(self, entries: Iterable[tuple[str, SyncEvent]]) -> None:
        """Push new log entries to every online device of their users."""
        for user, event in entries:
            packet = EventPush(event=event)
            for session in self._registry.devices(user):
                self.post(session.peer, packet, head=event.cursor)

    def push_to_user(self, user: str, packet: Packet) -> None:
        """Push a live notice to every online device of ``user``."""
        for session in self._registry.devices(user):
            self.post(session.peer, packet)

    async def _drain(self, peer: Peer, box: _Outbox) -> None:
        try:
            await self._drain_until_idle(peer, box)
        except PeerGone:
            pass
        except Exception:  # never lost silently; only this outbox stops
            logger.exception("outbox failed", conn=getattr(peer, "number", None))
        finally:
            if self._boxes.get(peer) is box:
                del self._boxes[peer]
            box.send.close()
            box.receive.close()

    async def _drain_until_idle(self, peer: Peer, box: _Outbox) -> None:
        while True:
            packet: Packet | None
            try:
                packet = box.receive.receive_nowait()
            except trio.WouldBlock:
                if box.dropped_head:
                    packet = EventsAvailable(latest=box.dropped_head)
                    box.dropped_head = 0
                else:
                    packet = None
                    with trio.move_on_after(OUTBOX_IDLE):
                        packet = await box.receive.receive()
                    if packet is None:
                        # Idle: leave.  The caller removes the box with no
                        # await in between, so a later post makes a new one.
                        return
            await self._send(peer, packet)

    async def _send(self, peer: Peer, packet: Packet) -> None:
        # LocalProtocolError: the connection's own send queue is full, the
        # device is far behind; like a full outbox, drop the hint (it pulls).
        try:
            await peer.send(packet)
        except LocalProtocolError:
            pass
        except PeerGone:
            # The packet is kept for a resumption (``peer.undelivered``, or
            # the connection's own resumption state).  While the session is
            # still bound (detached, resumable) the packets queued behind it
            # must be kept too, in order, or the resumed device would miss
            # them; once it ended, the rest is dropped.
            if self._registry.session_of(peer) is None:
                raise


def system_spawn(fn: Callable[[], Awaitable[Any]]) -> None:
    """Fallback :data:`Spawn` when the wiring gave no nursery."""
    trio.lowlevel.spawn_system_task(fn)
