"""Messaging survives session resumption (issue 3, docs/protocol.md §6.5,
§11.5): a device whose TCP connection dies in the middle of a burst resumes
its session and ends up with every message exactly once.

**The check** (§11.5.3).  Each device counts how often each log entry was
pushed to it, over all its connections, and applies entries in cursor
order, keeping one pushed ahead of its cursor until the gap fills (which
§11.5.3 allows; the server may push concurrently committed entries out of
order).  Pushes are hints the spec lets a server drop under load, but these
bursts stay far below every outbox and queue bound and the transport below
them is exactly-once (§6.5.5), so here the server must do better than the
minimum: across the cut, every entry of the device's log is pushed **exactly
once** (no duplicate, none missing) and the device's cursor reaches the head
by pushes alone.  Then a Pull from that cursor must return an empty page
whose ``hd`` is the cursor (nothing the device has not seen is new), and
the log pulled from 0 must list exactly the messages the device applied, in
order.  Sequence numbers in the conversation run 1..N without repeats, each
sending device's messages keep its sending order, and every sender gets one
MessageAccepted per message, never marked ``dup``.

Connections are cut by closing the client's socket without a Close, after
the client processed a given number of packets; the resumption state is
taken right after that last processed packet, as a real client would.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from elink_protocol import Packet
from elink_protocol.app import (
    EventPush,
    MessageAccepted,
    MessageEvent,
    Pull,
    PullResult,
    SendMessage,
    text_content,
)
from elink_server.host import Server
from tests.helpers.server import (
    LoopbackClient,
    add_user,
    connect_client,
    login,
    open_test_server,
)

P = TypeVar("P", bound=Packet)

#: Messages per burst.
BURST = 200
#: Bound on a whole scenario (each single wait is bounded by WAIT as well).
SCENARIO_TIMEOUT = 60.0


class Device:
    """A logged-in client and what it applied, by the rules of §11.5.3."""

    def __init__(self, name: str, client: LoopbackClient) -> None:
        self.name = name
        self.client = client
        self.cursor = 0
        self.applied: list[MessageEvent] = []
        self.pushed: Counter[int] = Counter()
        """How many times each entry number was pushed."""
        self.held: dict[int, MessageEvent] = {}
        """Entries pushed ahead of the cursor, kept until the gap fills."""
        self.accepted: list[MessageAccepted] = []
        self.packets = 0
        """Application packets processed so far (on every connection)."""

    def take(self, packet: Packet) -> None:
        """Process one packet from the server."""
        self.packets += 1
        if isinstance(packet, MessageAccepted):
            self.accepted.append(packet)
        elif isinstance(packet, EventPush):
            event = packet.event
            assert isinstance(event, MessageEvent), event
            self.pushed[event.cursor] += 1
            if event.cursor > self.cursor:
                self.held[event.cursor] = event
            while self.cursor + 1 in self.held:
                self.applied.append(self.held.pop(self.cursor + 1))
                self.cursor += 1

    @property
    def duplicates(self) -> list[int]:
        """Entry numbers pushed more than once."""
        return sorted(c for c, n in self.pushed.items() if n > 1)

    async def read_until(self, done: object) -> None:
        """Process packets until ``done()`` holds or a push repeats."""
        while not done() and not self.duplicates:  # type: ignore[operator]
            event = await self.client.next_event()
            assert isinstance(event, Packet), f"{self.name}: {event}"
            self.take(event)

    def check_pushes(self, total: int) -> None:
        """Every entry of a ``total``-entry log was pushed exactly once."""
        assert self.duplicates == [], self.name
        assert sorted(self.pushed) == list(range(1, total + 1)), self.name
        assert (self.cursor, self.held) == (total, {}), self.name
        seqs = [e.message.seq for e in self.applied]
        assert seqs == list(range(1, total + 1)), self.name


def say(rid: int, cm: str, to: str) -> SendMessage:
    return SendMessage(rid=rid, client_msg_id=cm, to=to, kind="text", content=text_content(cm))


async def answer(device: Device, cls: type[P], rid: int) -> P:
    """Read until the answer ``rid`` arrives; pushes on the way are taken."""
    while True:
        event = await device.client.next_event()
        assert isinstance(event, Packet), f"{device.name}: {event}"
        if isinstance(event, cls) and getattr(event, "rid", None) == rid:
            return event
        device.take(event)


async def check_log(device: Device, rid: int) -> None:
    """A Pull from the device's cursor shows nothing new, and the log pulled
    from 0 is exactly what the device applied."""
    await device.client.send(Pull(rid=rid, after=device.cursor))
    page = await answer(device, PullResult, rid)
    assert (page.events, page.next_cursor, page.head, page.more) == (
        (),
        device.cursor,
        device.cursor,
        False,
    ), device.name
    log: list[int] = []
    after = 0
    while True:
        rid += 1
        await device.client.send(Pull(rid=rid, after=after, limit=1000))
        page = await answer(device, PullResult, rid)
        for event in page.events:
            assert isinstance(event, MessageEvent), event
            log.append(event.message.msg_id)
        after = page.next_cursor
        if not page.more:
            break
    assert log == [e.message.msg_id for e in device.applied], device.name


async def cut_and_resume(
    server: Server, device: Device, cut_after: int, stack: contextlib.AsyncExitStack
) -> None:
    """Process packets until ``cut_after`` were processed, take the
    resumption state, drop the TCP connection without a Close, and resume
    the session on a new connection."""
    await device.read_until(lambda: device.packets >= cut_after)
    state = device.client.connection.resumption_state()
    await device.client.stream.aclose()
    again = await stack.enter_async_context(connect_client(server, handshake=False))
    again.connection.request_resume(state)
    done = await again.do_handshake()
    assert done.resumed and done.session_id == state.session_id
    device.client = again


@contextlib.asynccontextmanager
async def three_devices(tmp_path: Path) -> AsyncIterator[tuple[Server, list[Device]]]:
    """A server; alice on pc and phone, bob on pc, all logged in."""
    async with open_test_server(tmp_path) as server, contextlib.AsyncExitStack() as stack:
        await add_user(server, "alice")
        await add_user(server, "bob")
        devices = []
        for user, device_id in (("alice", "pc"), ("alice", "phone"), ("bob", "pc")):
            client = await stack.enter_async_context(connect_client(server))
            await login(client, user, device_id=device_id)
            devices.append(Device(f"{user}/{device_id}", client))
        yield server, devices


def check_sent(device: Device, cms: list[str]) -> None:
    """Each message ``device`` sent was accepted exactly once, as new."""
    counts = Counter(a.client_msg_id for a in device.accepted)
    assert counts == Counter(cms), device.name
    assert not [a for a in device.accepted if a.duplicate], device.name


#: Where bob's connection is cut: after this many processed packets.
CUT_POINTS = [1, 23, 77, 150, 199]


@pytest.mark.parametrize("cut_after", CUT_POINTS)
async def test_receiver_cut_mid_burst_gets_every_message_once(
    tmp_path: Path, cut_after: int
) -> None:
    async with three_devices(tmp_path) as (server, devices), contextlib.AsyncExitStack() as stack:
        a_pc, a_phone, bob = devices
        half = BURST // 2
        sent = {
            a_pc: [f"pc-{i}" for i in range(half)],
            a_phone: [f"phone-{i}" for i in range(half)],
        }
        with trio.fail_after(SCENARIO_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for sender, cms in sent.items():
                    # Pipelined: every request is queued before any answer.
                    for i, cm in enumerate(cms):
                        sender.client.connection.queue(say(100 + i, cm, "bob"))
                    nursery.start_soon(sender.client.flush)
                    nursery.start_soon(
                        sender.read_until,
                        lambda s=sender: len(s.accepted) >= half and s.cursor >= BURST,
                    )

                async def bob_side() -> None:
                    await cut_and_resume(server, bob, cut_after, stack)
                    await bob.read_until(lambda: bob.cursor >= BURST)

                nursery.start_soon(bob_side)
            for device in devices:
                device.check_pushes(BURST)
                await check_log(device, 1000)
            for sender, cms in sent.items():
                check_sent(sender, cms)
            # Per sending device, bob saw its messages in its sending order.
            for prefix, cms in (("pc-", sent[a_pc]), ("phone-", sent[a_phone])):
                mine = [
                    e.message.client_msg_id
                    for e in bob.applied
                    if e.message.client_msg_id.startswith(prefix)
                ]
                assert mine == cms


@pytest.mark.parametrize("cut_after", CUT_POINTS)
async def test_sender_cut_mid_burst_sends_every_message_once(
    tmp_path: Path, cut_after: int
) -> None:
    async with three_devices(tmp_path) as (server, devices), contextlib.AsyncExitStack() as stack:
        a_pc, a_phone, bob = devices
        cms = [f"b-{i}" for i in range(BURST)]
        with trio.fail_after(SCENARIO_TIMEOUT):
            for i, cm in enumerate(cms):
                bob.client.connection.queue(say(100 + i, cm, "alice"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob.client.flush)
                for reader in (a_pc, a_phone):
                    nursery.start_soon(reader.read_until, lambda r=reader: r.cursor >= BURST)
                # bob processes answers and pushes of his own messages, is
                # cut, resumes: the library re-sends what the server did
                # not process, the server re-sends what bob did not.
                await cut_and_resume(server, bob, cut_after, stack)
                await bob.read_until(lambda: len(bob.accepted) >= BURST and bob.cursor >= BURST)
            for device in devices:
                device.check_pushes(BURST)
                await check_log(device, 1000)
            check_sent(bob, cms)
            assert len({a.msg_id for a in bob.accepted}) == BURST
            assert sorted(a.seq for a in bob.accepted) == list(range(1, BURST + 1))
            assert [e.message.client_msg_id for e in a_pc.applied] == cms
            # A retry in the same session is answered from the store.
            original = next(a for a in bob.accepted if a.client_msg_id == cms[0])
            await bob.client.send(say(9000, cms[0], "alice"))
            again = await answer(bob, MessageAccepted, 9000)
            assert again.duplicate and again.msg_id == original.msg_id
