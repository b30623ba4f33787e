"""Messaging end to end: real server, real Login, protocol-library clients
over loopback TCP.  Two users on several devices; offline delivery at login;
receipts; recall; history and a Chinese search."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from elink_protocol.app import (
    AppPacket,
    Delivered,
    DeliveryState,
    EventPush,
    History,
    HistoryPage,
    MarkRead,
    MessageAccepted,
    MessageEvent,
    MessageStatus,
    Ok,
    PresenceUpdate,
    Pull,
    PullResult,
    QueryStatus,
    Recall,
    RecallEvent,
    RecallOk,
    ReceiptKind,
    Search,
    SearchResult,
    SendMessage,
    StatusEvent,
    StatusUpdate,
    text_content,
)
from elink_server.host import Server
from tests.helpers.server import LoopbackClient, add_user, connect_client, login, open_test_server

P = TypeVar("P", bound=AppPacket)


async def expect(client: LoopbackClient, cls: type[P]) -> P:
    """The next application packet but presence, which must be a ``cls``."""
    while True:
        event = await client.next_event()
        if isinstance(event, AppPacket) and not isinstance(event, PresenceUpdate):
            assert isinstance(event, cls), event
            return event


@contextlib.asynccontextmanager
async def device(server: Server, user: str, device_id: str) -> AsyncIterator[LoopbackClient]:
    async with connect_client(server) as client:
        await login(client, user, device_id=device_id)
        yield client


def say(rid: int, cm: str, to: str, text: str) -> SendMessage:
    return SendMessage(rid=rid, client_msg_id=cm, to=to, kind="text", content=text_content(text))


async def test_conversation_across_devices_and_sessions(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        await add_user(server, "bob")
        async with (
            device(server, "alice", "alice-pc") as a_pc,
            device(server, "alice", "alice-phone") as a_phone,
            device(server, "bob", "bob-pc") as b_pc,
        ):
            await a_pc.send(say(10, "m1", "bob", "你好世界, bob"))
            accepted = await expect(a_pc, MessageAccepted)
            assert (accepted.rid, accepted.seq, accepted.conversation) == (10, 1, "d:alice:bob")
            assert (await expect(a_pc, EventPush)).event.cursor == 1
            # Multi-device sync: alice's other device sees her own message.
            mine = (await expect(a_phone, EventPush)).event
            assert isinstance(mine, MessageEvent) and mine.message.client_msg_id == "m1"
            got = (await expect(b_pc, EventPush)).event
            assert isinstance(got, MessageEvent) and got.message.content == {
                "text": "你好世界, bob"
            }
            # bob confirms: alice's devices get the delivery receipt.
            await b_pc.send(Delivered(rid=11, cursor=got.cursor))
            assert (await expect(b_pc, Ok)).rid == 11
            for client in (a_pc, a_phone):
                update = await expect(client, StatusUpdate)
                assert (update.status, update.user, update.device) == (
                    ReceiptKind.DELIVERED,
                    "bob",
                    "bob-pc",
                )
            await b_pc.send(say(12, "r1", "alice", "hi alice"))
            assert (await expect(b_pc, MessageAccepted)).seq == 2
            assert (await expect(b_pc, EventPush)).event.cursor == 2
            for client in (a_pc, a_phone):
                assert (await expect(client, EventPush)).event.message.sender == "bob"
            # bob reads; alice hears of it (status entry + live notice).
            await b_pc.send(MarkRead(rid=13, conversation="d:alice:bob", up_to_seq=2))
            # The answer and the push to the same device may come in either order.
            both = [await expect(b_pc, AppPacket), await expect(b_pc, AppPacket)]
            assert {type(p) for p in both} == {Ok, EventPush}
            assert all(isinstance(p.event, StatusEvent) for p in both if isinstance(p, EventPush))
            for client in (a_pc, a_phone):
                assert isinstance((await expect(client, EventPush)).event, StatusEvent)
                assert (await expect(client, StatusUpdate)).status is ReceiptKind.READ
            await a_phone.send(QueryStatus(rid=14, msg_id=accepted.msg_id))
            status = await expect(a_phone, MessageStatus)
            assert status.state is DeliveryState.READ and status.delivered_count == 1
            # alice recalls her message: every device of both sides is told.
            await a_pc.send(Recall(rid=15, msg_id=accepted.msg_id))
            assert (await expect(a_pc, RecallOk)).msg_id == accepted.msg_id
            for client in (a_pc, a_phone, b_pc):
                event = (await expect(client, EventPush)).event
                assert isinstance(event, RecallEvent) and event.msg_id == accepted.msg_id
            # While bob's phone is offline, alice writes three more.
            for i in range(3):
                await a_pc.send(say(20 + i, f"o{i}", "bob", f"离线消息 {i}"))
                await expect(a_pc, MessageAccepted)
                await expect(a_pc, EventPush)

        # Offline delivery: bob's phone logs in for the first time and pulls.
        async with connect_client(server) as b_phone:
            ok = await login(b_phone, "bob", device_id="bob-phone")
            assert ok.pending == 7 and ok.cursor == 0
            await b_phone.send(Pull(rid=2, after=0, limit=4))
            first = await expect(b_phone, PullResult)
            assert [e.cursor for e in first.events] == [1, 2, 3, 4] and first.more
            await b_phone.send(Pull(rid=3, after=first.next_cursor))
            rest = await expect(b_phone, PullResult)
            assert rest.next_cursor == 7 and not rest.more
            texts = [
                e.message.content["text"]
                for e in first.events + rest.events
                if isinstance(e, MessageEvent) and e.message.content is not None
            ]
            # The recalled message shows without content.
            assert texts == ["hi alice", "离线消息 0", "离线消息 1", "离线消息 2"]
            await b_phone.send(History(rid=4, with_user="alice", limit=2))
            page = await expect(b_phone, HistoryPage)
            assert [m.seq for m in page.messages] == [5, 4] and page.more
            await b_phone.send(Search(rid=5, query="线消"))
            found = await expect(b_phone, SearchResult)
            assert [m.seq for m in found.messages] == [5, 4, 3]
            await b_phone.send(Search(rid=6, query="好世"))
            assert (await expect(b_phone, SearchResult)).messages == ()  # recalled


async def test_pushes_from_concurrent_senders_arrive_in_log_order(tmp_path: Path) -> None:
    """Several senders' messages share group commits, whose waiting handlers
    wake in any order: bob still gets his entries pushed in log order."""
    senders, each = ("alice", "carol", "dave", "erin"), 40
    async with open_test_server(tmp_path) as server:
        for name in ("bob", *senders):
            await add_user(server, name)
        async with contextlib.AsyncExitStack() as stack:
            bob = await stack.enter_async_context(connect_client(server))
            await login(bob, "bob")
            clients = []
            for name in senders:
                client = await stack.enter_async_context(connect_client(server))
                await login(client, name)
                clients.append(client)
            # Every sender pipelines its messages, all at once.
            for client in clients:
                for rid in range(2, 2 + each):
                    client.connection.queue(
                        SendMessage(
                            rid=rid,
                            client_msg_id=f"m{rid}",
                            to="bob",
                            kind="text",
                            content=text_content("hi"),
                        )
                    )
            for client in clients:
                await client.flush()
            cursors: list[int] = []
            while len(cursors) < len(senders) * each:
                event = await bob.next_event()
                assert isinstance(event, EventPush), event
                cursors.append(event.event.cursor)
            assert cursors == list(range(1, len(senders) * each + 1))
