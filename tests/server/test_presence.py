"""Presence and follows (§11.9), end to end over loopback TCP."""

from __future__ import annotations

from pathlib import Path

from elink_protocol import Packet
from elink_protocol.app import (
    AppErrorCode,
    DeviceKind,
    DevicePresence,
    Follow,
    Logout,
    Ok,
    PresenceEntry,
    PresenceResult,
    PresenceStatus,
    PresenceUpdate,
    QueryPresence,
    RequestFailed,
    SetPresence,
    Unfollow,
)
from tests.helpers.server import LoopbackClient, add_user, connect_client, login, open_test_server

ONLINE, BUSY, AWAY, OFFLINE = (
    PresenceStatus.ONLINE,
    PresenceStatus.BUSY,
    PresenceStatus.AWAY,
    PresenceStatus.OFFLINE,
)


async def _call(client: LoopbackClient, packet: Packet) -> object:
    await client.send(packet)
    return await client.next_event()


async def _update(client: LoopbackClient) -> tuple[str, str, PresenceStatus, PresenceStatus]:
    event = await client.next_event()
    assert isinstance(event, PresenceUpdate), event
    assert event.at_ms > 0
    return event.user, event.device, event.status, event.aggregated


async def test_followers_and_other_devices_see_every_change(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        for name in ("bob", "carol"):
            await add_user(server, name)
        async with (
            connect_client(server) as carol,
            connect_client(server) as phone,
            connect_client(server) as pc,
        ):
            await login(carol, "carol")
            assert await _call(carol, Follow(rid=2, user="bob")) == Ok(rid=2)
            await login(phone, "bob", device_id="phone", kind=DeviceKind.MOBILE)
            assert await _update(carol) == ("bob", "phone", ONLINE, ONLINE)
            assert await _call(phone, SetPresence(rid=2, status=BUSY, note="meeting")) == Ok(rid=2)
            assert await _update(carol) == ("bob", "phone", BUSY, BUSY)
            await login(pc, "bob", device_id="pc")
            assert await _update(carol) == ("bob", "pc", ONLINE, ONLINE)
            assert await _update(phone) == ("bob", "pc", ONLINE, ONLINE)

            answer = await _call(carol, QueryPresence(rid=3, users=("bob", "nobody")))
            assert isinstance(answer, PresenceResult) and not answer.more
            bob, nobody = answer.entries
            assert nobody == PresenceEntry(user="nobody", status=OFFLINE)
            assert (bob.user, bob.status) == ("bob", ONLINE)
            assert set(bob.devices) == {
                DevicePresence(device="pc", kind=DeviceKind.PC, status=ONLINE),
                DevicePresence(device="phone", kind=DeviceKind.MOBILE, status=BUSY),
            }

            assert await _call(pc, Logout(rid=2)) == Ok(rid=2)
            assert await _update(carol) == ("bob", "pc", OFFLINE, BUSY)
            assert await _update(phone) == ("bob", "pc", OFFLINE, BUSY)
            assert await _call(phone, Logout(rid=3)) == Ok(rid=3)
            assert await _update(carol) == ("bob", "phone", OFFLINE, OFFLINE)


async def test_an_invisible_device_is_not_revealed(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        for name in ("bob", "carol"):
            await add_user(server, name)
        async with connect_client(server) as carol, connect_client(server) as bob:
            await login(carol, "carol")
            assert await _call(carol, Follow(rid=2, user="bob")) == Ok(rid=2)
            await login(bob, "bob")
            assert await _update(carol) == ("bob", "pc", ONLINE, ONLINE)
            assert await _call(bob, SetPresence(rid=2, status=OFFLINE)) == Ok(rid=2)
            assert await _update(carol) == ("bob", "pc", OFFLINE, OFFLINE)
            answer = await _call(carol, QueryPresence(rid=3, users=("bob",)))
            assert isinstance(answer, PresenceResult)
            assert answer.entries[0].status is OFFLINE and answer.entries[0].devices == ()
            # Leaving while invisible tells nobody anything; the next thing
            # carol receives is the answer to her next request.
            assert await _call(bob, Logout(rid=3)) == Ok(rid=3)
            assert await _call(carol, Unfollow(rid=4, user="bob")) == Ok(rid=4)


async def test_follow_rules(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "carol")
        async with connect_client(server) as carol:
            await login(carol, "carol")
            itself = await _call(carol, Follow(rid=2, user="carol"))
            assert isinstance(itself, RequestFailed)
            assert itself.code == AppErrorCode.INVALID_REQUEST
            unknown = await _call(carol, Follow(rid=3, user="nobody"))
            assert isinstance(unknown, RequestFailed) and unknown.code == AppErrorCode.NOT_FOUND
            assert await _call(carol, Unfollow(rid=4, user="nobody")) == Ok(rid=4)
        assert await server.store.following("carol") == ()


async def test_follows_are_stored(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        for name in ("bob", "carol"):
            await add_user(server, name)
        async with connect_client(server) as carol:
            await login(carol, "carol")
            assert await _call(carol, Follow(rid=2, user="bob")) == Ok(rid=2)
            assert await _call(carol, Follow(rid=3, user="bob")) == Ok(rid=3)  # idempotent
        assert await server.store.followers("bob") == ("carol",)
