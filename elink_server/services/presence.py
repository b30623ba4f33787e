"""Presence and follows (docs/protocol.md §11.9).

Presence lives in memory only: it describes the sessions of this process,
which do not outlive it.  Each logged-in device has a status (``online`` when
its login succeeds); a user's aggregated status is the most available one
among the devices.  Every change of a device is pushed as a PresenceUpdate to
the logged-in devices of the user's followers and to the user's own other
devices.  Follows are stored (they outlive sessions).

The login and session services call :meth:`PresenceService.device_online`
and :meth:`PresenceService.device_gone`; the requests are served by the
handlers of :meth:`PresenceService.handlers`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from elink_protocol import Packet
from elink_protocol.app import (
    AppErrorCode,
    DeviceKind,
    DevicePresence,
    Follow,
    PresenceEntry,
    PresenceStatus,
    PresenceUpdate,
    QueryPresence,
    SetPresence,
    Unfollow,
    aggregate,
)
from elink_protocol.app.presence import MAX_DEVICES
from elink_server.peer import Peer

from .context import DeviceSession, ServiceContext

Handler = Callable[[Peer, Packet], Awaitable[None]]


@attrs.define(kw_only=True)
class _Device:
    """The presence of one logged-in device."""

    kind: DeviceKind
    """Its kind."""
    status: PresenceStatus
    """Its status (``offline`` while connected: invisible)."""
    note: str
    """Its note."""
    changed_ms: int
    """When its status last changed."""


@attrs.define
class _User:
    """The presence of one user with at least one logged-in device."""

    devices: dict[str, _Device] = attrs.Factory(dict)
    """By device id."""
    since_ms: int = 0
    """When the aggregated status last changed."""

    def aggregated(self) -> PresenceStatus:
        return aggregate([d.status for d in self.devices.values()])


class PresenceService:
    """In-memory presence of this server's sessions, and the follow requests."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._users: dict[str, _User] = {}

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
        await self._change(
            session, PresenceStatus.ONLINE, "", kind=DeviceKind(session.kind), present=True
        )

    async def device_gone(self, session: DeviceSession) -> None:
        """``session`` ended: the device is ``offline`` and forgotten."""
        await self._change(
            session, PresenceStatus.OFFLINE, "", kind=DeviceKind(session.kind), present=False
        )

    def status_of(self, user: str) -> PresenceStatus:
        """``user``'s aggregated status."""
        entry = self._users.get(user)
        return entry.aggregated() if entry is not None else PresenceStatus.OFFLINE

    async def _change(
        self,
        session: DeviceSession,
        status: PresenceStatus,
        note: str,
        *,
        kind: DeviceKind,
        present: bool,
    ) -> None:
        """Apply a device's new status and push it (§11.9.3)."""
        now = self._ctx.now_ms()
        entry = self._users.get(session.user)
        if entry is None:
            if not present:
                return  # never seen: nothing to tell
            entry = self._users[session.user] = _User(since_ms=now)
        before = entry.aggregated()
        old = entry.devices.get(session.device_id)
        old_status = old.status if old is not None else PresenceStatus.OFFLINE
        if present:
            if old is not None and (old.status, old.note, old.kind) == (status, note, kind):
                return  # nothing changed
            entry.devices[session.device_id] = _Device(
                kind=kind, status=status, note=note, changed_ms=now
            )
        else:
            entry.devices.pop(session.device_id, None)
        after = entry.aggregated()
        if after is not before:
            entry.since_ms = now
        if not entry.devices:
            del self._users[session.user]
        if old_status is PresenceStatus.OFFLINE and status is PresenceStatus.OFFLINE:
            # An invisible device came or went: §11.9.3 lets us stay silent
            # while the aggregated status did not change, and must, or the
            # invisible device would be revealed.
            return
        update = PresenceUpdate(
            user=session.user,
            device=session.device_id,
            device_kind=kind,
            status=status,
            aggregated=after,
            note=note,
            at_ms=now,
        )
        await self._publish(session, update)

    async def _publish(self, session: DeviceSession, update: PresenceUpdate) -> None:
        registry = self._ctx.registry
        await registry.push(session.user, update, exclude=session.peer)
        for follower in await self._ctx.store.followers(session.user):
            await registry.push(follower, update)

    # ------------------------------------------------------------- requests

    async def _on_set_presence(self, peer: Peer, packet: SetPresence) -> None:
        session = self._ctx.registry.session_of(peer)
        assert session is not None  # the application only routes logged-in peers here
        await peer.send(packet.ok())
        await self._change(
            session, packet.status, packet.note, kind=DeviceKind(session.kind), present=True
        )

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
        await peer.send(packet.result([self._entry(user) for user in packet.users]))

    def _entry(self, user: str) -> PresenceEntry:
        entry = self._users.get(user)
        if entry is None:
            return PresenceEntry(user=user, status=PresenceStatus.OFFLINE)
        status = entry.aggregated()
        visible = sorted(
            (
                (device_id, device)
                for device_id, device in entry.devices.items()
                if device.status is not PresenceStatus.OFFLINE
            ),
            key=lambda item: item[1].changed_ms,
            reverse=True,
        )
        note = next((d.note for _, d in visible if d.status is status), "")
        return PresenceEntry(
            user=user,
            status=status,
            note=note,
            since_ms=entry.since_ms,
            devices=tuple(
                DevicePresence(device=device_id, kind=device.kind, status=device.status)
                for device_id, device in visible[:MAX_DEVICES]
            ),
        )
