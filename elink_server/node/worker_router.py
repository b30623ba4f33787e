"""The router of one worker of a node: its own devices directly, the rest of
the node through the hub (:mod:`.hub` explains the other side).

Delivery is local first, then one message to the hub, which forwards it to
the workers that hold devices of the named users: ``deliver_entries`` posts
to this worker's outboxes exactly as a single worker does, and sends
``["ent", [[user, entry blob], ...]]``.  Entries from other workers arrive as
``ent`` and go through the same outboxes, so each worker pushes a user's
entries to its devices in log order (the outboxes' ordering step holds an
entry until the one before it arrived, whichever worker sent it).  Delivery
never waits for the hub; under overload the link drops pushes, which are
hints (§11.5.3).

Sessions, presence, resumption and logins are calls to the hub (see
:class:`~elink_server.services.router.Router`).  If the hub is gone (the
supervisor died) they answer as if nothing else existed, and the worker
shuts down (its link ended).

A session this worker handed to another one is **moved**: until the hub's
``moved`` arrives, entries and notices the hub routed here for its user are
forwarded to it with ``sess`` (see "Handover" in :mod:`.hub`).  While this
worker is *taking* a session over, its own deliveries name that session
(the hub may have placed it here already, and then routes nothing back for
what this worker claims to have delivered itself): the hub returns the
matching ones with ``sesse``/``sess``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog
import trio

from elink_protocol import Packet
from elink_protocol.app import (
    EventPush,
    PresenceEntry,
    PresenceStatus,
    PresenceUpdate,
    SyncEvent,
)
from elink_server.peer import Peer
from elink_server.services.context import DeviceSession, ServiceContext
from elink_server.services.login import LoginQueueFull, LoginRateLimited
from elink_server.services.router import Handover, Notify, Router, SessionHolder

from .codec import (
    entry_blob,
    entry_from_blob,
    handover_from_value,
    handover_value,
    packet_from_value,
    packet_value,
    presence_entry_from_value,
)
from .link import CallFailed, Link, LinkClosed

logger = structlog.get_logger("elink_server")

#: Retry hint for a login refused because the hub cannot be reached.
HUB_DOWN_RETRY_MS = 2000


class HubRouter(Router):
    """A worker's router (see the module docstring).  :meth:`run` serves the
    link; :meth:`attach` gives it the worker's services."""

    def __init__(self, ctx: ServiceContext, link: Link) -> None:
        super().__init__(ctx)
        self.link = link
        self._holder: SessionHolder | None = None
        self.stats: Callable[[], dict[str, Any]] = dict
        """The worker's counters, for the hub's ``stats`` call."""
        self._logins: dict[int, trio.MemorySendChannel[tuple[str, list[Any]]]] = {}
        self._tokens = itertools.count(1)
        self._moved: dict[bytes, str] = {}
        self._moved_by_user: dict[str, set[bytes]] = {}
        self._taking: set[bytes] = set()
        self._nursery: trio.Nursery | None = None

    def attach(self, holder: SessionHolder) -> None:
        self._holder = holder

    async def run(self) -> None:
        """Serve the hub link until it ends."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.link.run(self._on_message, self._on_call)
                nursery.cancel_scope.cancel()
        finally:
            for channel in self._logins.values():
                channel.close()

    # ---------------------------------------------------------------- delivery

    def deliver_entries(self, entries: Sequence[tuple[str, SyncEvent]]) -> None:
        if not entries:
            return
        self.outboxes.push_entries(entries)
        self._send(
            "ent",
            [[user, entry_blob(event)] for user, event in entries],
            list(self._taking),
            droppable=True,
        )

    def deliver_notice(
        self, users: Sequence[str], packet: Packet, *, exclude: Peer | None = None
    ) -> None:
        for user in users:
            self.outboxes.push_to_user(user, packet, exclude=exclude)
        self._send("note", list(users), packet_value(packet), list(self._taking), droppable=True)

    def _send(self, op: str, *args: Any, droppable: bool = False) -> None:
        with contextlib.suppress(LinkClosed):
            self.link.send(op, *args, droppable=droppable)

    # ------------------------------------------------------- sessions, presence

    async def _update(self, op: str, *args: Any) -> PresenceUpdate | None:
        try:
            value = await self.link.call(op, *args)
        except (LinkClosed, CallFailed):
            return None
        if value is None:
            return None
        packet = packet_from_value(value)
        assert isinstance(packet, PresenceUpdate)
        return packet

    async def session_started(self, session: DeviceSession) -> PresenceUpdate | None:
        return await self._update(
            "online",
            session.user,
            session.device_id,
            session.kind,
            session.session_id,
            self.ctx.now_ms(),
        )

    async def presence_changed(
        self, session: DeviceSession, status: PresenceStatus, note: str
    ) -> PresenceUpdate | None:
        return await self._update(
            "presence",
            session.user,
            session.device_id,
            session.kind,
            session.session_id,
            status.value,
            note,
            self.ctx.now_ms(),
        )

    async def session_ended(self, session: DeviceSession) -> PresenceUpdate | None:
        return await self._update(
            "gone",
            session.user,
            session.device_id,
            session.kind,
            session.session_id,
            self.ctx.now_ms(),
        )

    async def presence_of(self, users: Sequence[str]) -> list[PresenceEntry]:
        try:
            values = await self.link.call("query", list(users))
        except (LinkClosed, CallFailed):
            return [PresenceEntry(user=user, status=PresenceStatus.OFFLINE) for user in users]
        return [presence_entry_from_value(v) for v in values]

    # --------------------------------------------------------------- resumption

    async def take_session(
        self, session_id: bytes, proof: bytes, install: Callable[[Handover], None]
    ) -> bool:
        def on_reply(value: Any) -> bool:
            # Runs in the link's reader before any later message: the session
            # is bound here before anything the hub routes to it arrives.
            self._taking.discard(session_id)
            if value is None:
                return False
            install(handover_from_value(value))
            return True

        # Until the answer, what this worker delivers itself cannot reach
        # the session; each delivery names it, and the hub sends back what
        # it routed as delivered here once the session was placed here.
        self._taking.add(session_id)
        try:
            taken: bool = await self.link.call("take", session_id, proof, on_reply=on_reply)
        except (LinkClosed, CallFailed):
            self._taking.discard(session_id)
            return False
        return taken

    async def _hand_over(self, session_id: bytes, proof: bytes, take_id: int) -> None:
        assert self._holder is not None
        handover: Handover | None = None
        try:
            handover = await self._holder.hand_over(session_id, proof)
        except Exception:
            # Only this resumption fails (the client gets a fresh session).
            logger.exception("handing a session over failed")
        finally:
            # No await between the session leaving and its forwarding here.
            if handover is not None:
                self._moved[session_id] = handover.user
                self._moved_by_user.setdefault(handover.user, set()).add(session_id)
            self._send("handed", take_id, None if handover is None else handover_value(handover))

    def _forward_moved(self, user: str, packet: Packet) -> None:
        sessions = self._moved_by_user.get(user)
        if sessions:
            value = packet_value(packet)
            for session_id in sessions:
                self._send("sess", session_id, [value])

    # ------------------------------------------------------------------ logins

    @contextlib.asynccontextmanager
    async def login_slot(self, user: str, address: str, notify: Notify) -> AsyncIterator[None]:
        token = next(self._tokens)
        send, receive = trio.open_memory_channel[tuple[str, list[Any]]](math.inf)
        self._logins[token] = send
        try:
            try:
                self.link.send("login", token, user, address)
            except LinkClosed:
                raise LoginQueueFull(HUB_DOWN_RETRY_MS) from None
            while True:
                try:
                    op, args = await receive.receive()
                except trio.EndOfChannel:
                    raise LoginQueueFull(HUB_DOWN_RETRY_MS) from None
                if op == "lpos":
                    await notify(int(args[0]), int(args[1]))
                elif op == "lgo":
                    break
                elif args[0] == "rate":
                    raise LoginRateLimited(int(args[1]))
                else:
                    raise LoginQueueFull(int(args[1]))
            yield
        finally:
            del self._logins[token]
            self._send("ldone", token)

    def login_failed(self, user: str, address: str) -> None:
        self._send("fail", user, address)

    # ---------------------------------------------------------------- inbound

    def _on_message(self, op: str, args: list[Any]) -> None:
        holder = self._holder
        if op == "ent":
            entries = [(str(user), entry_from_blob(blob)) for user, blob in args[0]]
            self.outboxes.push_entries(entries)
            if self._moved_by_user:
                for user, event in entries:
                    self._forward_moved(user, EventPush(event=event))
        elif op == "note":
            packet = packet_from_value(args[1])
            for user in args[0]:
                self.outboxes.push_to_user(str(user), packet)
                if self._moved_by_user:
                    self._forward_moved(str(user), packet)
        elif op == "sess":
            self._to_session(bytes(args[0]), [packet_from_value(v) for v in args[1]])
        elif op == "sesse":
            self._to_session(bytes(args[0]), [EventPush(event=entry_from_blob(b)) for b in args[1]])
        elif op == "replace":
            if holder is not None:
                holder.replace_session(bytes(args[0]))
        elif op == "moved":
            session_id = bytes(args[0])
            moved_user = self._moved.pop(session_id, None)
            sessions = self._moved_by_user.get(moved_user) if moved_user is not None else None
            if moved_user is not None and sessions is not None:
                sessions.discard(session_id)
                if not sessions:
                    del self._moved_by_user[moved_user]
        elif op == "hand":
            assert self._nursery is not None
            self._nursery.start_soon(self._hand_over, bytes(args[0]), bytes(args[1]), int(args[2]))
        elif op == "publish":
            update = packet_from_value(args[1])
            if holder is not None and isinstance(update, PresenceUpdate):
                self.ctx.spawn(lambda: holder.publish_presence(str(args[0]), update))
        elif op in ("lpos", "lgo", "lno"):
            channel = self._logins.get(args[0])
            if channel is not None:
                channel.send_nowait((op, args[1:]))
        else:
            logger.warning("unknown message from the hub", op=op)

    def _to_session(self, session_id: bytes, packets: list[Packet]) -> None:
        """Packets another worker forwarded to a session of this one."""
        holder = self._holder
        peer = None if holder is None else holder.session_peer(session_id)
        if peer is None:
            user = self._moved.get(session_id)
            if user is not None:  # moved on again: pass them on
                self._send("sess", session_id, [packet_value(p) for p in packets])
            return
        for packet in packets:
            if isinstance(packet, EventPush):
                self.outboxes.push_entry(peer, packet.event)  # ordered, at most once
            else:
                self.outboxes.post(peer, packet)

    def _on_call(self, call_id: int, op: str, args: list[Any]) -> None:
        if op == "stats":
            self.link.reply(call_id, self.stats())
        else:
            self.link.fail(call_id, f"unknown call {op!r}")
