"""Session resumption on the server (§6.5, §11.3.6 rule 5): a logged-in
session survives the loss of its connection, and what the server sent or
had to send meanwhile arrives exactly once."""

from __future__ import annotations

import contextlib
from pathlib import Path

import attrs
import trio

from elink_protocol import ErrorCode, Packet
from elink_protocol.app import (
    AppErrorCode,
    Follow,
    Ok,
    PresenceStatus,
    PresenceUpdate,
    RequestFailed,
    SetPresence,
)
from elink_server.host import Server
from elink_server.services.app import Application
from tests.helpers.server import (
    WAIT,
    LoopbackClient,
    add_user,
    connect_client,
    login,
    open_test_server,
)


def _app(server: Server) -> Application:
    assert isinstance(server.hooks, Application)
    return server.hooks


async def _until(check: object) -> None:
    with trio.fail_after(WAIT):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.005)


async def _request(client: LoopbackClient, packet: Packet, rid: int) -> list[object]:
    """Send ``packet``; return every packet received up to its answer."""
    await client.send(packet)
    got: list[object] = []
    while True:
        event = await client.next_event()
        got.append(event)
        if isinstance(event, Ok | RequestFailed) and event.rid == rid:
            return got


async def _setup(server: Server, alice: LoopbackClient, bob: LoopbackClient) -> None:
    """alice follows bob; bob logs in; alice sees him come online."""
    await add_user(server, "alice")
    await add_user(server, "bob")
    await login(alice, "alice", device_id="pc")
    assert await _request(alice, Follow(rid=2, user="bob"), 2) == [Ok(rid=2)]
    await login(bob, "bob", device_id="phone")
    online = await alice.next_event()
    assert isinstance(online, PresenceUpdate) and online.status is PresenceStatus.ONLINE


async def test_resume_after_a_cut_connection_delivers_what_was_missed(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        app = _app(server)
        async with connect_client(server) as alice, connect_client(server) as bob:
            await _setup(server, alice, bob)
            state = alice.connection.resumption_state()
            await alice.stream.aclose()  # the TCP connection dies: no Close
            await _until(lambda: app.resume.detached == 1)
            # While alice is gone, bob changes status: the server keeps the push.
            assert await _request(bob, SetPresence(rid=2, status=PresenceStatus.BUSY), 2) == [
                Ok(rid=2)
            ]
            context = server.context
            assert context is not None
            (detached,) = context.registry.devices("alice")
            await _until(lambda: len(detached.peer.undelivered) == 1)
            async with connect_client(server, handshake=False) as again:
                again.connection.request_resume(state)
                done = await again.do_handshake()
                assert done.resumed and done.session_id == state.session_id
                # Logged in already: no Login; the missed update, once.
                got = await _request(again, SetPresence(rid=3, status=PresenceStatus.AWAY), 3)
                assert [type(p).__name__ for p in got] == ["PresenceUpdate", "Ok"]
                update = got[0]
                assert isinstance(update, PresenceUpdate)
                assert (update.user, update.status) == ("bob", PresenceStatus.BUSY)
                assert app.resume.detached == 0
                # The session is bound to the new connection.
                context = server.context
                assert context is not None
                (session,) = context.registry.devices("alice")
                assert not session.peer.is_closed


async def test_resume_takes_over_a_still_open_connection(tmp_path: Path) -> None:
    async with (
        open_test_server(tmp_path) as server,
        connect_client(server) as alice,
        connect_client(server) as bob,
    ):
        await _setup(server, alice, bob)
        state = alice.connection.resumption_state()
        # The server sends on the old connection, which the client never
        # reads (as if the bytes were lost with the network).
        assert await _request(bob, SetPresence(rid=2, status=PresenceStatus.BUSY), 2) == [Ok(rid=2)]
        # bob's Ok can precede the push to alice: wait until its bytes
        # arrive, and drop them unprocessed.
        with trio.fail_after(WAIT):
            assert await alice.stream.receive_some(65536)
        async with connect_client(server, handshake=False) as again:
            again.connection.request_resume(state)
            done = await again.do_handshake()
            assert done.resumed and done.resent == 0
            got = await _request(again, SetPresence(rid=3, status=PresenceStatus.AWAY), 3)
            assert [type(p).__name__ for p in got] == ["PresenceUpdate", "Ok"]
            update = got[0]
            assert isinstance(update, PresenceUpdate)
            assert update.status is PresenceStatus.BUSY
        # The old connection was closed first (§6.5.6).
        closed = await alice.wait_closed()
        assert closed.code == ErrorCode.NO_ERROR


async def test_a_wrong_proof_leaves_the_session_alone(tmp_path: Path) -> None:
    """Session ids travel in clear: a request that names a session without
    its secret gets a fresh session, and the named one carries on (§7.9.2)."""
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as alice:
            await login(alice, "alice")
            state = attrs.evolve(alice.connection.resumption_state(), resumption_secret=bytes(32))
            async with connect_client(server, handshake=False) as intruder:
                intruder.connection.request_resume(state)
                done = await intruder.do_handshake()
                assert not done.resumed and done.session_id != state.session_id
            got = await _request(alice, SetPresence(rid=2, status=PresenceStatus.BUSY), 2)
            assert got == [Ok(rid=2)]


async def test_resume_of_an_unknown_session_starts_a_fresh_one(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        await add_user(server, "alice")
        async with connect_client(server) as alice:
            await login(alice, "alice")
            state = alice.connection.resumption_state()
            alice.connection.close()
            await alice.flush()
        # A Close from the client ends the session for good.
        context = server.context
        assert context is not None
        await _until(lambda: not context.registry.devices("alice"))
        async with connect_client(server, handshake=False) as again:
            again.connection.request_resume(state)
            done = await again.do_handshake()
            assert not done.resumed
            got = await _request(again, SetPresence(rid=1, status=PresenceStatus.AWAY), 1)
            assert len(got) == 1 and isinstance(got[0], RequestFailed)
            assert got[0].code == AppErrorCode.NOT_LOGGED_IN


async def test_a_lost_session_expires(tmp_path: Path) -> None:
    async with open_test_server(tmp_path, resume_timeout=0.05) as server:
        app = _app(server)
        async with connect_client(server) as alice, connect_client(server) as bob:
            await _setup(server, alice, bob)
            await alice.stream.aclose()
            context = server.context
            assert context is not None
            await _until(lambda: not context.registry.devices("alice"))
            assert app.resume.detached == 0


async def test_a_resumed_session_can_be_resumed_again(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        app = _app(server)
        async with connect_client(server) as alice, connect_client(server) as bob:
            await _setup(server, alice, bob)
            client = alice
            async with contextlib.AsyncExitStack() as stack:
                for rid in (3, 4, 5):
                    state = client.connection.resumption_state()
                    await client.stream.aclose()
                    await _until(lambda: app.resume.detached == 1)
                    client = await stack.enter_async_context(
                        connect_client(server, handshake=False)
                    )
                    client.connection.request_resume(state)
                    done = await client.do_handshake()
                    assert done.resumed and done.session_id == state.session_id
                    got = await _request(
                        client, SetPresence(rid=rid, status=PresenceStatus.AWAY), rid
                    )
                    assert got == [Ok(rid=rid)]
