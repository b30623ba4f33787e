"""Following a user who is already online (§11.9.3, §11.9.4, §11.9.9): the
Follow is answered Ok and no PresenceUpdate is pushed for it, since a
PresenceUpdate announces a change (a client would show "bob came online");
the follower asks for the current presence with QueryPresence.  Loopback TCP."""

from __future__ import annotations

from pathlib import Path

from elink_protocol.app import (
    DeviceKind,
    Follow,
    Ok,
    PresenceResult,
    PresenceStatus,
    PresenceUpdate,
    QueryPresence,
    SetPresence,
)
from tests.helpers.server import add_user, connect_client, login, open_test_server


async def test_follow_pushes_nothing_and_query_tells_the_current_presence(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        for name in ("bob", "carol"):
            await add_user(server, name)
        async with connect_client(server) as bob, connect_client(server) as carol:
            await login(bob, "bob", device_id="bob-phone", kind=DeviceKind.MOBILE)
            await login(carol, "carol")
            await carol.send(Follow(rid=2, user="bob"))
            assert await carol.next_event() == Ok(rid=2)
            # Answers and pushes share one ordered stream: had the Follow
            # caused a PresenceUpdate, it would arrive before this result.
            await carol.send(QueryPresence(rid=3, users=("bob",)))
            result = await carol.next_event()
            assert isinstance(result, PresenceResult), result
            (entry,) = result.entries
            assert (entry.user, entry.status) == ("bob", PresenceStatus.ONLINE)
            assert [(d.device, d.status) for d in entry.devices] == [
                ("bob-phone", PresenceStatus.ONLINE)
            ]
            # The follow is in force: bob's next change reaches carol.
            await bob.send(SetPresence(rid=2, status=PresenceStatus.BUSY))
            assert await bob.next_event() == Ok(rid=2)
            update = await carol.next_event()
            assert isinstance(update, PresenceUpdate), update
            assert (update.user, update.status, update.aggregated) == (
                "bob",
                PresenceStatus.BUSY,
                PresenceStatus.BUSY,
            )
