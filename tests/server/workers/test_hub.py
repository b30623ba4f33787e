"""The hub on its own, driven through real links as a worker drives it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from elink_protocol.app import PresenceStatus, PresenceUpdate
from elink_server.node.codec import packet_from_value
from elink_server.node.hub import Hub
from elink_server.node.link import Link
from tests.helpers.server import WAIT, test_settings


class FakeWorker:
    """One end of a worker's link: records what the hub sends it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.link = Link(stream, name="worker")
        self.got: list[tuple[str, list[Any]]] = []
        self.changed = trio.Event()

    def on_message(self, op: str, args: list[Any]) -> None:
        self.got.append((op, args))
        self.changed.set()
        self.changed = trio.Event()

    def on_call(self, call_id: int, op: str, args: list[Any]) -> None:
        self.link.reply(call_id, {"pid": 1, "messages_stored": 0})

    async def until(self, op: str) -> list[Any]:
        with trio.fail_after(WAIT):
            while True:
                for seen, args in self.got:
                    if seen == op:
                        self.got.remove((seen, args))
                        return args
                await self.changed.wait()


@contextlib.asynccontextmanager
async def hub_with_workers(
    tmp_path: Path, count: int, **settings: Any
) -> AsyncIterator[tuple[Hub, list[FakeWorker], trio.Nursery]]:
    hub = Hub(test_settings(tmp_path, **settings))
    async with trio.open_nursery() as nursery:
        workers = []
        for index in range(count):
            ours, theirs = socket.socketpair(socket.AF_UNIX)
            await nursery.start(
                hub.serve, index, trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            )
            worker = FakeWorker(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
            nursery.start_soon(worker.link.run, worker.on_message, worker.on_call)
            worker.link.send("ready", 1000 + index)
            workers.append(worker)
        yield hub, workers, nursery
        nursery.cancel_scope.cancel()
    for worker in workers:
        await trio.aclose_forcefully(worker.stream)


async def test_a_login_given_up_at_once_frees_its_slot(tmp_path: Path) -> None:
    async with hub_with_workers(tmp_path, 1, max_logins=1) as (hub, (worker,), _):
        # Both reach the hub in one read: the give-up comes before the task
        # that would wait for the slot has even started.
        worker.link.send("login", 1, "alice", "127.0.0.1")
        worker.link.send("ldone", 1)
        worker.link.send("login", 2, "bob", "127.0.0.1")
        assert await worker.until("lgo") == [2]
        assert ("lgo", [1]) not in worker.got
        assert hub.admission.queue.running == 1
        worker.link.send("ldone", 2)
        with trio.fail_after(WAIT):
            while hub.admission.queue.running:
                await trio.sleep(0.001)


async def test_a_dead_worker_frees_its_slots_and_its_devices(tmp_path: Path) -> None:
    async with hub_with_workers(tmp_path, 2, max_logins=1) as (hub, workers, _):
        alive, dying = workers
        session = b"s" * 16
        update = await dying.link.call("online", "bob", "pc", "pc", session, 1_000)
        assert packet_from_value(update).status is PresenceStatus.ONLINE  # type: ignore[attr-defined]
        dying.link.send("login", 1, "carol", "127.0.0.1")
        assert await dying.until("lgo") == [1]
        alive.link.send("login", 7, "dave", "127.0.0.1")
        assert await alive.until("lpos") == [7, 0, 50]  # queued behind carol's login
        assert hub.locate("bob") == {"pc": 1}

        await trio.aclose_forcefully(dying.stream)  # the worker process died
        # Its login slot goes to the next in line, its device goes offline,
        # and another worker is asked to tell bob's followers.
        assert await alive.until("lgo") == [7]
        user, value = await alive.until("publish")
        gone = packet_from_value(value)
        assert user == "bob" and isinstance(gone, PresenceUpdate)
        assert (gone.device, gone.status) == ("pc", PresenceStatus.OFFLINE)
        assert hub.locate("bob") == {}
        assert hub.statistics().sessions == 0 and hub.statistics().workers == 1
