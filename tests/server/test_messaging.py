"""Sending 1:1 messages through the messaging service: durability-ordered
answers, fan-out to every device of both sides, idempotent retries, refusals
and a peer that stopped reading (real store, fake peers)."""

from __future__ import annotations

from pathlib import Path

import trio

from elink_protocol import Packet
from elink_protocol.app import (
    AppErrorCode,
    EventPush,
    EventsAvailable,
    Message,
    MessageAccepted,
    MessageEvent,
    Pull,
    PullResult,
    RequestFailed,
    SendMessage,
    text_content,
)
from elink_server.services import delivery
from tests.helpers.messaging import T0_MS, FakePeer, Kit, open_kit


def _send(kit: Kit, cm: str, text: str = "hi", **kwargs: object) -> SendMessage:
    fields: dict[str, object] = {"to": "bob", "kind": "text", "content": text_content(text)}
    fields.update(kwargs)
    return SendMessage(rid=kit.rid(), client_msg_id=cm, **fields)  # type: ignore[arg-type]


async def _four_devices(kit: Kit) -> tuple[FakePeer, FakePeer, FakePeer, FakePeer]:
    for name in ("alice", "bob", "carol"):
        await kit.user(name)
    return (
        await kit.device("alice", "alice-pc"),
        await kit.device("alice", "alice-phone"),
        await kit.device("bob", "bob-pc"),
        await kit.device("bob", "bob-phone"),
    )


async def test_two_users_on_several_devices_exchange_messages(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        a_pc, a_phone, b_pc, b_phone = await _four_devices(kit)
        answer = await kit.call(a_pc, _send(kit, "m1", "你好 bob"))
        assert isinstance(answer, MessageAccepted)
        assert (answer.conversation, answer.seq, answer.created_at_ms) == ("d:alice:bob", 1, T0_MS)
        assert not answer.duplicate and not answer.recipient_backlog_full
        # Every device of both sides, the sending one included, gets entry 1.
        for peer in (a_pc, a_phone, b_pc, b_phone):
            push = await peer.push(EventPush)
            assert isinstance(push.event, MessageEvent)
            assert push.event.cursor == 1
            message = push.event.message
            assert (message.msg_id, message.sender, message.sender_device) == (
                answer.msg_id,
                "alice",
                "alice-pc",
            )
            assert message.content == {"text": "你好 bob"}
        reply = await kit.call(b_phone, _send(kit, "r1", "hello alice", to="alice"))
        assert reply.seq == 2
        for peer in (a_pc, a_phone, b_pc, b_phone):
            push = await peer.push(EventPush)
            assert push.event.cursor == 2
            assert push.event.message.sender == "bob"
        # Carol is in neither conversation and heard nothing.
        carol = await kit.device("carol", "carol-pc")
        assert await carol.pushes() == []
        assert await a_pc.pushes() == []


async def test_retry_with_the_same_client_id_creates_nothing(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        a_pc, _, b_pc, _ = await _four_devices(kit)
        first = await kit.call(a_pc, _send(kit, "same", "one"))
        await b_pc.push(EventPush)
        kit.clock.ms += 5000
        retry = await kit.call(a_pc, _send(kit, "same", "a different text"))
        assert retry.duplicate
        assert (retry.msg_id, retry.seq, retry.created_at_ms) == (
            first.msg_id,
            first.seq,
            first.created_at_ms,
        )
        assert await b_pc.pushes() == []
        page = await kit.call(b_pc, Pull(rid=kit.rid(), after=0))
        assert isinstance(page, PullResult)
        assert [e.message.content for e in page.events] == [{"text": "one"}]


async def test_refusals(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        a_pc, *_ = await _four_devices(kit)
        cases = [
            (_send(kit, "x1", to="nobody"), AppErrorCode.NOT_FOUND),
            (_send(kit, "x2", to="", conversation="g:team"), AppErrorCode.NOT_FOUND),
            (_send(kit, "x3", to="", conversation="d:bob:carol"), AppErrorCode.PERMISSION_DENIED),
            (_send(kit, "x5", flags=0x4), AppErrorCode.UNSUPPORTED_CONTENT),
        ]
        for request, code in cases:
            answer = await kit.call(a_pc, request)
            assert isinstance(answer, RequestFailed), request
            assert answer.code == code, (request, answer)
        # Nothing was stored by any of them.
        assert await kit.ctx.store.list_conversations("alice") == ()
        # A connection that has not logged in is told so.
        stranger = FakePeer("stranger")
        answer = await kit.call(stranger, _send(kit, "x6"))
        assert answer.code == AppErrorCode.NOT_LOGGED_IN


async def test_file_assistant(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        a_pc, a_phone, b_pc, _ = await _four_devices(kit)
        answer = await kit.call(a_pc, _send(kit, "note", "buy milk", to="alice"))
        assert answer.conversation == "d:alice:alice"
        for peer in (a_pc, a_phone):
            assert (await peer.push(EventPush)).event.message.content == {"text": "buy milk"}
        assert await b_pc.pushes() == []


async def test_a_stalled_device_delays_nobody(tmp_path: Path) -> None:
    """bob's phone stops reading: alice's sends are still answered, bob's pc
    still gets every push, and the phone's outbox stays bounded: what did
    not fit is replaced by one EventsAvailable hint."""
    count = delivery.OUTBOX_CAPACITY + 20
    async with open_kit(tmp_path) as kit:
        a_pc, _, b_pc, b_phone = await _four_devices(kit)
        b_phone.stall = trio.Event()
        for i in range(count):
            answer = await kit.call(a_pc, _send(kit, f"m{i}", f"n{i}"))
            assert answer.seq == i + 1
        cursors = [p.event.cursor for p in await b_pc.pushes()]
        assert cursors == list(range(1, count + 1))
        b_phone.stall.set()
        got = await b_phone.pushes()
        assert isinstance(got[-1], EventsAvailable) and got[-1].latest == count
        pushed = [p.event.cursor for p in got[:-1]]
        # The first push was taken by the stalled send; the outbox held the
        # next OUTBOX_CAPACITY, in order, and the rest were dropped.
        assert pushed == list(range(1, delivery.OUTBOX_CAPACITY + 2))
        # A pull from the last applied entry brings the device up to date.
        page = await kit.call(b_phone, Pull(rid=kit.rid(), after=pushed[-1], limit=1000))
        assert page.next_cursor == count and not page.more


def _entry(cursor: int) -> MessageEvent:
    message = Message(
        msg_id=cursor,
        conversation="d:alice:bob",
        seq=cursor,
        sender="alice",
        sender_device="pc",
        client_msg_id=f"c{cursor}",
        kind="text",
        content=text_content("x"),
        created_at_ms=T0_MS,
        recalled_at_ms=None,
        flags=0,
    )
    return MessageEvent(cursor=cursor, message=message)


def _heads(packets: list[Packet]) -> list[tuple[str, int]]:
    return [
        ("push", p.event.cursor) if isinstance(p, EventPush) else ("hint", p.latest)
        for p in packets
        if isinstance(p, EventPush | EventsAvailable)
    ]


async def test_pushes_leave_in_log_order(tmp_path: Path) -> None:
    """Entries posted out of order (handlers of one group commit wake in any
    order) reach every device in log order; a gap that does not fill is
    replaced by one EventsAvailable, and the entry that comes too late is
    left to the pull."""
    async with open_kit(tmp_path) as kit, trio.open_nursery() as nursery:
        _, _, b_pc, b_phone = await _four_devices(kit)
        outboxes = delivery.Outboxes(kit.ctx.registry, nursery.start_soon)
        # The first entries seen for bob: released lowest first, one
        # scheduling round later.
        outboxes.push_entries([("bob", _entry(6)), ("bob", _entry(5))])
        outboxes.push_entries([("bob", _entry(7))])
        for peer in (b_pc, b_phone):
            assert _heads(await peer.pushes()) == [("push", 5), ("push", 6), ("push", 7)]
        # Known start: 9 waits for 8, which arrives in the same round.
        outboxes.push_entries([("bob", _entry(9))])
        outboxes.push_entries([("bob", _entry(8))])
        assert _heads(await b_pc.pushes()) == [("push", 8), ("push", 9)]
        # 11 waits for 10, which does not come within GAP_WAIT: a hint.
        outboxes.push_entries([("bob", _entry(12)), ("bob", _entry(11))])
        assert await b_pc.pushes() == []
        hint = await b_pc.push(EventsAvailable)  # after GAP_WAIT
        assert hint.latest == 12 and outboxes.gaps == 2  # one per device
        # 10 comes too late: not pushed (the device pulls it); 13 goes on.
        outboxes.push_entries([("bob", _entry(10)), ("bob", _entry(13))])
        assert _heads(await b_pc.pushes()) == [("push", 13)]
        assert _heads(await b_phone.pushes()) == [
            ("push", 8),
            ("push", 9),
            ("hint", 12),
            ("push", 13),
        ]
        assert outboxes.late == 2  # one per device
        nursery.cancel_scope.cancel()
