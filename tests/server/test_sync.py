"""Offline delivery, pull paging, Delivered as the delivery receipt, read
receipts and message status (real store, fake peers)."""

from __future__ import annotations

from pathlib import Path

from elink_protocol.app import (
    AppErrorCode,
    Delivered,
    DeliveryState,
    EventPush,
    EventsAvailable,
    MarkRead,
    MessageEvent,
    MessageStatus,
    Ok,
    Pull,
    PullResult,
    QueryStatus,
    ReceiptKind,
    RequestFailed,
    SendMessage,
    StatusEvent,
    StatusUpdate,
    text_content,
)
from tests.helpers.messaging import Kit, open_kit


def _send(kit: Kit, cm: str, to: str, text: str) -> SendMessage:
    return SendMessage(
        rid=kit.rid(), client_msg_id=cm, to=to, kind="text", content=text_content(text)
    )


async def test_offline_messages_are_pulled_in_pages_and_confirmed(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        await kit.user("alice")
        await kit.user("bob")
        a_pc = await kit.device("alice", "alice-pc")
        a_phone = await kit.device("alice", "alice-phone")
        b_pc = await kit.device("bob", "bob-pc", online=False)
        sent = [await kit.call(a_pc, _send(kit, f"m{i}", "bob", f"text {i}")) for i in range(5)]
        # bob logs in later and pulls in pages of 2.
        kit.bind(b_pc, "bob", "bob-pc")
        cursor, seen = 0, []
        while True:
            page = await kit.call(b_pc, Pull(rid=kit.rid(), after=cursor, limit=2))
            assert isinstance(page, PullResult)
            assert page.head == 5
            seen += [e.message.msg_id for e in page.events if isinstance(e, MessageEvent)]
            cursor = page.next_cursor
            assert page.more == (cursor < 5)
            if not page.more:
                break
        assert seen == [a.msg_id for a in sent]
        await a_pc.pushes()
        await a_phone.pushes()  # the pushes of their own sends
        # Confirming is the delivery receipt: each sender device hears of each.
        assert isinstance(await kit.call(b_pc, Delivered(rid=kit.rid(), cursor=5)), Ok)
        for peer in (a_pc, a_phone):
            updates = await peer.pushes()
            assert [u.msg_id for u in updates] == seen
            assert all(isinstance(u, StatusUpdate) for u in updates)
            assert {(u.status, u.user, u.device) for u in updates} == {
                (ReceiptKind.DELIVERED, "bob", "bob-pc")
            }
        devices = {d.device_id: d.cursor for d in await kit.ctx.store.list_devices("bob")}
        assert devices["bob-pc"] == 5
        # Confirming again (or an older cursor) changes nothing.
        assert isinstance(await kit.call(b_pc, Delivered(rid=kit.rid(), cursor=3)), Ok)
        assert await a_pc.pushes() == []
        status = await kit.call(a_pc, QueryStatus(rid=kit.rid(), msg_id=seen[0]))
        assert isinstance(status, MessageStatus)
        assert status.state is DeliveryState.DELIVERED
        assert [(d.user, d.device) for d in status.delivered] == [("bob", "bob-pc")]
        assert status.delivered_count == 1 and status.read_count == 0


async def test_cursor_beyond_the_log_is_refused(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        await kit.user("bob")
        b_pc = await kit.device("bob", "bob-pc")
        for request in (Pull(rid=kit.rid(), after=1), Delivered(rid=kit.rid(), cursor=1)):
            answer = await kit.call(b_pc, request)
            assert isinstance(answer, RequestFailed)
            assert answer.code == AppErrorCode.CURSOR_INVALID
        empty = await kit.call(b_pc, Pull(rid=kit.rid(), after=0))
        assert (empty.events, empty.next_cursor, empty.head, empty.more) == ((), 0, 0, False)


async def test_read_receipts_reach_the_sender_and_both_logs(tmp_path: Path) -> None:
    async with open_kit(tmp_path) as kit:
        await kit.user("alice")
        await kit.user("bob")
        a_pc = await kit.device("alice", "alice-pc")
        b_pc = await kit.device("bob", "bob-pc")
        b_phone = await kit.device("bob", "bob-phone")
        sent = [await kit.call(a_pc, _send(kit, f"m{i}", "bob", f"t{i}")) for i in range(3)]
        mine = await kit.call(b_pc, _send(kit, "b1", "alice", "bob's own"))
        for peer in (a_pc, b_pc, b_phone):
            assert len(await peer.pushes()) == 4
        kit.clock.ms += 1000
        answer = await kit.call(
            b_phone, MarkRead(rid=kit.rid(), conversation="d:alice:bob", up_to_seq=2)
        )
        assert isinstance(answer, Ok)
        # alice: a status entry in her log and a StatusUpdate, per message read.
        a_got = await a_pc.pushes()
        updates = [p for p in a_got if isinstance(p, StatusUpdate)]
        assert sorted(u.msg_id for u in updates) == [sent[0].msg_id, sent[1].msg_id]
        assert {(u.status, u.user, u.at_ms) for u in updates} == {
            (ReceiptKind.READ, "bob", kit.clock.ms)
        }
        entries = [p.event for p in a_got if isinstance(p, EventPush)]
        assert all(isinstance(e, StatusEvent) and e.by == "bob" for e in entries)
        assert len(entries) == 2
        # bob's other device learns it too (the entry is in the reader's log).
        b_entries = [p.event for p in await b_pc.pushes()]
        assert sorted(e.msg_id for e in b_entries) == [sent[0].msg_id, sent[1].msg_id]
        # Up to a sequence number beyond the newest: everything; bob's own
        # message is not "read" by bob; repeats record nothing.
        await kit.call(b_phone, MarkRead(rid=kit.rid(), conversation="d:alice:bob", up_to_seq=99))
        updates = [p for p in await a_pc.pushes() if isinstance(p, StatusUpdate)]
        assert [u.msg_id for u in updates] == [sent[2].msg_id]
        await kit.call(b_phone, MarkRead(rid=kit.rid(), conversation="d:alice:bob", up_to_seq=99))
        assert await a_pc.pushes() == []
        status = await kit.call(a_pc, QueryStatus(rid=kit.rid(), msg_id=sent[0].msg_id))
        assert status.state is DeliveryState.READ
        assert [(r.user, r.at_ms) for r in status.read] == [("bob", kit.clock.ms)]
        # Only the sender may ask; others' conversations are refused.
        denied = await kit.call(a_pc, QueryStatus(rid=kit.rid(), msg_id=mine.msg_id))
        assert denied.code == AppErrorCode.PERMISSION_DENIED
        missing = await kit.call(a_pc, QueryStatus(rid=kit.rid(), msg_id=10**6))
        assert missing.code == AppErrorCode.NOT_FOUND
        await kit.user("carol")
        carol = await kit.device("carol", "carol-pc")
        denied = await kit.call(
            carol, MarkRead(rid=kit.rid(), conversation="d:alice:bob", up_to_seq=1)
        )
        assert denied.code == AppErrorCode.PERMISSION_DENIED


async def test_mark_read_over_more_than_one_page(tmp_path: Path) -> None:
    from elink_server.services import messaging

    async with open_kit(tmp_path) as kit:
        await kit.user("alice")
        await kit.user("bob")
        a_pc = await kit.device("alice", "alice-pc", online=False)
        b_pc = await kit.device("bob", "bob-pc", online=False)
        kit.bind(a_pc, "alice", "alice-pc")
        count = messaging.MARK_READ_PAGE + 7
        for i in range(count):
            await kit.call(a_pc, _send(kit, f"m{i}", "bob", "x"))
        kit.bind(b_pc, "bob", "bob-pc")
        await kit.call(b_pc, MarkRead(rid=kit.rid(), conversation="d:alice:bob", up_to_seq=count))
        for msg_id in (1, count):
            status = await kit.ctx.store.message_status(msg_id)
            assert [r.user for r in status.read] == ["bob"]
        # alice's log holds one status entry per message (after her own sends).
        page = await kit.call(a_pc, Pull(rid=kit.rid(), after=count, limit=1000))
        assert page.head == 2 * count
        # The burst overflowed her outbox; the entries dropped were announced
        # by EventsAvailable, so she knows the log's head all the same.
        pushes = await a_pc.pushes()
        known = [p.latest for p in pushes if isinstance(p, EventsAvailable)]
        known += [p.event.cursor for p in pushes if isinstance(p, EventPush)]
        assert max(known) == 2 * count
        assert any(isinstance(p, EventsAvailable) for p in pushes)
