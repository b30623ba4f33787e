"""Presence and follows (docs/protocol.md §11.9).

Presence lives in memory only: it describes the sessions of the node, which
do not outlive it.  The table itself (:mod:`.presence_table`) is the
router's: this worker's own when it is the whole node, the hub's when the
node has several workers, so that a user's aggregated status covers every
device wherever it is connected.  Each logged-in device has a status
(``online`` when its login succeeds); a user's aggregated status is the most
available one among the devices.  Every change of a device is pushed as a
PresenceUpdate to the logged-in devices of the user's followers and to the
user's own other devices.  Follows are stored (they outlive sessions).

The login and session services call :meth:`PresenceService.device_online`
and :meth:`PresenceService.device_gone`; the requests are served by the
handlers of :meth:`PresenceService.handlers`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from elink_protocol import Packet
from elink_protocol.app import (
    AppErrorCode,
    Follow,
    PresenceUpdate,
    QueryPresence,
    SetPresence,
    Unfollow,
)
from elink_server.peer import Peer

from .context import DeviceSession, ServiceContext

Handler = Callable[[Peer, Packet], Awaitable[None]]


class PresenceService:
    """Presence changes of this worker's sessions, and the follow requests."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def handlers(self) -> dict[type[Packet], Handler]:
        return {
            SetPresence: self._on_set_presence,  # type: ignore[dict-item]
            Follow: self._on_follow,  # type: ignore[dict-item]
            Unfollow: self._on_unfollow,  # type: ignore[dict-item]
            QueryPresence: self._on_query,  # type: ignore[dict-item]
        }

    # ------------------------------------------------------------- sessions

    async def device_online(self, session: DeviceSession) -> None:
        """``session``'s login succeeded: the device is ``online``."""
        await self.publish(session.user, await self._ctx.router.session_started(session), session)

    async def device_gone(self, session: DeviceSession) -> None:
        """``session`` ended: the device is ``offline`` and forgotten."""
        await self.publish(session.user, await self._ctx.router.session_ended(session), session)

    async def publish(
        self, user: str, update: PresenceUpdate | None, session: DeviceSession | None = None
    ) -> None:
        """Push ``update`` of ``user`` to the user's other devices (all but
        ``session``'s) and to the followers' devices (§11.9.3)."""
        if update is None:
            return
        router = self._ctx.router
        router.deliver_notice([user], update, exclude=None if session is None else session.peer)
        followers = await self._ctx.store.followers(user)
        if followers:
            router.deliver_notice(followers, update)

    # ------------------------------------------------------------- requests

    async def _on_set_presence(self, peer: Peer, packet: SetPresence) -> None:
        session = self._ctx.registry.session_of(peer)
        assert session is not None  # the application only routes logged-in peers here
        await peer.send(packet.ok())
        update = await self._ctx.router.presence_changed(session, packet.status, packet.note)
        await self.publish(session.user, update, session)

    async def _on_follow(self, peer: Peer, packet: Follow) -> None:
        session = self._ctx.registry.session_of(peer)
        assert session is not None
        if packet.user == session.user:
            await peer.send(packet.failed(AppErrorCode.INVALID_REQUEST, "cannot follow oneself"))
            return
        if await self._ctx.store.get_user(packet.user) is None:
            await peer.send(packet.failed(AppErrorCode.NOT_FOUND, "no such user"))
            return
        await self._ctx.store.follow(session.user, packet.user, now=self._ctx.now_ms() / 1000)
        await peer.send(packet.ok())

    async def _on_unfollow(self, peer: Peer, packet: Unfollow) -> None:
        session = self._ctx.registry.session_of(peer)
        assert session is not None
        # Answered with Ok also when nothing changed (§11.9.4), oneself included.
        await self._ctx.store.unfollow(session.user, packet.user)
        await peer.send(packet.ok())

    async def _on_query(self, peer: Peer, packet: QueryPresence) -> None:
        # Unknown users read as offline, so a query does not reveal names.
        entries = await self._ctx.router.presence_of(packet.users)
        await peer.send(packet.result(entries))
