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
what it missed.
StatusUpdate notices dropped that way stay queryable with QueryStatus (and
read receipts are in the log as well).

The connection's own send queue is bounded too (``max_unacked_packets`` plus
64, :meth:`Peer.send_room`), and it also carries the answers to the device's
requests.  So the task pushes only while more than :data:`ANSWER_RESERVE`
slots are free: a device that stopped reading fills at most the rest with
pushes, and when it reads again its first request (typically a Pull) is
answered instead of closing the connection for a full queue.  Without room
the task waits until the connection makes progress (:meth:`Peer.wait_progress`:
it read acknowledgements and wrote), exactly as it waits for a slow write;
meanwhile the outbox fills and then drops (remembering).  Once the outbox is
drained, the hint is sent (again only when there is room), so it reaches the
device as soon as the connection can take it after what was held for it.
Since unacknowledged packets never exceed ``max_unacked_packets``, keeping
the reserve free in the queue also keeps it free in ``queued + unacked``
against the connection's total capacity.

An outbox's task exits when its connection is gone (``PeerGone``) or after
:data:`OUTBOX_IDLE` seconds without a packet, so idle sessions cost nothing
here and closed connections leave nothing behind.  Memory is bounded by
:data:`OUTBOX_CAPACITY` packets per connection that has pushes in flight.

Log order: pushes of one user's entries leave in cursor order.  Handlers
woken by the same group commit run in random order, so entry 6 may be posted
before entry 5; on a node of several workers, entries also arrive from the
other workers.  :meth:`Outboxes.push_entries` therefore passes each device's
entries through an ordering step of its connection: it remembers the highest
entry released and holds an entry until the one before it was released (so
an entry that arrives twice, by two routes, is pushed once).  A gap normally fills in
the same scheduling round (every handler of a commit posts right after it
wakes) or the next (a MarkRead posts after gathering its receipts), or when
the entry arrives from another worker; if the lowest gap does not fill
within :data:`GAP_WAIT` seconds, or more than :data:`MAX_HELD`
entries wait, the held entries are replaced by one EventsAvailable naming the
newest, and entries at or below a released one are not pushed (a device sees
the gap, or the hint, and pulls them, §11.5.3).  Where a connection's step
starts: a login starts it at the log head the login read
(:meth:`Outboxes.start`; the device pulls up to there), a resumption where
the old connection's stood (:meth:`Outboxes.resumed`, or from the worker
that handed the session over).  Otherwise (entries for a connection whose
start is not known) they are released by a task that runs in the next
scheduling round, when all entries of their commit have been posted, lowest
first.  The state lives as long as its connection.

Order: packets posted to one connection are sent in the order they were
posted.  A packet posted before the service awaits its own answer
(``peer.send(answer)``) is still written after that answer, because
``peer.send`` queues synchronously while the outbox task has not run yet.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable

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

from .context import SessionRegistry, Spawn, system_spawn

logger = structlog.get_logger("elink_server")

#: Packets one connection's outbox holds before further pushes are dropped
#: (and replaced by one EventsAvailable hint).
OUTBOX_CAPACITY = 256
#: Seconds an outbox task waits for a packet before it exits.
OUTBOX_IDLE = 30.0
#: Slots of a connection's send queue that pushes leave free for the answers
#: to the device's own requests (a device that was stalled and starts again
#: with a Pull must get its PullResult, not a Close for a full queue).
ANSWER_RESERVE = 64
#: Seconds a user's entry is held for a missing earlier entry before the
#: devices get an EventsAvailable instead (see "Log order" above).
GAP_WAIT = 0.5
#: Most entries held per user while waiting for a gap to fill (a MarkRead
#: page of MARK_READ_PAGE receipts posts its entries in any order).
MAX_HELD = 1024

__all__ = ["Outboxes", "Spawn", "message_entries", "message_view", "sync_event", "system_spawn"]


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
    __slots__ = ("dropped_head", "idle", "pending", "receive", "send")

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[tuple[Packet, int]](OUTBOX_CAPACITY)
        """Packets with the log entry each announces (0: none)."""
        self.dropped_head = 0
        """Highest log entry dropped since the last hint (0: none)."""
        self.pending = 0
        """Packets posted and not yet sent (or dropped)."""
        self.idle = trio.Event()
        """Set whenever nothing is pending (replaced when something is)."""
        self.idle.set()

    def dropped(self, head: int) -> None:
        self.dropped_head = max(self.dropped_head, head)
        self.settle()

    def posted(self) -> None:
        self.pending += 1
        self.settle()

    def done(self) -> None:
        self.pending -= 1
        self.settle()

    def settle(self) -> None:
        """Keep :attr:`idle` true to the counts."""
        if not self.pending and not self.dropped_head:
            self.idle.set()
        elif self.idle.is_set():
            self.idle = trio.Event()


class _Sequence:
    """The ordering step of one connection (see "Log order")."""

    __slots__ = ("drained", "held", "peer", "posted", "settling")

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        """The connection the entries go to (the new one after a resumption)."""
        self.posted: int | None = None
        """Highest entry released (pushed, or covered by a hint); None until
        a start is known or the first batch seen was settled."""
        self.held: dict[int, SyncEvent] = {}
        """Entries waiting for an earlier one, by cursor."""
        self.settling = False
        """A settle task is running for this connection."""
        self.drained = trio.Event()
        """Set when ``held`` becomes empty (replaced per settle)."""


class Outboxes:
    """One bounded outbox per connection with pushes in flight, and the
    ordering step of each connection that gets log entries (see the module
    docstring).  ``spawn`` starts the draining and settling tasks."""

    def __init__(self, registry: SessionRegistry, spawn: Spawn) -> None:
        self._registry = registry
        self._spawn = spawn
        self._boxes: dict[Peer, _Outbox] = {}
        # Weak: a connection's step goes with the connection.
        self._sequences: weakref.WeakKeyDictionary[Peer, _Sequence] = weakref.WeakKeyDictionary()
        self.gaps = 0
        """Gaps that did not fill in time, per device (an EventsAvailable
        went instead)."""
        self.late = 0
        """Entries not pushed to a device because a later entry or a hint
        went first."""
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
            box.send.send_nowait((packet, head))
        except trio.WouldBlock:
            self.dropped += 1
            box.dropped(head)
            return False
        box.posted()
        return True

    async def flush(self, peer: Peer) -> None:
        """Wait until ``peer``'s outbox has sent (or kept, for a closed
        connection: ``peer.undelivered``) everything posted to it, the hint
        for dropped entries included.  For a session handed over to another
        worker (the connection is closed, so this does not wait on the
        network)."""
        box = self._boxes.get(peer)
        while box is not None and not box.idle.is_set():
            await box.idle.wait()
            box = self._boxes.get(peer)

    # --- the ordering step ------------------------------------------------------------

    def start(self, peer: Peer, head: int) -> None:
        """``peer``'s device has (or will pull) every entry up to ``head``:
        push from the next one on, in order.  No effect once it started."""
        seq = self._sequence(peer)
        if seq.posted is None:
            seq.posted = head
            self._release(seq)

    def handed_over(self, peer: Peer) -> tuple[int | None, list[SyncEvent]]:
        """Where ``peer``'s step stands, for a resumption of its session on
        another worker: the highest entry released and the entries held
        (lowest first)."""
        seq = self._sequences.get(peer)
        if seq is None:
            return None, []
        return seq.posted, [seq.held[c] for c in sorted(seq.held)]

    def resumed(self, old: Peer, new: Peer) -> None:
        """``old``'s session goes on on ``new`` (same worker): so does its step."""
        seq = self._sequences.pop(old, None)
        if seq is not None:
            seq.peer = new
            self._sequences[new] = seq

    def push_entries(self, entries: Iterable[tuple[str, SyncEvent]]) -> None:
        """Push new log entries to every online device of their users, in
        log order (see "Log order" in the module docstring)."""
        for user, event in entries:
            for session in self._registry.devices(user):
                self.push_entry(session.peer, event)

    def push_entry(self, peer: Peer, event: SyncEvent) -> None:
        """Push one log entry to ``peer``, in log order, at most once."""
        seq = self._sequence(peer)
        if seq.posted is not None and event.cursor <= seq.posted:
            self.late += 1  # something later already went: the device pulls it
            return
        seq.held[event.cursor] = event
        self._release(seq)
        if len(seq.held) > MAX_HELD:
            self._give_up(seq)
        elif seq.held and not seq.settling:
            seq.settling = True
            self._spawn(functools.partial(self._settle, seq))

    def _sequence(self, peer: Peer) -> _Sequence:
        seq = self._sequences.get(peer)
        if seq is None:
            seq = self._sequences[peer] = _Sequence(peer)
        return seq

    def _release(self, seq: _Sequence) -> None:
        """Push the held entries that continue the released ones."""
        if seq.posted is None:
            return
        while (event := seq.held.pop(seq.posted + 1, None)) is not None:
            seq.posted = event.cursor
            self.post(seq.peer, EventPush(event=event), head=event.cursor)
        if not seq.held:
            seq.drained.set()

    def _give_up(self, seq: _Sequence) -> None:
        """A gap did not fill: tell the device to pull instead."""
        head = max(seq.held)
        seq.held.clear()
        seq.drained.set()
        seq.posted = head
        self.gaps += 1
        self.post(seq.peer, EventsAvailable(latest=head), head=head)

    async def _settle(self, seq: _Sequence) -> None:
        # Started by the first entry held; it first runs in the next
        # scheduling round, after every handler woken by the same group
        # commit has posted its entries.
        try:
            if seq.posted is None:
                # The first entries seen for this connection: the lowest starts.
                seq.posted = min(seq.held) - 1
                self._release(seq)
            # Give up when the lowest gap stays open for GAP_WAIT; gaps that
            # keep filling (entries interleaving from several workers) are
            # progress, not a loss.
            while seq.held:
                before = seq.posted
                seq.drained = trio.Event()
                with trio.move_on_after(GAP_WAIT):
                    await seq.drained.wait()
                if seq.held and seq.posted == before:
                    self._give_up(seq)
        finally:
            seq.settling = False

    def push_to_user(self, user: str, packet: Packet, *, exclude: Peer | None = None) -> None:
        """Push a live notice to every online device of ``user`` but
        ``exclude``."""
        for session in self._registry.devices(user):
            if session.peer is not exclude:
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
            box.pending = 0
            box.dropped_head = 0
            box.idle.set()

    async def _drain_until_idle(self, peer: Peer, box: _Outbox) -> None:
        while True:
            item: tuple[Packet, int] | None = None
            if not box.dropped_head:
                with trio.move_on_after(OUTBOX_IDLE):
                    item = await box.receive.receive()
                if item is None:
                    # Idle: leave.  The caller removes the box with no
                    # await in between, so a later post makes a new one.
                    return
            # The rest of the send queue is for the device's answers: wait
            # (the outbox fills meanwhile, then drops and remembers).
            while peer.send_room() <= ANSWER_RESERVE:
                await peer.wait_progress()
            if item is None:
                try:
                    item = box.receive.receive_nowait()
                except trio.WouldBlock:
                    # Drained: now the hint for what was dropped.
                    head, box.dropped_head = box.dropped_head, 0
                    await self._send(peer, box, EventsAvailable(latest=head), head)
                    box.settle()
                    continue
            try:
                await self._send(peer, box, *item)
            finally:
                box.done()

    async def _send(self, peer: Peer, box: _Outbox, packet: Packet, head: int) -> None:
        # No await between the room check and here (``peer.send`` queues
        # before it awaits), so the send queue cannot be full: still, a
        # LocalProtocolError is handled like a full outbox, not lost.
        try:
            await peer.send(packet)
        except LocalProtocolError:
            self.dropped += 1
            box.dropped(head)
        except PeerGone:
            # The packet is kept for a resumption (``peer.undelivered``, or
            # the connection's own resumption state).  While the session is
            # still bound (detached, resumable) the packets queued behind it
            # must be kept too, in order, or the resumed device would miss
            # them; once it ended, the rest is dropped.
            if self._registry.session_of(peer) is None:
                raise
