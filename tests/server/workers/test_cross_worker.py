"""Users on different workers of one node get exactly what users of one
worker get: messages in log order, receipts, recall, multi-device sync,
presence and follow notifications, session replacement, node-wide login
admission, and gap-free sequence numbers under concurrent senders.

The workers run in this process around a real hub (``tests/helpers/
node.py``), each on its own port, so every client reaches the worker the
test chose; tests/node/ runs real worker processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from elink_protocol import ErrorCode, Packet
from elink_protocol.app import (
    AppErrorCode,
    Delivered,
    DeliveryState,
    EventPush,
    Follow,
    LoginQueued,
    Logout,
    MarkRead,
    MessageAccepted,
    MessageEvent,
    MessageStatus,
    Ok,
    PresenceResult,
    PresenceStatus,
    PresenceUpdate,
    Pull,
    PullResult,
    QueryPresence,
    QueryStatus,
    Recall,
    RecallEvent,
    RecallOk,
    ReceiptKind,
    RequestFailed,
    SendMessage,
    SetPresence,
    StatusEvent,
    StatusUpdate,
    text_content,
)
from elink_server.host import Server
from tests.helpers.node import TestNode, open_test_node
from tests.helpers.server import (
    WAIT,
    LoopbackClient,
    add_user,
    connect_client,
    login,
    login_answer,
)

P = TypeVar("P", bound=Packet)

ONLINE, BUSY, OFFLINE = PresenceStatus.ONLINE, PresenceStatus.BUSY, PresenceStatus.OFFLINE


class Device:
    """A logged-in client that sorts what it receives."""

    def __init__(self, name: str, client: LoopbackClient) -> None:
        self.name = name
        self.client = client
        self.entries: list[Any] = []
        """Pushed log entries, in arrival order."""
        self.notices: list[StatusUpdate] = []
        """StatusUpdate notices, in arrival order."""
        self.presence: list[PresenceUpdate] = []
        """PresenceUpdate notices, in arrival order."""
        self.answers: dict[int, Packet] = {}

    def take(self, packet: object) -> None:
        assert isinstance(packet, Packet), f"{self.name}: {packet}"
        if isinstance(packet, EventPush):
            self.entries.append(packet.event)
        elif isinstance(packet, StatusUpdate):
            self.notices.append(packet)
        elif isinstance(packet, PresenceUpdate):
            self.presence.append(packet)
        else:
            rid = getattr(packet, "rid", None)
            assert rid is not None, f"{self.name}: unexpected {packet}"
            self.answers[rid] = packet

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.take(await self.client.next_event())

    async def answer(self, rid: int, cls: type[P]) -> P:
        await self.until(lambda: rid in self.answers)
        answer = self.answers.pop(rid)
        assert isinstance(answer, cls), f"{self.name}: {answer}"
        return answer

    async def call(self, packet: Packet, cls: type[P]) -> P:
        await self.client.send(packet)
        return await self.answer(packet.rid, cls)  # type: ignore[attr-defined]

    def cursors(self) -> list[int]:
        return [e.cursor for e in self.entries]


@contextlib.asynccontextmanager
async def devices(node: TestNode, *placements: tuple[str, str, int]) -> AsyncIterator[list[Device]]:
    """Log ``(user, device, worker)`` in, each on the worker named."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for user, device_id, worker in placements:
            client = await stack.enter_async_context(connect_client(node.workers[worker]))
            await login(client, user, device_id=device_id)
            out.append(Device(f"{user}/{device_id}@{worker}", client))
        yield out


async def users(server: Server, *names: str) -> None:
    for name in names:
        await add_user(server, name)


def say(rid: int, cm: str, to: str) -> SendMessage:
    return SendMessage(rid=rid, client_msg_id=cm, to=to, kind="text", content=text_content(cm))


async def pull_all(device: Device, rid: int) -> list[Any]:
    """The device's whole log, by Pull."""
    log: list[Any] = []
    after = 0
    while True:
        rid += 1
        page = await device.call(Pull(rid=rid, after=after, limit=1000), PullResult)
        log += page.events
        after = page.next_cursor
        if not page.more:
            return log


BURST = 40


async def test_messages_receipts_and_recall_across_three_workers(tmp_path: Path) -> None:
    async with open_test_node(tmp_path, workers=3) as node:
        await users(node.workers[0], "alice", "bob")
        async with devices(node, ("alice", "pc", 0), ("alice", "phone", 1), ("bob", "pc", 2)) as (
            pc,
            phone,
            bob,
        ):
            with trio.fail_after(30):
                for i in range(BURST):
                    pc.client.connection.queue(say(100 + i, f"m{i}", "bob"))
                await pc.client.flush()
                accepted = [await pc.answer(100 + i, MessageAccepted) for i in range(BURST)]
                assert [a.seq for a in accepted] == list(range(1, BURST + 1))
                # Pushed across workers, in log order, once each.
                for device in (pc, phone, bob):
                    await device.until(lambda d=device: len(d.entries) >= BURST)
                    assert device.cursors() == list(range(1, BURST + 1)), device.name
                    assert [e.message.seq for e in device.entries] == list(range(1, BURST + 1))

                # bob's device confirms: delivery receipts reach both of
                # alice's devices on the other workers.
                await bob.call(Delivered(rid=1, cursor=BURST), Ok)
                for device in (pc, phone):
                    await device.until(lambda d=device: len(d.notices) >= BURST)
                    assert {(n.status, n.user, n.device) for n in device.notices} == {
                        (ReceiptKind.DELIVERED, "bob", "pc")
                    }
                    assert sorted(n.msg_id for n in device.notices) == [a.msg_id for a in accepted]
                    device.notices.clear()

                # Read receipts: entries in both logs, live notices to alice.
                await bob.call(MarkRead(rid=2, conversation="d:alice:bob", up_to_seq=BURST), Ok)
                for device in (pc, phone):
                    await device.until(
                        lambda d=device: len(d.entries) >= 2 * BURST and len(d.notices) >= BURST
                    )
                    reads = device.entries[BURST:]
                    assert [e.cursor for e in reads] == list(range(BURST + 1, 2 * BURST + 1))
                    assert all(isinstance(e, StatusEvent) and e.by == "bob" for e in reads)
                    assert {n.status for n in device.notices} == {ReceiptKind.READ}
                await bob.until(lambda: len(bob.entries) >= 2 * BURST)
                assert bob.cursors() == list(range(1, 2 * BURST + 1))

                # Recall from worker 0 reaches worker 2 and worker 1.
                first = accepted[0].msg_id
                recalled = await pc.call(Recall(rid=3, msg_id=first), RecallOk)
                for device in (pc, phone, bob):
                    await device.until(lambda d=device: len(d.entries) >= 2 * BURST + 1)
                    event = device.entries[-1]
                    assert isinstance(event, RecallEvent) and event.msg_id == first, device.name
                    assert event.at_ms == recalled.recalled_at_ms

                status = await pc.call(QueryStatus(rid=4, msg_id=accepted[1].msg_id), MessageStatus)
                assert status.state is DeliveryState.READ
                assert [r.user for r in status.read] == ["bob"]

                # Each device's pushes were its whole log, nothing more.
                for rid, device in ((10, pc), (10, phone), (10, bob)):
                    log = await pull_all(device, rid)
                    assert [e.cursor for e in log] == device.cursors(), device.name
                    assert isinstance(log[0], MessageEvent) and log[0].message.content is None


async def test_concurrent_senders_on_three_workers_share_one_sequence(tmp_path: Path) -> None:
    async with open_test_node(tmp_path, workers=3) as node:
        await users(node.workers[0], "alice", "bob")
        async with devices(node, ("alice", "pc", 0), ("alice", "phone", 1), ("bob", "pc", 2)) as (
            pc,
            phone,
            bob,
        ):
            senders = ((pc, "bob"), (phone, "bob"), (bob, "alice"))
            with trio.fail_after(30):
                for n, (device, to) in enumerate(senders):
                    for i in range(BURST):
                        device.client.connection.queue(say(100 + i, f"s{n}-{i}", to))
                async with trio.open_nursery() as nursery:
                    for device, _ in senders:
                        nursery.start_soon(device.client.flush)
                seqs: list[int] = []
                for device, _ in senders:
                    for i in range(BURST):
                        seqs.append((await device.answer(100 + i, MessageAccepted)).seq)
                total = 3 * BURST
                assert sorted(seqs) == list(range(1, total + 1))
                for device, _ in senders:
                    await device.until(lambda d=device: len(d.entries) >= total)
                    assert device.cursors() == list(range(1, total + 1)), device.name
                    assert sorted(e.message.seq for e in device.entries) == list(
                        range(1, total + 1)
                    )


async def _presence(device: Device) -> PresenceUpdate:
    await device.until(lambda: bool(device.presence))
    return device.presence.pop(0)


async def test_presence_and_follows_span_the_workers(tmp_path: Path) -> None:
    async with open_test_node(tmp_path, workers=3) as node:
        await users(node.workers[0], "bob", "carol")
        async with contextlib.AsyncExitStack() as stack:
            with trio.fail_after(30):
                (carol,) = await stack.enter_async_context(devices(node, ("carol", "pc", 2)))
                await carol.call(Follow(rid=2, user="bob"), Ok)
                (phone,) = await stack.enter_async_context(devices(node, ("bob", "phone", 0)))
                update = await _presence(carol)
                assert (update.user, update.device, update.status) == ("bob", "phone", ONLINE)
                await phone.call(SetPresence(rid=2, status=BUSY, note="meeting"), Ok)
                update = await _presence(carol)
                assert (update.status, update.aggregated) == (BUSY, BUSY)
                (pc,) = await stack.enter_async_context(devices(node, ("bob", "pc", 1)))
                for device in (carol, phone):
                    update = await _presence(device)
                    assert (update.device, update.status, update.aggregated) == (
                        "pc",
                        ONLINE,
                        ONLINE,
                    )

                result = await carol.call(
                    QueryPresence(rid=3, users=("bob", "nobody")), PresenceResult
                )
                bob_entry, nobody = result.entries
                assert nobody.status is OFFLINE
                assert bob_entry.status is ONLINE
                assert {(d.device, d.status) for d in bob_entry.devices} == {
                    ("pc", ONLINE),
                    ("phone", BUSY),
                }

                await pc.call(Logout(rid=3), Ok)
                for device in (carol, phone):
                    update = await _presence(device)
                    assert (update.device, update.status, update.aggregated) == (
                        "pc",
                        OFFLINE,
                        BUSY,
                    )
                assert node.hub.locate("bob") == {"phone": 0}


async def test_a_login_on_another_worker_replaces_the_session(tmp_path: Path) -> None:
    async with open_test_node(tmp_path, workers=2) as node:
        await users(node.workers[0], "alice", "carol")
        async with devices(node, ("carol", "pc", 1)) as (carol,):
            with trio.fail_after(30):
                await carol.call(Follow(rid=2, user="alice"), Ok)
                async with connect_client(node.workers[0]) as first:
                    await login(first, "alice", device_id="pc")
                    assert (await _presence(carol)).status is ONLINE
                    async with connect_client(node.workers[1]) as second:
                        await login(second, "alice", device_id="pc")
                        closed = await first.wait_closed()
                        assert closed.by_peer and closed.code == AppErrorCode.SESSION_REPLACED
                        # The device never went offline: carol hears nothing.
                        result = await carol.call(
                            QueryPresence(rid=3, users=("alice",)), PresenceResult
                        )
                        assert carol.presence == []
                        assert result.entries[0].status is ONLINE
                        assert node.hub.locate("alice") == {"pc": 1}
                        await second.send(SetPresence(rid=2, status=BUSY))
                        assert await second.next_event() == Ok(rid=2)
                        assert (await _presence(carol)).status is BUSY


async def test_the_login_queue_and_failure_limits_hold_for_the_node(tmp_path: Path) -> None:
    n = 16
    async with open_test_node(
        tmp_path,
        workers=2,
        max_logins=2,
        login_queue=n,
        login_queue_interval=0.0,
        max_failed_logins_per_account=2,
    ) as node:
        await users(node.workers[0], *(f"user{i}" for i in range(n)), "mallory")
        queue = node.hub.admission.queue
        most_running = 0
        notices: dict[int, list[LoginQueued]] = {}

        async def watch() -> None:
            nonlocal most_running
            while True:
                most_running = max(most_running, queue.running)
                await trio.sleep(0)

        async def one(i: int, ready: trio.Event, go: trio.Event) -> None:
            async with connect_client(node.workers[i % 2]) as client:
                ready.set()
                with trio.fail_after(WAIT):
                    await go.wait()
                seen: list[LoginQueued] = []
                await login(client, f"user{i}", device_id="d", queued=seen)
                notices[i] = seen

        with trio.fail_after(30):
            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch)
                go = trio.Event()
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        ready = trio.Event()
                        nursery.start_soon(one, i, ready, go)
                        await ready.wait()
                    go.set()
                watcher.cancel_scope.cancel()
            assert sorted(notices) == list(range(n))
            assert most_running == 2  # both workers' logins shared the node's 2 slots
            queued = [seen for seen in notices.values() if seen]
            assert queued and queue.queued_total == len(queued)
            for seen in queued:
                positions = [notice.position for notice in seen]
                assert positions == sorted(set(positions), reverse=True)

            # Failed logins count for the node: two on worker 0, the third
            # attempt on worker 1 is refused before the password is checked.
            for rid in (1, 2):
                async with connect_client(node.workers[0]) as client:
                    failed = await login_answer(client, "mallory", "wrong", rid=rid)
                    assert isinstance(failed, RequestFailed)
                    assert failed.code == AppErrorCode.AUTH_FAILED
            async with connect_client(node.workers[1]) as client:
                limited = await login_answer(client, "mallory", "secret", rid=3)
                assert isinstance(limited, RequestFailed)
                assert limited.code == AppErrorCode.RATE_LIMITED


async def test_stopping_the_node_tells_every_session(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as clients:
        async with open_test_node(tmp_path, workers=2) as node:
            await users(node.workers[0], "alice", "bob")
            connected = []
            for index, name in enumerate(("alice", "bob")):
                client = await clients.enter_async_context(connect_client(node.workers[index]))
                await login(client, name)
                connected.append(client)
        with trio.fail_after(30):
            for client in connected:
                closed = await client.wait_closed()
                assert closed.by_peer and closed.code == ErrorCode.GOING_AWAY
