"""What every service shares: the store, the settings, the clock, the
registry of this worker's logged-in devices, and the router to the rest of
the node."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from elink_protocol import Packet, ServerIdentity
from elink_server.peer import Peer, PeerGone
from elink_server.settings import ServerSettings
from elink_server.storage import SqliteStore

if TYPE_CHECKING:
    from .router import Router

Spawn = Callable[[Callable[[], Awaitable[None]]], None]
"""Starts a background task (``nursery.start_soon`` without arguments)."""


@attrs.frozen(kw_only=True)
class DeviceSession:
    """One logged-in device of a user, on one connection."""

    user: str
    """The account name."""
    device_id: str
    """The client's id for the device (stable across its connections)."""
    kind: str
    """pc / mobile / web / bot."""
    peer: Peer
    """The connection the device is on."""
    session_id: bytes = b""
    """The protocol session (§6.5) it belongs to."""


class SessionRegistry:
    """Which devices of which users are online on this worker, and on which
    connection (the node-wide view is the router's, ``router.py``).

    A user may be online on several devices at once; one device is on at most
    one connection: binding it again (a reconnect before the old connection
    noticed it was dead) returns the old session so the caller can close it.
    Every lookup is O(1); nothing here awaits except :meth:`push`.
    """

    def __init__(self) -> None:
        self._by_peer: dict[Peer, DeviceSession] = {}
        self._by_user: dict[str, dict[str, DeviceSession]] = {}

    def bind(self, peer: Peer, *, user: str, device_id: str, kind: str) -> DeviceSession | None:
        """Record that ``peer`` is ``user``'s ``device_id``.  Returns the
        session it replaces (same user and device, another connection)."""
        session = DeviceSession(
            user=user,
            device_id=device_id,
            kind=kind,
            peer=peer,
            session_id=getattr(peer, "session_id", b""),
        )
        devices = self._by_user.setdefault(user, {})
        old = devices.get(device_id)
        if old is not None and old.peer is not peer:
            self._by_peer.pop(old.peer, None)
        else:
            old = None
        devices[device_id] = session
        self._by_peer[peer] = session
        return old

    def unbind(self, peer: Peer) -> DeviceSession | None:
        """Forget ``peer``'s session (its connection ended)."""
        session = self._by_peer.pop(peer, None)
        if session is None:
            return None
        devices = self._by_user.get(session.user)
        if devices is not None and devices.get(session.device_id) is session:
            del devices[session.device_id]
            if not devices:
                del self._by_user[session.user]
        return session

    def session_of(self, peer: Peer) -> DeviceSession | None:
        """The logged-in session on ``peer``, or None before login."""
        return self._by_peer.get(peer)

    def devices(self, user: str) -> list[DeviceSession]:
        """``user``'s online devices."""
        return list(self._by_user.get(user, {}).values())

    def is_online(self, user: str) -> bool:
        return user in self._by_user

    def __len__(self) -> int:
        """Logged-in device sessions."""
        return len(self._by_peer)

    async def push(self, user: str, packet: Packet, *, exclude: Peer | None = None) -> int:
        """Send ``packet`` to every online device of ``user`` but ``exclude``.
        Devices whose connection is gone are skipped (they pull what they
        missed at their next login).  Returns how many were sent to."""
        sent = 0
        for session in self.devices(user):
            if session.peer is exclude:
                continue
            try:
                await session.peer.send(packet)
            except PeerGone:
                continue
            sent += 1
        return sent


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch: timestamps stored with messages."""
    return time.time_ns() // 1_000_000


def system_spawn(fn: Callable[[], Awaitable[Any]]) -> None:
    """Fallback :data:`Spawn` when the wiring gave no nursery: a Trio system
    task (outbox tasks end by themselves when idle or when their connection
    closes)."""
    trio.lowlevel.spawn_system_task(fn)


@attrs.define(kw_only=True)
class Counters:
    """Totals the services count, for the server's statistics."""

    messages_stored: int = 0
    """Messages stored (duplicates of an earlier send not counted)."""


@attrs.define(kw_only=True)
class ServiceContext:
    """Everything the services share, created once per server (worker)."""

    store: SqliteStore
    settings: ServerSettings
    registry: SessionRegistry = attrs.Factory(SessionRegistry)
    now_ms: Callable[[], int] = wall_clock_ms
    """The server's wall clock (tests replace it)."""
    identity: ServerIdentity | None = None
    """The server's keys (services that open their own listeners need them)."""
    background: list[Callable[[], Awaitable[None]]] = attrs.Factory(list)
    """Background work that services register; the application runs it."""
    files_listeners: tuple[trio.SocketListener, ...] = ()
    """Heavy-bus listening sockets shared by a node's workers (none: the
    file service binds ``files_port`` itself)."""
    components: dict[str, Any] = attrs.Factory(dict)
    """Service objects by name (``files``), for the host and tests."""
    spawn: Spawn = system_spawn
    """Starts the services' background tasks (outboxes)."""
    counters: Counters = attrs.Factory(Counters)
    _router: Router | None = None

    @property
    def router(self) -> Router:
        """The node as the services see it (``router.py``): a
        :class:`~.router.LocalRouter` unless the host installed another."""
        if self._router is None:
            from .router import LocalRouter  # router.py imports this module

            self._router = LocalRouter(self)
        return self._router

    def install_router(self, router: Router) -> None:
        """Use ``router`` (a worker of a node installs its hub router)."""
        self._router = router
