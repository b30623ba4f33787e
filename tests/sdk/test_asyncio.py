"""The client under asyncio: the main scenario of test_client.py, with the
server running under Trio in a background thread."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import pytest

import elink_sdk
from elink_protocol.app import AppErrorCode
from elink_sdk import (
    AuthenticationError,
    ConnectionLost,
    DeliveryState,
    Event,
    MessageRead,
    MessageRecalled,
    MessageReceived,
    NotFound,
    PresenceChanged,
    PresenceStatus,
)
from tests.helpers.sdk import ServerThread, client_options
from tests.helpers.server import WAIT

E = TypeVar("E", bound=Event)


async def next_of(client: elink_sdk.Client, kind: type[E]) -> E:
    async with asyncio.timeout(WAIT):
        async for event in client.events():
            if isinstance(event, kind):
                return event
    raise AssertionError("events() ended")


async def scenario(port: int) -> None:
    async with (
        asyncio.timeout(3 * WAIT),
        elink_sdk.connect("127.0.0.1", port, **client_options(port, "alice")) as alice,
        elink_sdk.connect("127.0.0.1", port, **client_options(port, "bob")) as bob,
    ):
        await alice.follow("bob")
        await bob.set_presence("away", "lunch")
        change = await next_of(alice, PresenceChanged)
        assert (change.user, change.status, change.note) == ("bob", PresenceStatus.AWAY, "lunch")

        # Several tasks use one client at once.
        sent = await asyncio.gather(*(alice.send_text("bob", f"part {n}") for n in range(5)))
        assert sorted(s.seq for s in sent) == [1, 2, 3, 4, 5]
        got = [await next_of(bob, MessageReceived) for _ in range(5)]
        text_of = {s.msg_id: f"part {n}" for n, s in enumerate(sent)}
        assert [e.text for e in got] == [text_of[e.message.msg_id] for e in got]
        assert [e.message.seq for e in got] == [1, 2, 3, 4, 5]  # in order, once each

        last = max(sent, key=lambda s: s.seq)
        await bob.mark_read("alice", last.seq)
        await last.wait_read(timeout=WAIT)
        await last.wait_delivered(timeout=WAIT)
        assert last.status is DeliveryState.READ
        read = await next_of(alice, MessageRead)
        assert read.reader == "bob"
        assert (await last.refresh()).read_count == 1

        page = await bob.history("alice", limit=2)
        assert page.has_more and len(page.messages) == 2
        everything = [m.seq async for m in bob.iter_history("alice", page_size=2)]
        assert everything == [5, 4, 3, 2, 1]
        assert len((await bob.search("part")).messages) == 5

        await alice.recall(last)
        assert (await next_of(bob, MessageRecalled)).msg_id == last.msg_id

        with pytest.raises(NotFound):
            await alice.send_text("nobody", "hello?")
        stats = alice.statistics()
        assert stats.connected and stats.connections == 1 and stats.pending_requests == 0

    with pytest.raises(ConnectionLost):
        await alice.send_text("bob", "closed")


async def wrong_password(port: int) -> None:
    options = client_options(port, "alice", password="wrong")
    async with asyncio.timeout(WAIT):
        with pytest.raises(AuthenticationError) as caught:
            async with elink_sdk.connect("127.0.0.1", port, **options):
                raise AssertionError("logged in")
    assert caught.value.code == AppErrorCode.AUTH_FAILED


def test_the_main_scenario_under_asyncio(tmp_path: Path) -> None:
    with ServerThread(tmp_path) as server:
        asyncio.run(scenario(server.port))
        asyncio.run(wrong_password(server.port))
