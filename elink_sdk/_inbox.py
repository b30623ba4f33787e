"""The client's view of its event log (docs/protocol.md §11.5): which entries
it applied, which the application consumed, which the server has been told
about, and the bounded buffer of events waiting for the application.

Theory of operation
-------------------
Four numbers, always ``confirmed <= consumed <= applied <= head``:

* ``head``: the newest entry the server said exists (LoginOk, EventsAvailable,
  PullResult, a push from further ahead);
* ``applied``: the last entry turned into an event (or skipped) and buffered;
  entries are applied strictly in order, so each exactly once;
* ``consumed``: the last entry handed to the application (or skipped
  because there was nothing to hand over: this device's own messages,
  kinds this revision does not know);
* ``confirmed``: the last cursor the server acknowledged (Delivered).

The client pulls while ``head > applied`` and the buffer has room; pushes
are applied only when they are the next entry and there is room, otherwise
they only move ``head``.  So the buffer never exceeds its capacity, however
far behind the application is, and nothing is lost: entries not applied stay
on the server.  Live notices (receipts, presence, connection state) share the
buffer in arrival order; past the capacity they are dropped and counted.

This module does no IO: the client feeds it packets and acts on
:attr:`wants_pull` and :attr:`wants_confirm`.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from elink_protocol.app import (
    MessageEvent,
    PullResult,
    RecallEvent,
    ReceiptKind,
    StatusEvent,
    SyncEvent,
)

from .events import Event, MessageDelivered, MessageRead, MessageRecalled, MessageReceived

#: Entries asked for per Pull at most (the spec allows up to 1000).
PULL_PAGE = 200

#: Keys of recently applied entries kept to recognise them again after the
#: server's log was restored from a backup (CURSOR_INVALID, §11.5.5).
SEEN_KEYS = 4096


class Inbox:
    """The log-applying state machine of one client.  See the module docstring."""

    def __init__(self, *, user: str, device_id: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.user = user
        self.device_id = device_id
        self.capacity = capacity
        self.head = 0
        self.applied = 0
        self.consumed = 0
        self.confirmed = 0
        self.started = False
        self.resync = False
        """After a reset: pull from 0 now, whatever ``head`` says."""
        self.receipt_due = False
        """A message from someone else was handed over and not yet confirmed:
        its sender waits for the delivery receipt, so confirm promptly."""
        self.dropped_live = 0
        """Live notices dropped because the buffer was full."""
        self._items: deque[tuple[int | None, Event | None]] = deque()
        self._log_items = 0
        self._seen: OrderedDict[tuple[object, ...], None] = OrderedDict()

    # ----------------------------------------------------------- the session

    def start(self, server_cursor: int, pending: int) -> None:
        """A login succeeded: the server stored ``server_cursor`` for this
        device and has ``pending`` entries after it."""
        if not self.started:
            self.applied = self.consumed = self.confirmed = server_cursor
            self.started = True
        elif server_cursor > self.applied:
            # Another client with this device id confirmed further: follow it.
            self.applied = self.consumed = server_cursor
        self.confirmed = max(min(self.confirmed, self.consumed), 0)
        self.head = max(self.head, server_cursor + pending, self.applied)

    def reset(self) -> None:
        """CURSOR_INVALID: the server's log is behind our cursor (restored from
        a backup).  Start again from 0; entries seen before are recognised by
        their keys and skipped."""
        self.head = self.applied = self.consumed = self.confirmed = 0
        self.resync = True
        # Events still buffered stay for the application, but no longer
        # count as log entries: their cursors belong to the old log.
        self._items = deque((None, event) for _, event in self._items if event is not None)
        self._log_items = 0

    # ------------------------------------------------------------ from the server

    @property
    def room(self) -> int:
        return self.capacity - self._log_items

    @property
    def wants_pull(self) -> bool:
        return self.started and (self.resync or self.head > self.applied) and self.room > 0

    @property
    def pull_limit(self) -> int:
        return max(1, min(self.room, PULL_PAGE))

    @property
    def wants_confirm(self) -> bool:
        return self.consumed > self.confirmed

    def note_head(self, head: int) -> None:
        self.head = max(self.head, head)

    def offer_push(self, entry: SyncEvent) -> bool:
        """A pushed entry: applied if it is the next one and there is room.
        Returns True when the caller should pull."""
        self.note_head(entry.cursor)
        if entry.cursor == self.applied + 1 and self.room > 0 and self.started:
            self._apply(entry)
            return False
        return self.wants_pull

    def apply_page(self, page: PullResult) -> None:
        """A PullResult.  A page for an older cursor (pushes moved us on
        meanwhile) applies only its new part."""
        self.note_head(page.head)
        self.resync = False
        for entry in page.events:
            if entry.cursor <= self.applied:
                continue
            if entry.cursor != self.applied + 1:
                break  # a gap: a server bug or a page we cannot use; pull again
            self._apply(entry)

    def confirmed_up_to(self, cursor: int) -> None:
        self.confirmed = max(self.confirmed, cursor)
        if self.confirmed >= self.consumed:
            self.receipt_due = False

    def _apply(self, entry: SyncEvent) -> None:
        self.applied = entry.cursor
        key = _key(entry)
        event: Event | None = None
        if key is not None and key in self._seen:
            self._seen.move_to_end(key)
        else:
            if key is not None:
                self._seen[key] = None
                if len(self._seen) > SEEN_KEYS:
                    self._seen.popitem(last=False)
            event = self._event_for(entry)
        if event is None and not self._items:
            # Nothing for the application and nothing before it: done at once.
            self.consumed = entry.cursor
            return
        self._items.append((entry.cursor, event))
        self._log_items += 1

    def _event_for(self, entry: SyncEvent) -> Event | None:
        if isinstance(entry, MessageEvent):
            message = entry.message
            if message.sender == self.user and message.sender_device == self.device_id:
                return None  # our own send: the caller already has its answer
            return MessageReceived(message=message, cursor=entry.cursor)
        if isinstance(entry, RecallEvent):
            return MessageRecalled(
                conversation=entry.conversation,
                msg_id=entry.msg_id,
                by=entry.by,
                at_ms=entry.at_ms,
                cursor=entry.cursor,
            )
        if isinstance(entry, StatusEvent):
            if entry.status is ReceiptKind.READ:
                return MessageRead(
                    conversation=entry.conversation,
                    msg_id=entry.msg_id,
                    reader=entry.by,
                    at_ms=entry.at_ms,
                    cursor=entry.cursor,
                )
            return MessageDelivered(
                conversation=entry.conversation,
                msg_id=entry.msg_id,
                recipient=entry.by,
                device=entry.device,
                at_ms=entry.at_ms,
            )
        return None  # a kind this revision does not know: skipped (§11.5.2)

    # ------------------------------------------------------------ live notices

    def add_live(self, event: Event) -> None:
        if len(self._items) >= 2 * self.capacity:
            self.dropped_live += 1
            return
        self._items.append((None, event))

    # ------------------------------------------------------------ to the app

    def take(self) -> Event | None:
        """The next event for the application, or None when none is buffered.
        The log entries it passes count as consumed."""
        while self._items:
            cursor, event = self._items.popleft()
            if cursor is not None:
                self._log_items -= 1
                self.consumed = cursor
                if isinstance(event, MessageReceived):
                    self.receipt_due = True
            if event is not None:
                return event
        return None

    def __len__(self) -> int:
        return len(self._items)


def _key(entry: SyncEvent) -> tuple[object, ...] | None:
    """What makes an entry the same entry again after a log restore."""
    if isinstance(entry, MessageEvent):
        return ("message", entry.message.msg_id)
    if isinstance(entry, RecallEvent):
        return ("recall", entry.msg_id)
    if isinstance(entry, StatusEvent):
        return ("status", entry.msg_id, entry.status.value, entry.by, entry.device)
    return None
