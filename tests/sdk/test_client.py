"""Every public method of :class:`elink_sdk.Client`, against a real server on
loopback, under Trio (asyncio: test_asyncio.py; reconnects: test_reconnect*.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TypeVar

import pytest
import trio

import elink_sdk
from elink_protocol.app import AppErrorCode
from elink_sdk import (
    AuthenticationError,
    ConnectionLost,
    DeadlineExceeded,
    DeliveryState,
    Event,
    MessageDelivered,
    MessageRead,
    MessageRecalled,
    MessageReceived,
    NotFound,
    PermissionDenied,
    PresenceChanged,
    PresenceStatus,
    RecallWindowExpired,
    ServerUnavailable,
)
from elink_server.services.context import wall_clock_ms
from tests.helpers.sdk import client_options, sdk_client, sdk_server
from tests.helpers.server import WAIT

E = TypeVar("E", bound=Event)


async def next_of(client: elink_sdk.Client, kind: type[E]) -> E:
    """The next event of type ``kind``; other events before it are skipped."""
    with trio.fail_after(WAIT):
        while True:
            event = await client.next_event()
            if isinstance(event, kind):
                return event


async def received(client: elink_sdk.Client, count: int) -> list[MessageReceived]:
    return [await next_of(client, MessageReceived) for _ in range(count)]


async def assert_no_event_buffered(client: elink_sdk.Client, kind: type[Event]) -> None:
    """No event of type ``kind`` is waiting (call after a round trip that any
    such event would have preceded)."""
    while True:
        try:
            event = await client.next_event(timeout=0)
        except DeadlineExceeded:
            return
        assert not isinstance(event, kind), event


def status_of(sent: elink_sdk.SentMessage) -> DeliveryState:
    """``sent.status`` (a call, so that type checkers do not narrow it)."""
    return sent.status


# ---------------------------------------------------------------- sending


async def test_send_each_kind_and_receive_it_in_order(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        text = await alice.send_text("bob", "hello bob")
        emoji = await alice.send_emoji("bob", "👍")
        link = await alice.send_link("bob", "https://tickets.example/42", title="Ticket 42")
        custom = await alice.send(
            alice.direct("bob"), "x-poll", {"question": "lunch?", "options": ["yes", "no"]}
        )
        sent = [text, emoji, link, custom]
        assert {s.conversation for s in sent} == {"d:alice:bob"}
        assert [s.seq for s in sent] == [1, 2, 3, 4]
        assert len({s.msg_id for s in sent}) == 4
        assert not any(s.duplicate or s.recipient_backlog_full for s in sent)
        assert all(s.status is DeliveryState.SENT for s in sent)

        got = await received(bob, 4)
        assert [e.message.msg_id for e in got] == [s.msg_id for s in sent]
        assert [e.message.kind for e in got] == ["text", "emoji", "link", "x-poll"]
        assert got[0].text == "hello bob" and got[0].sender == "alice"
        assert got[0].conversation == "d:alice:bob"
        assert got[1].message.content == {"emoji": "👍"}
        assert got[2].message.content == {"url": "https://tickets.example/42", "title": "Ticket 42"}
        assert got[3].message.content == {"question": "lunch?", "options": ["yes", "no"]}
        assert got[3].text is None
        assert [e.cursor for e in got] == sorted(e.cursor for e in got)


async def test_a_retry_with_the_same_client_msg_id_is_stored_once(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        first = await alice.send_text("bob", "invoice 42 paid", client_msg_id="invoice-42")
        again = await alice.send_text("bob", "invoice 42 paid", client_msg_id="invoice-42")
        assert not first.duplicate and again.duplicate
        assert again.msg_id == first.msg_id and again.seq == first.seq
        assert again.client_msg_id == "invoice-42"
        await alice.send_text("bob", "after")
        texts = [e.text for e in await received(bob, 2)]
        assert texts == ["invoice 42 paid", "after"]


async def test_content_the_protocol_refuses_is_a_value_error(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        with pytest.raises(ValueError, match="invalid SendMessage"):
            await alice.send("bob", "link", {"title": "no url"}, timeout=0.3)
        assert alice.statistics().pending_requests == 0


# ---------------------------------------------------------------- receipts


async def test_delivery_and_read_receipts(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        sent = await alice.send_text("bob", "please read")
        (event,) = await received(bob, 1)  # taking it confirms it: the receipt
        await sent.wait_delivered(timeout=WAIT)
        assert status_of(sent) is DeliveryState.DELIVERED
        delivered = await next_of(alice, MessageDelivered)
        assert (delivered.msg_id, delivered.recipient, delivered.device) == (
            sent.msg_id,
            "bob",
            "bob-dev",
        )

        await bob.mark_read("alice", event.message.seq)
        await sent.wait_read(timeout=WAIT)
        assert status_of(sent) is DeliveryState.READ
        read = await next_of(alice, MessageRead)
        assert (read.msg_id, read.reader, read.conversation) == (sent.msg_id, "bob", "d:alice:bob")

        report = await sent.refresh()
        assert report.state is DeliveryState.READ and report.msg_id == sent.msg_id
        assert [(d.user, d.device) for d in report.deliveries] == [("bob", "bob-dev")]
        assert [r.user for r in report.reads] == ["bob"]
        assert (report.delivered_count, report.read_count) == (1, 1)
        assert report.sent_at_ms == sent.created_at_ms
        assert await alice.message_status(sent.msg_id) == report


async def test_waiting_for_an_offline_recipient_times_out(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        sent = await alice.send_text("carol", "are you there?")
        with pytest.raises(DeadlineExceeded, match="not delivered") as caught:
            await sent.wait_delivered(timeout=0.05)
        assert isinstance(caught.value, TimeoutError)
        report = await alice.message_status(sent.msg_id)
        assert report.state is DeliveryState.SENT and report.deliveries == ()
        assert sent.status is DeliveryState.SENT


async def test_a_receipt_that_came_before_the_wait_is_not_missed(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        sent = await alice.send_text("bob", "read me")
        (event,) = await received(bob, 1)
        await bob.mark_read(bob.direct("alice"), event.message.seq)  # by conversation id
        await sent.wait_read(timeout=WAIT)  # also delivered: read implies it
        await sent.wait_delivered(timeout=WAIT)
        report = await alice.message_status(sent.msg_id)
        assert report.state is DeliveryState.READ


# ---------------------------------------------------------------- recall


async def test_recall(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        assert alice.recall_window == 120.0  # the server's setting, from the login
        oops = await alice.send_text("bob", "wrong chat, sorry")
        at_ms = await alice.recall(oops)
        assert at_ms >= oops.created_at_ms
        got = await next_of(bob, MessageRecalled)
        assert (got.msg_id, got.by, got.at_ms) == (oops.msg_id, "alice", at_ms)
        (shown,) = (await bob.history("alice")).messages
        assert shown.recalled and shown.content is None

        with pytest.raises(NotFound) as missing:
            await alice.recall(10**9)
        assert missing.value.code == AppErrorCode.NOT_FOUND

        theirs = await bob.send_text("alice", "mine, not yours")
        with pytest.raises(PermissionDenied) as denied:
            await alice.recall(theirs.msg_id)
        assert denied.value.code == AppErrorCode.PERMISSION_DENIED

        late = await alice.send_text("bob", "too late to take back")
        assert server.context is not None
        server.context.now_ms = lambda: wall_clock_ms() + 121_000  # the window passed
        with pytest.raises(RecallWindowExpired) as expired:
            await alice.recall(late.msg_id)
        assert expired.value.code == AppErrorCode.RECALL_WINDOW_EXPIRED
        assert isinstance(expired.value, elink_sdk.RequestRejected)
        assert "RECALL_WINDOW_EXPIRED" in str(expired.value)


# ---------------------------------------------------------------- history, search


async def test_history_pages_and_iteration(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        for n in range(7):
            sender = alice if n % 2 == 0 else bob
            await sender.send_text("bob" if sender is alice else "alice", f"line {n}")
        first = await alice.history("bob", limit=3)
        assert [m.text for m in first.messages] == ["line 6", "line 5", "line 4"]
        assert first.has_more and first.next_before == first.messages[-1].seq
        second = await alice.history(alice.direct("bob"), before=first.next_before, limit=3)
        assert [m.text for m in second.messages] == ["line 3", "line 2", "line 1"]
        last = await alice.history("bob", before=second.next_before, limit=3)
        assert [m.text for m in last.messages] == ["line 0"]
        assert not last.has_more and last.next_before is None

        texts = [m.text async for m in bob.iter_history("alice", page_size=2)]
        assert texts == [f"line {n}" for n in reversed(range(7))]
        assert (await alice.history("carol")).messages == ()


async def test_search_finds_text_in_any_script(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        await alice.send_text("bob", "Deploy window is Friday")
        await bob.send_text("alice", "明天的会议改到下午三点")
        await alice.send_text("carol", "deploy notes for carol")
        await alice.send_emoji("bob", "🚀")

        chinese = await alice.search("会议")
        assert [m.text for m in chinese.messages] == ["明天的会议改到下午三点"]
        assert not chinese.has_more

        deploy = await alice.search("DEPLOY")  # case-insensitive for ASCII
        assert [m.text for m in deploy.messages] == [
            "deploy notes for carol",
            "Deploy window is Friday",
        ]
        only_bob = await alice.search("deploy", conversation="bob")
        assert [m.text for m in only_bob.messages] == ["Deploy window is Friday"]
        limited = await alice.search("deploy", limit=1)
        assert len(limited.messages) == 1 and limited.has_more

        # bob is not in carol's conversation: he cannot find what is in it.
        assert [m.text for m in (await bob.search("deploy")).messages] == [
            "Deploy window is Friday"
        ]


# ---------------------------------------------------------------- presence


async def test_presence_follow_and_unfollow(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        await alice.follow("bob")
        await bob.set_presence("busy", "in a meeting")
        change = await next_of(alice, PresenceChanged)
        assert (change.user, change.device, change.status, change.aggregated, change.note) == (
            "bob",
            "bob-dev",
            PresenceStatus.BUSY,
            PresenceStatus.BUSY,
            "in a meeting",
        )

        found = await alice.presence("bob", "carol", "bob")
        assert set(found) == {"bob", "carol"}
        assert found["bob"].status is PresenceStatus.BUSY and found["bob"].note == "in a meeting"
        assert [d.device for d in found["bob"].devices] == ["bob-dev"]
        assert found["carol"].status is PresenceStatus.OFFLINE and found["carol"].devices == ()

        # The server handles a connection's requests one at a time, so once
        # bob's next request is answered his change was pushed; once alice's
        # next one is, the push has reached her.  The control first:
        await bob.set_presence(PresenceStatus.ONLINE)
        await bob.presence("bob")
        await alice.presence("bob")
        change = await alice.next_event(timeout=0)
        assert isinstance(change, PresenceChanged) and change.status is PresenceStatus.ONLINE

        await alice.unfollow("bob")
        await bob.set_presence(PresenceStatus.AWAY)
        await bob.presence("bob")
        await alice.presence("bob")
        await assert_no_event_buffered(alice, PresenceChanged)


async def test_presence_of_many_users_at_once(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        names = [f"user{n}" for n in range(150)]  # more than one query may carry
        found = await alice.presence(*names, "bob")
        assert len(found) == 151
        assert found["bob"].status is PresenceStatus.OFFLINE


# ---------------------------------------------------------------- events


async def test_events_arrive_once_and_in_order(tmp_path: Path) -> None:
    count = 30
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob", event_buffer=4) as bob,  # a small buffer: backpressure
    ):
        for n in range(count):
            await alice.send_text("bob", f"n={n}")
        texts = []
        with trio.fail_after(WAIT):
            async for event in bob.events():
                if isinstance(event, MessageReceived):
                    texts.append(event.text)
                    if len(texts) == 10:
                        break  # breaking out loses nothing
            async for event in bob.events():
                if isinstance(event, MessageReceived):
                    texts.append(event.text)
                    if len(texts) == count:
                        break
        assert texts == [f"n={n}" for n in range(count)]
        await alice.send_text("bob", "sentinel")
        (after,) = await received(bob, 1)
        assert after.text == "sentinel"  # nothing was repeated before it
        stats = bob.statistics()
        assert stats.cursor == after.cursor and stats.dropped_live_events == 0


async def test_a_successor_client_continues_where_a_closed_one_stopped(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        async with sdk_client(server.port, "bob", event_buffer=2) as bob:
            for n in range(6):
                await alice.send_text("bob", f"n={n}")
            first = [e.text for e in await received(bob, 3)]
        # The same device logs in again: what it handed out is not repeated.
        async with sdk_client(server.port, "bob") as bob:
            rest = [e.text for e in await received(bob, 3)]
        assert first + rest == [f"n={n}" for n in range(6)]


async def test_multi_device(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice", device_id="alice-pc") as pc,
        sdk_client(server.port, "alice", device_id="alice-phone", device_kind="mobile") as phone,
        sdk_client(server.port, "bob") as bob,
    ):
        sent = await pc.send_text("bob", "from my pc")
        synced = await next_of(phone, MessageReceived)
        assert synced.message.msg_id == sent.msg_id
        assert (synced.sender, synced.message.sender_device) == ("alice", "alice-pc")
        (got,) = await received(bob, 1)
        assert got.message.msg_id == sent.msg_id

        reply = await bob.send_text("alice", "got it")
        # The sending device does not receive its own message: the next
        # message it sees is bob's reply.
        assert (await next_of(pc, MessageReceived)).message.msg_id == reply.msg_id
        assert (await next_of(phone, MessageReceived)).message.msg_id == reply.msg_id

        found = await bob.presence("alice")
        assert {d.device for d in found["alice"].devices} == {"alice-pc", "alice-phone"}


# ---------------------------------------------------------------- errors


async def test_wrong_password_and_unknown_account(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server:
        for user, password in (("alice", "not the password"), ("nobody", "secret")):
            with pytest.raises(AuthenticationError) as caught:
                async with elink_sdk.connect(
                    "127.0.0.1", server.port, **client_options(server.port, user, password=password)
                ):
                    raise AssertionError("logged in")
            assert caught.value.code == AppErrorCode.AUTH_FAILED
            assert caught.value.code_name == "AUTH_FAILED"


async def test_unknown_recipient_is_not_found(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server, sdk_client(server.port, "alice") as alice:
        with pytest.raises(NotFound) as caught:
            await alice.send_text("nobody", "hello?")
        assert caught.value.code == AppErrorCode.NOT_FOUND
        with pytest.raises(NotFound):
            await alice.history("nobody")
        # The client is still usable after a refused request.
        assert (await alice.send_text("bob", "still here")).seq == 1


async def test_nothing_listening_is_server_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the client connects
    with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{port}"):
        async with elink_sdk.connect("127.0.0.1", port, **client_options(port, "alice")):
            raise AssertionError("connected")


# ---------------------------------------------------------------- state, closing


async def test_statistics_and_properties(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as alice,
        sdk_client(server.port, "bob") as bob,
    ):
        assert alice.connected
        assert alice.server_fingerprint in server.identity.fingerprints().values()
        assert (alice.user, alice.device_id, alice.host, alice.port) == (
            "alice",
            "alice-dev",
            "127.0.0.1",
            server.port,
        )
        assert abs(alice.server_time_offset_ms) < 60_000
        stats = alice.statistics()
        assert (stats.connected, stats.connections, stats.resumed) == (True, 1, 0)
        assert (stats.pending_requests, stats.buffered_events, stats.cursor) == (0, 0, 0)

        await alice.send_text("bob", "one")
        await alice.send_text("bob", "two")
        await received(bob, 2)
        with trio.fail_after(WAIT):
            while bob.statistics().confirmed_cursor < 2:
                await trio.sleep(0.01)
        stats = bob.statistics()
        assert (stats.cursor, stats.confirmed_cursor, stats.buffered_events) == (2, 2, 0)


async def test_logout_and_use_after_close(tmp_path: Path) -> None:
    async with sdk_server(tmp_path) as server, sdk_client(server.port, "bob") as bob:
        async with sdk_client(server.port, "alice") as alice:
            assert (await bob.presence("alice"))["alice"].status is PresenceStatus.ONLINE
            await alice.logout()
            assert not alice.connected and not alice.statistics().connected
            assert (await bob.presence("alice"))["alice"].status is PresenceStatus.OFFLINE
            with pytest.raises(ConnectionLost, match="closed"):
                await alice.send_text("bob", "after logout")
            await alice.logout()  # again: nothing happens

        with pytest.raises(ConnectionLost):
            await alice.send_text("bob", "after the block")
        with pytest.raises(ConnectionLost):
            await alice.presence("bob")
        with pytest.raises(ConnectionLost):
            await alice.next_event(timeout=WAIT)
        with trio.fail_after(WAIT):
            assert [event async for event in alice.events()] == []
