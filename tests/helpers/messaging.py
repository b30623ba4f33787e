"""A kit for testing the messaging services without sockets: the real store,
the real handlers, and fake peers that record what the server sends them."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from elink_protocol import Packet
from elink_protocol.app import Request, Response
from elink_server.peer import Handler, PeerGone
from elink_server.services.context import ServiceContext
from elink_server.services.messaging import messaging_handlers
from elink_server.settings import ServerSettings
from elink_server.storage import DeviceKind, open_sqlite_store

P = TypeVar("P", bound=Packet)

#: Bound on every wait of the kit (seconds).
WAIT = 10.0
#: The fake clock's start, in milliseconds since the epoch.
T0_MS = 1_700_000_000_000


class FakePeer:
    """Stands in for a connection: answers and pushes are recorded apart."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.answers: list[Response] = []
        self._push_in, self._pushes = trio.open_memory_channel[Packet](math.inf)
        self.closed = False
        self.stall: trio.Event | None = None
        """When set, pushes wait for this event (a peer that stopped reading)."""

    def __repr__(self) -> str:
        return f"FakePeer({self.label})"

    async def send(self, packet: Packet) -> None:
        if self.closed:
            raise PeerGone(f"{self.label} is closed")
        if isinstance(packet, Response):
            self.answers.append(packet)
            return
        if self.stall is not None:
            await self.stall.wait()
        self._push_in.send_nowait(packet)

    def send_room(self) -> int:
        """Like :meth:`Peer.send_room`: the fake's queue is unbounded."""
        return sys.maxsize

    async def wait_progress(self) -> None:
        """Like :meth:`Peer.wait_progress` (never needed: always room)."""
        await trio.lowlevel.checkpoint()

    async def push(self, cls: type[P]) -> P:
        """The next push, which must be a ``cls``."""
        with trio.fail_after(WAIT):
            packet = await self._pushes.receive()
        assert isinstance(packet, cls), packet
        return packet

    async def pushes(self) -> list[Packet]:
        """Every push sent so far (waits until the server is quiet)."""
        await trio.testing.wait_all_tasks_blocked()
        out = []
        while True:
            try:
                out.append(self._pushes.receive_nowait())
            except trio.WouldBlock:
                return out


class Clock:
    """The services' wall clock, moved by hand."""

    def __init__(self) -> None:
        self.ms = T0_MS

    def __call__(self) -> int:
        return self.ms


class Kit:
    """Users, devices and requests against the real handlers."""

    def __init__(self, ctx: ServiceContext, clock: Clock, handlers: dict[type[Packet], Handler]):
        self.ctx = ctx
        self.clock = clock
        self.handlers = handlers
        self._rid = 0

    async def user(self, name: str) -> None:
        await self.ctx.store.create_user(name, password_hash="scrypt$test", now=self.clock() / 1000)

    async def device(self, user: str, device: str, *, online: bool = True) -> FakePeer:
        """Register ``user``'s ``device`` and, if ``online``, bind a peer."""
        await self.ctx.store.register_device(
            user, device, kind=DeviceKind.PC, now=self.clock() / 1000
        )
        peer = FakePeer(f"{user}/{device}")
        if online:
            self.bind(peer, user, device)
        return peer

    def bind(self, peer: FakePeer, user: str, device: str) -> None:
        self.ctx.registry.bind(peer, user=user, device_id=device, kind="pc")  # type: ignore[arg-type]

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    async def call(self, peer: FakePeer, request: Request) -> Any:
        """Run ``request`` through its handler; return its final answer."""
        before = len(peer.answers)
        with trio.fail_after(WAIT):
            await self.handlers[type(request)](peer, request)  # type: ignore[arg-type]
        answers = [a for a in peer.answers[before:] if a.rid == request.rid]
        assert len(answers) == 1, answers
        return answers[0]


@contextlib.asynccontextmanager
async def open_kit(tmp_path: Path, **settings: Any) -> AsyncIterator[Kit]:
    """A store in ``tmp_path``, the messaging handlers over it, a fake clock.
    The outbox tasks run in a nursery cancelled on exit."""
    clock = Clock()
    async with open_sqlite_store(tmp_path / "elink.db") as store, trio.open_nursery() as nursery:
        ctx = ServiceContext(
            store=store, settings=ServerSettings(data_dir=tmp_path, **settings), now_ms=clock
        )
        handlers = messaging_handlers(ctx, spawn=nursery.start_soon)
        yield Kit(ctx, clock, handlers)
        nursery.cancel_scope.cancel()
