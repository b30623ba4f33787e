"""Reconnection users never write: cuts, lost packets and server restarts
under an SDK client lose nothing and double nothing (issue 4)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import elink_sdk
from elink_server.host import Server
from elink_server.storage import UnknownConversation
from tests.helpers.proxy import CuttingProxy, cutting_proxy
from tests.helpers.sdk import sdk_client, sdk_server
from tests.helpers.server import WAIT, open_test_server

CONVERSATION = "d:alice:bob"


async def stored_texts(server: Server) -> list[str]:
    """Every text of alice and bob's conversation, oldest first, from the store."""
    try:
        records = await server.store.history(CONVERSATION, limit=500)
    except UnknownConversation:
        return []
    return [r.content["text"] for r in reversed(records) if r.content is not None]


async def wait_stored(server: Server, count: int) -> None:
    with trio.fail_after(WAIT):
        while len(await stored_texts(server)) < count:
            await trio.sleep(0.01)


async def receive_texts(client: elink_sdk.Client, count: int) -> list[str]:
    """The texts of the next ``count`` messages ``client`` receives."""
    texts: list[str] = []
    with trio.fail_after(WAIT):
        async for event in client.events():
            if isinstance(event, elink_sdk.MessageReceived):
                assert event.text is not None
                texts.append(event.text)
                if len(texts) == count:
                    return texts
    raise AssertionError("events() ended early")


@contextlib.asynccontextmanager
async def through_proxy(
    server: Server, user: str, **options: Any
) -> AsyncIterator[tuple[elink_sdk.Client, CuttingProxy]]:
    async with cutting_proxy(server.port) as proxy, sdk_client(proxy.port, user, **options) as c:
        yield c, proxy


async def test_send_whose_request_was_lost_goes_out_once_after_resume(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        through_proxy(server, "alice") as (alice, proxy),
        sdk_client(server.port, "bob") as bob,
    ):
        proxy.drop_up = True  # the SendMessage is lost on the way
        async with trio.open_nursery() as nursery:
            sent: list[elink_sdk.SentMessage] = []

            async def send() -> None:
                sent.append(await alice.send_text("bob", "lost then resent"))

            nursery.start_soon(send)
            await trio.sleep(0.05)
            assert not sent
            proxy.drop_up = False
            assert proxy.cut() == 1
        assert len(sent) == 1 and not sent[0].duplicate
        assert await receive_texts(bob, 1) == ["lost then resent"]
        assert await stored_texts(server) == ["lost then resent"]
        stats = alice.statistics()
        assert stats.connections == 2 and stats.resumed == 1


async def test_send_whose_answer_was_lost_is_answered_once_after_resume(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        through_proxy(server, "alice") as (alice, proxy),
        sdk_client(server.port, "bob") as bob,
    ):
        proxy.drop_down = True  # stored by the server, but the answer is lost
        async with trio.open_nursery() as nursery:
            sent: list[elink_sdk.SentMessage] = []

            async def send() -> None:
                sent.append(await alice.send_text("bob", "answer lost"))

            nursery.start_soon(send)
            await wait_stored(server, 1)
            assert not sent
            proxy.drop_down = False
            proxy.cut()
        # The resumed session re-sent the original answer: not a duplicate.
        assert len(sent) == 1 and not sent[0].duplicate
        assert await receive_texts(bob, 1) == ["answer lost"]
        assert await stored_texts(server) == ["answer lost"]


async def test_events_continue_across_cuts_without_loss_or_repeat(tmp_path: Path) -> None:
    """Both ends cut again and again while 120 messages flow."""
    count = 120
    async with (
        sdk_server(tmp_path) as server,
        through_proxy(server, "alice") as (alice, alice_proxy),
        through_proxy(server, "bob") as (bob, bob_proxy),
    ):
        received: list[str] = []

        async def listen() -> None:
            received.extend(await receive_texts(bob, count))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            for i in range(count):
                if i % 15 == 7:
                    alice_proxy.cut()
                if i % 20 == 11:
                    bob_proxy.cut()
                await alice.send_text("bob", f"m{i}")
        assert received == [f"m{i}" for i in range(count)]
        assert await stored_texts(server) == received
        assert alice.statistics().connections > 1
        assert bob.statistics().connections > 1


class RestartableServer:
    """A test server that can be stopped and started again on the same port
    and data directory (in-memory sessions are lost, the store is not)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.server: Server | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()

    async def start(self, nursery: trio.Nursery) -> Server:
        first = self.port == 0
        self._stop, self._stopped = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[Server]) -> None:
            try:
                users = ("alice", "bob") if first else ()
                async with sdk_server(self.data_dir, users=users, port=self.port) as server:
                    task_status.started(server)
                    await self._stop.wait()
            finally:
                self._stopped.set()

        self.server = await nursery.start(run)
        self.port = self.server.port
        return self.server

    async def stop(self) -> None:
        self._stop.set()
        with trio.fail_after(WAIT):
            await self._stopped.wait()


async def test_server_restart_mid_stream(tmp_path: Path) -> None:
    """The server restarts (its sessions are lost): clients log in again,
    re-send what had no answer, and events continue exactly once."""
    before = [f"before {i}" for i in range(5)]
    during = [f"during {i}" for i in range(3)]
    after = [f"after {i}" for i in range(5)]
    node = RestartableServer(tmp_path)
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        async with sdk_client(node.port, "alice") as alice, sdk_client(node.port, "bob") as bob:
            for text in before:
                await alice.send_text("bob", text)
            received = await receive_texts(bob, 2)

            await node.stop()
            # Sends made while the server is down wait for it (bounded by
            # the request timeout), then go out exactly once.
            results: list[elink_sdk.SentMessage] = []

            async def send_during() -> None:
                for text in during:
                    results.append(await alice.send_text("bob", text))

            async with trio.open_nursery() as senders:
                senders.start_soon(send_during)
                await trio.sleep(0.2)
                assert not results and not alice.connected
                server = await node.start(nursery)

            for text in after:
                await alice.send_text("bob", text)
            received += await receive_texts(bob, len(before) + len(during) + len(after) - 2)
            assert received == before + during + after
            assert await stored_texts(server) == received
            assert [sent.seq for sent in results] == [6, 7, 8]
            assert alice.statistics().resumed == 0 and alice.statistics().connections == 2
        await node.stop()


async def test_session_replaced_is_final(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        sdk_client(server.port, "alice") as first,
        sdk_client(server.port, "alice") as second,  # same user, same device id
    ):
        with trio.fail_after(WAIT), pytest.raises(elink_sdk.SessionEnded) as info:
            async for _ in first.events():
                pass
        assert info.value.code_name == "SESSION_REPLACED"
        with pytest.raises(elink_sdk.SessionEnded):
            await first.send_text("bob", "from the replaced session")
        await second.send_text("bob", "from the new session")
        assert first.statistics().connections == 1


async def test_without_reconnect_a_cut_fails_the_client(tmp_path: Path) -> None:
    async with (
        sdk_server(tmp_path) as server,
        through_proxy(server, "alice", reconnect=False) as (alice, proxy),
    ):
        await alice.send_text("bob", "one")
        proxy.cut()
        with trio.fail_after(WAIT), pytest.raises(elink_sdk.ConnectionLost):
            async for _ in alice.events():
                pass
        with pytest.raises(elink_sdk.ConnectionLost):
            await alice.send_text("bob", "two")


async def test_send_while_down_fails_after_the_callers_deadline(tmp_path: Path) -> None:
    node = RestartableServer(tmp_path)
    async with trio.open_nursery() as nursery:
        await node.start(nursery)
        async with sdk_client(node.port, "alice") as alice:
            await node.stop()
            with pytest.raises(elink_sdk.DeadlineExceeded) as info:
                await alice.send_text("bob", "too late", timeout=0.2)
            assert isinstance(info.value, TimeoutError)
            server = await node.start(nursery)
            await alice.send_text("bob", "in time")
            # The first request was never sent: the server has only the second.
            assert await stored_texts(server) == ["in time"]
        await node.stop()


async def test_retry_after_a_deadline_with_the_same_id_stores_once(tmp_path: Path) -> None:
    """A request that was sent but not answered in time may still be stored;
    retrying with the same client message id never stores it twice."""
    async with (
        sdk_server(tmp_path) as server,
        through_proxy(server, "alice") as (alice, proxy),
    ):
        proxy.drop_down = True  # stored, but the answer does not come back
        with pytest.raises(elink_sdk.DeadlineExceeded):
            await alice.send_text("bob", "maybe", client_msg_id="retry-1", timeout=0.3)
        await wait_stored(server, 1)
        proxy.drop_down = False
        proxy.cut()
        again = await alice.send_text("bob", "maybe", client_msg_id="retry-1")
        assert again.duplicate and again.seq == 1
        assert await stored_texts(server) == ["maybe"]


async def test_server_down_at_connect_is_server_unavailable(tmp_path: Path) -> None:
    async with open_test_server(tmp_path) as server:
        port = server.port
    with trio.fail_after(WAIT), pytest.raises(elink_sdk.ServerUnavailable):
        async with sdk_client(port, "alice"):
            pass
