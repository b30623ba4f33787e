"""Multi-device pull sync: the per-user event log, cursors, the offline cap,
and delivery / read receipts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from elink_server.storage import (
    MIN_OFFLINE_CAP,
    AppendResult,
    DeviceKind,
    DeviceReceipt,
    EventKind,
    EventRef,
    InvalidArgument,
    MessageKind,
    MessageState,
    PermissionDenied,
    ReadReceipt,
    SqliteStore,
    UnknownDevice,
    UnknownMessage,
    UnknownUser,
    direct_conversation_id,
    open_sqlite_store,
)

T0 = 1_700_000_000.0


async def test_events_page_through_the_log(store: SqliteStore, send) -> None:
    sent = [await send("alice", "bob", f"m{i}") for i in range(25)]
    cursor, seen = 0, []
    for expected in (10, 10, 5):
        page = await store.events_since("bob", cursor, limit=10)
        assert len(page.events) == expected
        assert page.head == 25
        seen.extend(page.events)
        cursor = page.next_cursor
    assert not page.more and cursor == 25
    assert [e.user_seq for e in seen] == list(range(1, 26))
    assert [e.msg_id for e in seen] == [r.message.msg_id for r in sent]
    assert all(e.kind is EventKind.MESSAGE and e.actor == "alice" for e in seen)
    assert seen[3].message is not None and seen[3].message.content == {"text": "m3"}
    empty = await store.events_since("bob", 25)
    assert empty.events == () and empty.next_cursor == 25 and not empty.more
    # The sender's own log has the same messages, for her other devices.
    assert (await store.events_since("alice", 0, limit=100)).head == 25


async def test_cursor_and_pending_count(store: SqliteStore, send) -> None:
    for _ in range(7):
        await send("alice", "bob")
    await store.register_device("bob", "phone", kind=DeviceKind.MOBILE, now=T0)
    assert await store.pending_count("bob", 0) == 7
    assert await store.set_device_cursor("bob", "phone", 5) == 5
    assert await store.pending_count("bob", 5) == 2
    # Cursors never move backwards: a late, stale confirmation is harmless.
    assert await store.set_device_cursor("bob", "phone", 3) == 5
    devices = {d.device_id: d for d in await store.list_devices("bob")}
    assert devices["phone"].cursor == 5 and devices["pc"].cursor == 0
    with pytest.raises(InvalidArgument):
        await store.set_device_cursor("bob", "phone", 8)
    with pytest.raises(UnknownDevice):
        await store.set_device_cursor("bob", "tablet", 1)
    with pytest.raises(UnknownUser):
        await store.pending_count("nobody", 0)
    with pytest.raises(InvalidArgument):
        await store.events_since("bob", 8)
    with pytest.raises(InvalidArgument):
        await store.events_since("bob", -1)
    # Re-registering a device (a new login) keeps its cursor.
    again = await store.register_device("bob", "phone", kind=DeviceKind.WEB, now=T0 + 9)
    assert (again.cursor, again.kind, again.last_seen, again.created_at) == (
        5,
        DeviceKind.WEB,
        T0 + 9,
        T0,
    )


async def _fill(send, count: int) -> list:
    """Send ``count`` messages alice -> bob concurrently (to share commits)."""
    results = []

    async def one() -> None:
        results.append(await send("alice", "bob"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return results


async def test_offline_cap_reports_but_never_drops(store: SqliteStore, send) -> None:
    assert store.offline_cap == MIN_OFFLINE_CAP == 1000
    results = await _fill(send, 1000)
    assert not any(r.recipient_backlog_full for r in results)

    over = await send("alice", "bob", "one too many")
    assert over.backlog_full == ("bob",) and over.recipient_backlog_full
    assert not over.duplicate and over.message.seq == 1001
    assert await store.pending_count("bob", 0) == 1001

    # Pulling on ANY device clears the backlog: the cap counts entries no
    # device has pulled.
    await store.register_device("bob", "phone", kind=DeviceKind.MOBILE, now=T0)
    await store.set_device_cursor("bob", "phone", 1001)
    # alice's own log is past the cap too (her devices pulled nothing), but a
    # sender's backlog is never reported to herself...
    assert not (await send("alice", "bob")).recipient_backlog_full
    # ...only when she is the recipient: every unpulled entry counts.
    assert (await send("bob", "alice")).backlog_full == ("alice",)


async def test_offline_cap_minimum(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        async with open_sqlite_store(tmp_path / "x.db", offline_cap=999):
            pass  # pragma: no cover


async def test_larger_offline_cap(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_sqlite_store(tmp_path / "x.db", offline_cap=1500) as store:
            for name in ("alice", "bob"):
                await store.create_user(name, password_hash="h", now=T0)
                await store.register_device(name, "pc", kind=DeviceKind.PC, now=T0)
            count = 0

            async def send(sender: str, recipient: str) -> AppendResult:
                nonlocal count
                count += 1
                return await store.append_message(
                    conversation=direct_conversation_id(sender, recipient),
                    sender=sender,
                    sender_device="pc",
                    client_msg_id=str(count),
                    kind=MessageKind.TEXT,
                    content={"text": "x"},
                    now=T0,
                )

            results = await _fill(send, 1501)
            assert sum(r.recipient_backlog_full for r in results) == 1
            assert max(results, key=lambda r: r.message.seq).recipient_backlog_full


async def test_delivery_and_read_receipts(store: SqliteStore, send) -> None:
    msg_id = (await send("alice", "bob", "status?")).message.msg_id
    await store.register_device("bob", "phone", kind=DeviceKind.MOBILE, now=T0)

    status = await store.message_status(msg_id)
    assert status.state is MessageState.SENT and status.delivered == () and status.read == ()

    first = await store.mark_delivered(msg_id, user="bob", device_id="phone", now=T0 + 1)
    assert first.recorded and first.events == ()
    again = await store.mark_delivered(msg_id, user="bob", device_id="phone", now=T0 + 5)
    assert not again.recorded
    await store.mark_delivered(msg_id, user="bob", device_id="pc", now=T0 + 2)
    status = await store.message_status(msg_id)
    assert status.state is MessageState.DELIVERED
    assert status.delivered == (
        DeviceReceipt(user="bob", device_id="phone", at=T0 + 1),
        DeviceReceipt(user="bob", device_id="pc", at=T0 + 2),
    )

    read = await store.mark_read(msg_id, user="bob", now=T0 + 3)
    assert read.recorded
    # Bob's other devices clear the unread mark; alice's devices show "read".
    assert read.events == (EventRef(user="bob", user_seq=2), EventRef(user="alice", user_seq=2))
    assert not (await store.mark_read(msg_id, user="bob", now=T0 + 4)).recorded
    status = await store.message_status(msg_id)
    assert status.state is MessageState.READ
    assert status.read == (ReadReceipt(user="bob", at=T0 + 3),)

    page = await store.events_since("alice", 1)
    (event,) = page.events
    assert (event.kind, event.actor, event.msg_id, event.message) == (
        EventKind.READ,
        "bob",
        msg_id,
        None,
    )


async def test_receipt_refusals(store: SqliteStore, send) -> None:
    msg_id = (await send("alice", "bob")).message.msg_id
    with pytest.raises(PermissionDenied):  # the sender is not a recipient
        await store.mark_read(msg_id, user="alice", now=T0)
    with pytest.raises(PermissionDenied):  # not in the conversation
        await store.mark_delivered(msg_id, user="carol", device_id="pc", now=T0)
    with pytest.raises(UnknownDevice):
        await store.mark_delivered(msg_id, user="bob", device_id="watch", now=T0)
    with pytest.raises(UnknownMessage):
        await store.mark_read(msg_id + 1, user="bob", now=T0)
    with pytest.raises(UnknownMessage):
        await store.message_status(msg_id + 1)
    assert (await store.message_status(msg_id)).state is MessageState.SENT


async def test_file_assistant_receipts(store: SqliteStore, send) -> None:
    msg_id = (await send("alice", "alice", "to my phone")).message.msg_id
    await store.register_device("alice", "phone", kind=DeviceKind.MOBILE, now=T0)
    assert (await store.mark_delivered(msg_id, user="alice", device_id="phone", now=T0)).recorded
    read = await store.mark_read(msg_id, user="alice", now=T0)
    assert read.events == (EventRef(user="alice", user_seq=2),)
