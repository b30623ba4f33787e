"""Session resumption when the new connection reaches another worker than
the one holding the session (§6.5.6, "Handover" in elink_server/node/hub.py):
the session is handed over with its state and what was sent to it
meanwhile, and a burst of messages cut in the middle still arrives exactly
once (the check of tests/server/test_resume_messaging.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from elink_protocol import ErrorCode, Packet
from elink_protocol.app import (
    Follow,
    MessageAccepted,
    Ok,
    PresenceStatus,
    PresenceUpdate,
    RequestFailed,
    SetPresence,
)
from elink_server.host import Server
from tests.helpers.burst import Device, answer, check_log, check_sent, cut_and_resume, say
from tests.helpers.node import TestNode, open_test_node
from tests.helpers.server import WAIT, LoopbackClient, add_user, connect_client, login

BUSY, AWAY = PresenceStatus.BUSY, PresenceStatus.AWAY


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


async def _setup(node: TestNode, alice: LoopbackClient, bob: LoopbackClient) -> None:
    """alice follows bob; bob logs in; alice sees him come online."""
    await add_user(node.workers[0], "alice")
    await add_user(node.workers[0], "bob")
    await login(alice, "alice", device_id="pc")
    assert await _request(alice, Follow(rid=2, user="bob"), 2) == [Ok(rid=2)]
    await login(bob, "bob", device_id="phone")
    online = await alice.next_event()
    assert isinstance(online, PresenceUpdate) and online.status is PresenceStatus.ONLINE


def _devices(server: Server, user: str) -> list[str]:
    assert server.context is not None
    return [d.device_id for d in server.context.registry.devices(user)]


async def _resume_on(server: Server, state: object, stack: contextlib.AsyncExitStack) -> object:
    again = await stack.enter_async_context(connect_client(server, handshake=False))
    again.connection.request_resume(state)  # type: ignore[arg-type]
    done = await again.do_handshake()
    assert done.resumed
    return again


async def test_a_lost_session_resumes_on_another_worker(tmp_path: Path) -> None:
    async with (
        open_test_node(tmp_path, workers=3) as node,
        connect_client(node.workers[0]) as alice,
        connect_client(node.workers[1]) as bob,
        contextlib.AsyncExitStack() as stack,
    ):
        with trio.fail_after(30):
            await _setup(node, alice, bob)
            state = alice.connection.resumption_state()
            await alice.stream.aclose()  # the TCP connection dies: no Close
            holder = node.workers[0]
            assert holder.context is not None
            (detached,) = holder.context.registry.devices("alice")
            await _until(lambda: detached.peer.is_closed)
            # While alice is gone, bob (worker 1) changes status: the push is
            # kept for her on worker 0.
            assert await _request(bob, SetPresence(rid=2, status=BUSY), 2) == [Ok(rid=2)]
            await _until(lambda: len(detached.peer.undelivered) == 1)

            again = await _resume_on(node.workers[2], state, stack)
            assert isinstance(again, LoopbackClient)
            # Logged in already (no Login): the missed update, once.
            got = await _request(again, SetPresence(rid=3, status=AWAY), 3)
            assert [type(p).__name__ for p in got] == ["PresenceUpdate", "Ok"]
            update = got[0]
            assert isinstance(update, PresenceUpdate)
            assert (update.user, update.status) == ("bob", BUSY)
            # The session lives on worker 2 now, and only there.
            assert node.hub.locate("alice") == {"pc": 2}
            assert _devices(node.workers[2], "alice") == ["pc"]
            assert _devices(node.workers[0], "alice") == []
            assert node.hub.statistics().handovers_total == 1


async def test_resume_on_another_worker_closes_the_open_connection_first(tmp_path: Path) -> None:
    async with (
        open_test_node(tmp_path, workers=2) as node,
        connect_client(node.workers[0]) as alice,
        connect_client(node.workers[1]) as bob,
        contextlib.AsyncExitStack() as stack,
    ):
        with trio.fail_after(30):
            await _setup(node, alice, bob)
            state = alice.connection.resumption_state()
            # Sent on the old connection, which the client never reads (as
            # if the bytes were lost with the network).
            assert await _request(bob, SetPresence(rid=2, status=BUSY), 2) == [Ok(rid=2)]
            assert await alice.stream.receive_some(65536)
            again = await _resume_on(node.workers[1], state, stack)
            assert isinstance(again, LoopbackClient)
            got = await _request(again, SetPresence(rid=3, status=AWAY), 3)
            assert [type(p).__name__ for p in got] == ["PresenceUpdate", "Ok"]
            # The old connection was closed first (§6.5.6).
            closed = await alice.wait_closed()
            assert closed.code == ErrorCode.NO_ERROR
            assert node.hub.locate("alice") == {"pc": 1}


async def test_a_session_resumes_again_and_again_across_workers(tmp_path: Path) -> None:
    async with (
        open_test_node(tmp_path, workers=2) as node,
        connect_client(node.workers[0]) as alice,
        connect_client(node.workers[1]) as bob,
        contextlib.AsyncExitStack() as stack,
    ):
        with trio.fail_after(30):
            await _setup(node, alice, bob)
            client = alice
            for hop, worker in enumerate((1, 0, 0, 1)):
                state = client.connection.resumption_state()
                await client.stream.aclose()
                client = await _resume_on(node.workers[worker], state, stack)  # type: ignore[assignment]
                rid = 10 + hop
                assert await _request(client, SetPresence(rid=rid, status=AWAY), rid) == [
                    Ok(rid=rid)
                ]
                assert node.hub.locate("alice") == {"pc": worker}
            assert node.hub.statistics().handovers_total == 3


# --- a burst cut in the middle (as tests/server/test_resume_messaging.py) -----------

BURST = 200
CUT_POINTS = [1, 77, 199]


@contextlib.asynccontextmanager
async def three_devices(node: TestNode) -> AsyncIterator[list[Device]]:
    """alice on pc (worker 0) and phone (worker 1), bob on pc (worker 2)."""
    await add_user(node.workers[0], "alice")
    await add_user(node.workers[0], "bob")
    async with contextlib.AsyncExitStack() as stack:
        devices = []
        for user, device_id, worker in (
            ("alice", "pc", 0),
            ("alice", "phone", 1),
            ("bob", "pc", 2),
        ):
            client = await stack.enter_async_context(connect_client(node.workers[worker]))
            await login(client, user, device_id=device_id)
            devices.append(Device(f"{user}/{device_id}", client))
        yield devices


@pytest.mark.parametrize("cut_after", CUT_POINTS)
async def test_receiver_resumed_on_another_worker_gets_every_message_once(
    tmp_path: Path, cut_after: int
) -> None:
    async with (
        open_test_node(tmp_path, workers=3) as node,
        three_devices(node) as devices,
        contextlib.AsyncExitStack() as stack,
    ):
        a_pc, a_phone, bob = devices
        half = BURST // 2
        sent = {
            a_pc: [f"pc-{i}" for i in range(half)],
            a_phone: [f"phone-{i}" for i in range(half)],
        }
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for sender, cms in sent.items():
                    for i, cm in enumerate(cms):
                        sender.client.connection.queue(say(100 + i, cm, "bob"))
                    nursery.start_soon(sender.client.flush)
                    nursery.start_soon(
                        sender.read_until,
                        lambda s=sender: len(s.accepted) >= half and s.cursor >= BURST,
                    )

                async def bob_side() -> None:
                    # bob was on worker 2: he comes back on worker 0.
                    await cut_and_resume(node.workers[0], bob, cut_after, stack)
                    await bob.read_until(lambda: bob.cursor >= BURST)

                nursery.start_soon(bob_side)
            for device in devices:
                device.check_pushes(BURST)
                await check_log(device, 1000)
            for sender, cms in sent.items():
                check_sent(sender, cms)
            assert node.hub.locate("bob") == {"pc": 0}


@pytest.mark.parametrize("cut_after", CUT_POINTS)
async def test_sender_resumed_on_another_worker_sends_every_message_once(
    tmp_path: Path, cut_after: int
) -> None:
    async with (
        open_test_node(tmp_path, workers=3) as node,
        three_devices(node) as devices,
        contextlib.AsyncExitStack() as stack,
    ):
        a_pc, a_phone, bob = devices
        cms = [f"b-{i}" for i in range(BURST)]
        with trio.fail_after(60):
            for i, cm in enumerate(cms):
                bob.client.connection.queue(say(100 + i, cm, "alice"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob.client.flush)
                for reader in (a_pc, a_phone):
                    nursery.start_soon(reader.read_until, lambda r=reader: r.cursor >= BURST)
                # bob (worker 2) is cut and comes back on worker 1.
                await cut_and_resume(node.workers[1], bob, cut_after, stack)
                await bob.read_until(lambda: len(bob.accepted) >= BURST and bob.cursor >= BURST)
            for device in devices:
                device.check_pushes(BURST)
                await check_log(device, 1000)
            check_sent(bob, cms)
            assert sorted(a.seq for a in bob.accepted) == list(range(1, BURST + 1))
            assert [e.message.client_msg_id for e in a_pc.applied] == cms
            original = next(a for a in bob.accepted if a.client_msg_id == cms[0])
            await bob.client.send(say(9000, cms[0], "alice"))
            again = await answer(bob, MessageAccepted, 9000)
            assert again.duplicate and again.msg_id == original.msg_id
