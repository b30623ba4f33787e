"""Unit tests of the client's event-log state machine (elink_sdk/_inbox.py).

The Inbox does no IO, so these tests play the server by hand: pushes in and
out of order, pages (also stale ones), a log restored from a backup, live
notices, and an application that reads slowly.  A Hypothesis state machine
checks that whatever the interleaving, every event reaches the application
exactly once and in log order, and the counters keep their order."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from elink_protocol.app import (
    DeviceKind,
    Message,
    MessageEvent,
    PresenceStatus,
    PullResult,
    RecallEvent,
    ReceiptKind,
    StatusEvent,
    SyncEvent,
)
from elink_protocol.app.sync import UnknownEvent
from elink_sdk import (
    Disconnected,
    Event,
    MessageDelivered,
    MessageRead,
    MessageRecalled,
    MessageReceived,
    PresenceChanged,
)
from elink_sdk._inbox import PULL_PAGE, Inbox

ME = "alice"
MY_DEVICE = "alice-dev"
CONVERSATION = "d:alice:bob"


# ---------------------------------------------------------------- log entries


def message(
    cursor: int, *, sender: str = "bob", device: str = "bob-dev", msg_id: int = 0
) -> MessageEvent:
    """A ``message`` entry; its msg_id defaults to ``1000 + cursor``."""
    return MessageEvent(
        cursor=cursor,
        message=Message(
            msg_id=msg_id or 1000 + cursor,
            conversation=CONVERSATION,
            seq=cursor,
            sender=sender,
            sender_device=device,
            client_msg_id=f"cm-{cursor}",
            kind="text",
            content={"text": f"text {cursor}"},
            created_at_ms=1_000_000 + cursor,
        ),
    )


def recall(cursor: int, msg_id: int) -> RecallEvent:
    return RecallEvent(
        cursor=cursor, conversation=CONVERSATION, msg_id=msg_id, by="bob", at_ms=2_000_000
    )


def receipt(cursor: int, msg_id: int, kind: ReceiptKind) -> StatusEvent:
    device = "bob-dev" if kind is ReceiptKind.DELIVERED else ""
    return StatusEvent(
        cursor=cursor,
        conversation=CONVERSATION,
        msg_id=msg_id,
        status=kind,
        by="bob",
        device=device,
        at_ms=3_000_000,
    )


def page(entries: Iterable[SyncEvent], *, after: int, head: int) -> PullResult:
    events = tuple(entries)
    next_cursor = events[-1].cursor if events else after
    return PullResult(
        rid=1, events=events, next_cursor=next_cursor, more=next_cursor < head, head=head
    )


def presence(note: str = "") -> PresenceChanged:
    return PresenceChanged(
        user="bob",
        device="bob-dev",
        device_kind=DeviceKind.PC,
        status=PresenceStatus.BUSY,
        aggregated=PresenceStatus.BUSY,
        note=note,
        at_ms=0,
    )


def inbox(*, capacity: int = 100, cursor: int = 0, pending: int = 0) -> Inbox:
    box = Inbox(user=ME, device_id=MY_DEVICE, capacity=capacity)
    box.start(cursor, pending)
    return box


def drain(box: Inbox) -> list[Event]:
    """Every buffered event, as the application would take them."""
    out = []
    while (event := box.take()) is not None:
        out.append(event)
    return out


def cursors(events: Iterable[Event]) -> list[int]:
    return [event.cursor for event in events]  # type: ignore[attr-defined]


def assert_ordered(box: Inbox) -> None:
    assert 0 <= box.confirmed <= box.consumed <= box.applied <= box.head, vars(box)


# ---------------------------------------------------------------- order


def test_login_cursor_and_backlog_decide_the_first_pull() -> None:
    box = inbox(cursor=7, pending=3)
    assert (box.applied, box.consumed, box.confirmed, box.head) == (7, 7, 7, 10)
    assert box.wants_pull and not box.wants_confirm
    assert box.pull_limit == min(100, PULL_PAGE)

    idle = inbox(cursor=7, pending=0)
    assert not idle.wants_pull


def test_nothing_is_pulled_or_applied_before_the_login() -> None:
    box = Inbox(user=ME, device_id=MY_DEVICE, capacity=10)
    box.note_head(5)
    assert not box.wants_pull
    assert not box.offer_push(message(1))
    assert box.applied == 0 and box.take() is None


def test_pushes_in_order_become_events_in_order() -> None:
    box = inbox()
    for cursor in (1, 2, 3):
        assert box.offer_push(message(cursor)) is False
    events = drain(box)
    assert [type(e) for e in events] == [MessageReceived] * 3
    assert cursors(events) == [1, 2, 3]
    assert [e.text for e in events] == ["text 1", "text 2", "text 3"]  # type: ignore[attr-defined]
    assert box.applied == box.head == 3


def test_an_event_counts_as_consumed_once_handed_over() -> None:
    box = inbox()
    for cursor in (1, 2):
        box.offer_push(message(cursor))
    assert not box.wants_confirm
    assert box.take() is not None
    # Confirmed promptly: its sender waits for the delivery receipt.
    assert box.consumed == 1 and box.wants_confirm
    box.confirmed_up_to(1)
    assert not box.wants_confirm
    box.take()
    assert box.consumed == 2 and box.wants_confirm
    assert_ordered(box)


def test_a_message_handed_over_is_a_receipt_due() -> None:
    box = inbox()
    box.offer_push(message(1))
    box.offer_push(receipt(2, 1001, ReceiptKind.READ))
    box.take()  # bob waits for the delivery receipt: confirm promptly
    assert box.receipt_due
    box.confirmed_up_to(1)
    assert not box.receipt_due
    box.take()  # a read receipt: nobody waits for a receipt of it
    assert not box.receipt_due and box.wants_confirm


def test_a_push_ahead_of_the_cursor_is_not_applied_and_asks_for_a_pull() -> None:
    box = inbox()
    box.offer_push(message(1))
    assert box.offer_push(message(3)) is True  # 2 is missing
    assert box.applied == 1 and box.head == 3 and box.wants_pull
    box.apply_page(page([message(2), message(3)], after=1, head=3))
    assert cursors(drain(box)) == [1, 2, 3]
    assert not box.wants_pull


def test_a_push_at_or_behind_the_cursor_is_a_duplicate() -> None:
    box = inbox()
    for cursor in (1, 2):
        box.offer_push(message(cursor))
    assert box.offer_push(message(1)) is False
    assert box.offer_push(message(2)) is False
    assert cursors(drain(box)) == [1, 2]
    assert box.applied == 2


def test_a_stale_page_applies_only_its_new_part() -> None:
    box = inbox(pending=4)
    box.offer_push(message(1))
    box.offer_push(message(2))
    # The answer to a Pull sent at cursor 0 arrives after the pushes.
    box.apply_page(page([message(c) for c in (1, 2, 3, 4)], after=0, head=4))
    assert cursors(drain(box)) == [1, 2, 3, 4]


def test_a_page_with_a_gap_stops_at_the_gap() -> None:
    box = inbox(pending=4)
    box.apply_page(page([message(1), message(3), message(4)], after=0, head=4))
    assert box.applied == 1 and box.wants_pull
    assert cursors(drain(box)) == [1]


def test_every_kind_of_entry_becomes_its_event() -> None:
    box = inbox()
    box.apply_page(
        page(
            [
                message(1),
                recall(2, msg_id=1001),
                receipt(3, 1001, ReceiptKind.READ),
                receipt(4, 1001, ReceiptKind.DELIVERED),
            ],
            after=0,
            head=4,
        )
    )
    received, recalled, read, delivered = drain(box)
    assert isinstance(received, MessageReceived) and received.sender == "bob"
    assert received.conversation == CONVERSATION
    assert recalled == MessageRecalled(
        conversation=CONVERSATION, msg_id=1001, by="bob", at_ms=2_000_000, cursor=2
    )
    assert read == MessageRead(
        conversation=CONVERSATION, msg_id=1001, reader="bob", at_ms=3_000_000, cursor=3
    )
    assert delivered == MessageDelivered(
        conversation=CONVERSATION, msg_id=1001, recipient="bob", device="bob-dev", at_ms=3_000_000
    )


# ---------------------------------------------------------------- skipped entries


def test_own_sends_from_this_device_are_skipped_but_counted() -> None:
    box = inbox()
    box.offer_push(message(1, sender=ME, device=MY_DEVICE))
    # Nothing for the application and nothing before it: finished at once.
    assert box.take() is None
    assert (box.applied, box.consumed) == (1, 1) and box.wants_confirm


def test_own_sends_from_another_device_are_received() -> None:
    box = inbox()
    box.offer_push(message(1, sender=ME, device="alice-phone"))
    (event,) = drain(box)
    assert isinstance(event, MessageReceived)
    assert event.message.sender_device == "alice-phone"


def test_a_skipped_entry_behind_an_unread_event_waits_its_turn() -> None:
    box = inbox()
    box.offer_push(message(1))
    box.offer_push(message(2, sender=ME, device=MY_DEVICE))
    box.offer_push(UnknownEvent(cursor=3, unknown_kind="poll-vote"))
    assert box.consumed == 0  # 2 and 3 are not finished before 1 is
    assert cursors(drain(box)) == [1]
    assert box.consumed == 3 and box.applied == 3
    assert_ordered(box)


# ---------------------------------------------------------------- backpressure


def test_the_buffer_never_holds_more_log_events_than_its_capacity() -> None:
    box = inbox(capacity=3, pending=10)
    assert box.pull_limit == 3
    box.apply_page(page([message(c) for c in (1, 2, 3)], after=0, head=10))
    assert box.room == 0 and not box.wants_pull
    assert box.offer_push(message(4)) is False  # no room: left on the server
    assert box.applied == 3 and box.head == 10 and len(box) == 3
    box.take()
    assert box.room == 1 and box.wants_pull and box.pull_limit == 1
    box.offer_push(message(4))
    assert box.applied == 4 and box.room == 0


def test_a_slow_reader_loses_nothing() -> None:
    box = inbox(capacity=4)
    log = [message(c) for c in range(1, 31)]
    for entry in log:  # the server pushes all of them; most find no room
        box.offer_push(entry)
    taken: list[Event] = []
    while box.applied < len(log) or len(box):
        if box.wants_pull:
            start = box.applied
            box.apply_page(page(log[start : start + box.pull_limit], after=start, head=len(log)))
        assert box.room >= 0
        event = box.take()
        assert event is not None
        taken.append(event)
    assert cursors(taken) == list(range(1, 31))


def test_live_notices_are_dropped_and_counted_past_twice_the_capacity() -> None:
    box = inbox(capacity=2)
    for n in range(6):
        box.add_live(presence(note=str(n)))
    assert len(box) == 4 and box.dropped_live == 2
    notes = [e.note for e in drain(box)]  # type: ignore[attr-defined]
    assert notes == ["0", "1", "2", "3"]  # the oldest are kept, in order


def test_live_notices_keep_their_place_among_log_events() -> None:
    box = inbox()
    box.offer_push(message(1))
    box.add_live(Disconnected(reason="lost"))
    box.offer_push(message(2))
    events = drain(box)
    assert [type(e) for e in events] == [MessageReceived, Disconnected, MessageReceived]
    assert box.room == box.capacity  # live notices take no room from the log


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Inbox(user=ME, device_id=MY_DEVICE, capacity=0)


# ---------------------------------------------------------------- logins and resets


def test_a_later_login_follows_a_cursor_another_client_moved() -> None:
    box = inbox(cursor=5)
    box.start(9, 2)  # the same device id confirmed up to 9 elsewhere
    assert (box.applied, box.consumed, box.head) == (9, 9, 11)
    box.start(3, 0)  # a cursor behind ours changes nothing
    assert box.applied == 9
    assert_ordered(box)


def test_reset_resynchronises_from_zero_and_skips_what_was_seen() -> None:
    box = inbox()
    box.apply_page(page([message(1), message(2), recall(3, 1001)], after=0, head=3))
    assert len(drain(box)) == 3
    box.confirmed_up_to(box.consumed)
    box.reset()  # CURSOR_INVALID: the log was restored from an older backup
    assert (box.head, box.applied, box.consumed, box.confirmed) == (0, 0, 0, 0)
    # The restored log has message 1 and a new entry at 2; message 2 and the
    # recall were lost with the backup, and are not handed out again.
    box.apply_page(page([message(1), message(2, msg_id=2002)], after=0, head=2))
    events = drain(box)
    assert [e.message.msg_id for e in events] == [2002]  # type: ignore[attr-defined]
    assert box.applied == 2
    assert_ordered(box)


def test_reset_with_events_still_buffered_keeps_the_counters_in_order() -> None:
    box = inbox()
    for cursor in range(1, 6):
        box.offer_push(message(cursor))
    assert box.take() is not None  # the application is slow: 2..5 are buffered
    box.reset()
    box.apply_page(page([message(c) for c in (1, 2, 3)], after=0, head=3))
    seen = []
    while (event := box.take()) is not None:
        seen.append(event.message.msg_id)  # type: ignore[attr-defined]
        assert_ordered(box)
    assert seen == [1002, 1003, 1004, 1005]


def test_reset_asks_for_a_pull_from_zero() -> None:
    box = inbox()
    box.apply_page(page([message(1), message(2)], after=0, head=2))
    drain(box)
    box.reset()
    assert box.wants_pull


# ---------------------------------------------------------------- the state machine


def expected_event(entry: SyncEvent) -> bool:
    """Whether the application sees an event for ``entry``."""
    if isinstance(entry, MessageEvent):
        return not (entry.message.sender == ME and entry.message.sender_device == MY_DEVICE)
    return not isinstance(entry, UnknownEvent)


entry_kinds = st.sampled_from(["theirs", "mine-here", "mine-elsewhere", "read", "unknown"])


class InboxMachine(RuleBasedStateMachine):
    """A server log that grows, lossy and reordered pushes, one Pull at a
    time whose answer may come late, a reader of any speed, Delivered
    answers, live notices.  The application must see each log event once,
    in order, and the buffer must respect its capacity."""

    @initialize(capacity=st.integers(1, 6))
    def setup(self, capacity: int) -> None:
        self.box = inbox(capacity=capacity)
        self.log: list[SyncEvent] = []
        self.pull: tuple[int, int] | None = None
        """An outstanding Pull: (after, limit)."""
        self.taken: list[int] = []
        self.live_sent = 0
        self.live_taken = 0

    def _entry(self, kind: str) -> SyncEvent:
        cursor = len(self.log) + 1
        if kind == "mine-here":
            return message(cursor, sender=ME, device=MY_DEVICE)
        if kind == "mine-elsewhere":
            return message(cursor, sender=ME, device="alice-phone")
        if kind == "read":
            return receipt(cursor, 1000 + cursor, ReceiptKind.READ)
        if kind == "unknown":
            return UnknownEvent(cursor=cursor, unknown_kind="x-future")
        return message(cursor)

    @rule(kind=entry_kinds, pushed=st.booleans())
    def server_appends(self, kind: str, pushed: bool) -> None:
        entry = self._entry(kind)
        self.log.append(entry)
        if pushed:
            self.box.offer_push(entry)
        else:
            self.box.note_head(entry.cursor)  # EventsAvailable

    @precondition(lambda self: self.log)
    @rule(data=st.data())
    def server_pushes_again(self, data: st.DataObject) -> None:
        """A late or repeated push of any entry."""
        entry = data.draw(st.sampled_from(self.log))
        self.box.offer_push(entry)

    @precondition(lambda self: self.pull is None and self.box.wants_pull)
    @rule()
    def client_pulls(self) -> None:
        self.pull = (self.box.applied, self.box.pull_limit)

    @precondition(lambda self: self.pull is not None)
    @rule()
    def server_answers_the_pull(self) -> None:
        assert self.pull is not None
        after, limit = self.pull
        self.pull = None
        self.box.apply_page(page(self.log[after : after + limit], after=after, head=len(self.log)))

    @rule(count=st.integers(1, 4))
    def application_takes(self, count: int) -> None:
        for _ in range(count):
            event = self.box.take()
            if event is None:
                return
            if isinstance(event, PresenceChanged):
                self.live_taken += 1
            else:
                self.taken.append(event.cursor)  # type: ignore[attr-defined]

    @rule()
    def live_notice(self) -> None:
        before = self.box.dropped_live
        self.box.add_live(presence())
        if self.box.dropped_live == before:
            self.live_sent += 1

    @precondition(lambda self: self.box.wants_confirm)
    @rule()
    def server_confirms(self) -> None:
        self.box.confirmed_up_to(self.box.consumed)

    @invariant()
    def counters_are_ordered(self) -> None:
        assert_ordered(self.box)
        assert self.box.head <= len(self.log)

    @invariant()
    def log_events_fit_in_the_buffer(self) -> None:
        assert self.box.room >= 0

    @invariant()
    def events_come_once_in_order(self) -> None:
        expected = [e.cursor for e in self.log if expected_event(e)]
        assert self.taken == expected[: len(self.taken)]

    def teardown(self) -> None:
        """Whatever happened, the reader eventually gets everything."""
        if not hasattr(self, "box"):
            return
        for _ in range(10 * len(self.log) + 10):
            if self.pull is not None:
                self.server_answers_the_pull()
            elif self.box.wants_pull:
                self.client_pulls()
            elif len(self.box) == 0 and self.box.applied == len(self.log):
                break
            self.application_takes(4)
        assert self.taken == [e.cursor for e in self.log if expected_event(e)]
        assert self.live_taken == self.live_sent
        assert self.box.consumed == self.box.applied == len(self.log)


InboxMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_inbox_machine = InboxMachine.TestCase
