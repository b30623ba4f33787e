"""A message of a kind this server does not know is stored and relayed
unchanged (§11.4.1), end to end over loopback TCP."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from elink_protocol.app import (
    AppPacket,
    EventPush,
    History,
    HistoryPage,
    MessageAccepted,
    MessageEvent,
    Pull,
    PullResult,
    Search,
    SearchResult,
    SendMessage,
)
from tests.helpers.server import LoopbackClient, add_user, connect_client, login, open_test_server

P = TypeVar("P", bound=AppPacket)

#: Content of the unknown kind: its own keys plus a searchable caption.
CARD = {"name": "Dave Zhang", "phone": "+86 10 1234", "tags": ["sales", 7], "text": "名片 dave"}


async def expect(client: LoopbackClient, cls: type[P]) -> P:
    """The next application packet, which must be a ``cls`` (no presence is
    pushed here: nobody follows anybody)."""
    event = await client.next_event()
    assert isinstance(event, cls), event
    return event


async def test_an_unknown_kind_round_trips(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        await add_user(server, "bob")
        async with connect_client(server) as alice, connect_client(server) as bob:
            await login(alice, "alice", device_id="alice-pc")
            await login(bob, "bob", device_id="bob-pc")
            await alice.send(
                SendMessage(rid=2, client_msg_id="k1", to="bob", kind="x-card", content=CARD)
            )
            accepted = await expect(alice, MessageAccepted)
            assert (accepted.rid, accepted.seq, accepted.duplicate) == (2, 1, False)
            # Relayed to the recipient as sent.
            pushed = (await expect(bob, EventPush)).event
            assert isinstance(pushed, MessageEvent)
            assert (pushed.message.kind, pushed.message.content) == ("x-card", CARD)
            assert pushed.message.msg_id == accepted.msg_id
            # Stored: history and pull return it unchanged.
            await bob.send(History(rid=3, with_user="alice"))
            page = await expect(bob, HistoryPage)
            assert [(m.kind, m.content) for m in page.messages] == [("x-card", CARD)]
            await bob.send(Pull(rid=4, after=0))
            pulled = await expect(bob, PullResult)
            assert [(e.message.kind, e.message.content) for e in pulled.events] == [
                ("x-card", CARD)
            ]
            # Search indexes the text content only, whatever the kind.
            await bob.send(Search(rid=5, query="名片"))
            found = await expect(bob, SearchResult)
            assert [m.msg_id for m in found.messages] == [accepted.msg_id]
            await bob.send(Search(rid=6, query="Zhang"))
            assert (await expect(bob, SearchResult)).messages == ()
        stored = await server.store.get_message(accepted.msg_id)
        assert stored is not None and (stored.kind, stored.content) == ("x-card", CARD)
