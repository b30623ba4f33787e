"""A device that applies pushed log entries by the rules of §11.5.3 and
counts them, for the tests of messaging across lost connections (see
tests/server/test_resume_messaging.py for the check itself)."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import TypeVar

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
from tests.helpers.server import LoopbackClient, connect_client

P = TypeVar("P", bound=Packet)


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
    the session on a new connection to ``server`` (which may be another
    worker of the node than the one the device was on)."""
    await device.read_until(lambda: device.packets >= cut_after)
    state = device.client.connection.resumption_state()
    await device.client.stream.aclose()
    again = await stack.enter_async_context(connect_client(server, handshake=False))
    again.connection.request_resume(state)
    done = await again.do_handshake()
    assert done.resumed and done.session_id == state.session_id
    device.client = again


def check_sent(device: Device, cms: list[str]) -> None:
    """Each message ``device`` sent was accepted exactly once, as new."""
    counts = Counter(a.client_msg_id for a in device.accepted)
    assert counts == Counter(cms), device.name
    assert not [a for a in device.accepted if a.duplicate], device.name
