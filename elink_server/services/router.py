"""The node as one worker's services see it: the :class:`Router`.

Theory of operation
-------------------
A server may run as several worker processes (``settings.workers``), and
later as several nodes.  A session on one worker must reach devices held by
another exactly as if both were on one worker.  Everything the services do
that concerns sessions they do not hold goes through this one small
interface, so that the worker boundary is hidden here and nowhere else:

* **Delivery** (never blocks, never fails: pushes are hints, §11.5.3):
  :meth:`Router.deliver_entries` -- new entries of users' event logs, pushed
  in log order to every device of those users on the node;
  :meth:`Router.deliver_notice` -- a live notice (StatusUpdate,
  PresenceUpdate) to every device of some users.
* **Sessions and presence**: :meth:`Router.session_started`,
  :meth:`Router.presence_changed`, :meth:`Router.session_ended` keep the
  node-wide table of logged-in devices (which is also the presence table,
  §11.9) and return the PresenceUpdate to publish, if any.
  ``session_started`` also ends the device's older session wherever it is
  (SESSION_REPLACED, §11.3.6 rule 4).  :meth:`Router.presence_of` reads it.
* **Resumption**: :meth:`Router.take_session` finds a session that another
  worker holds, has that worker close its old connection and hand over its
  state (§6.5.6), and returns it.
* **Login admission**: :meth:`Router.login_slot` and
  :meth:`Router.login_failed` -- the login queue and the failed-login limits
  hold for the whole node (§11.3.7).

:class:`LocalRouter` is the single-worker implementation: every operation is
a direct call on this process's tables, with no await where the services
before this interface had none (zero overhead, the same scheduling).  The
multi-worker implementation (``elink_server.node.worker_router``) keeps a
local part of the same kind and talks to the node's hub for the rest; a
cluster implementation would talk to Redis instead (docs/architecture.md).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from elink_protocol import Packet
from elink_protocol.app import DeviceKind, PresenceEntry, PresenceStatus, PresenceUpdate, SyncEvent
from elink_protocol.resumption import ResumptionState
from elink_server.peer import Peer

from .delivery import Outboxes
from .login import LoginAdmission
from .presence_table import PresenceTable

if TYPE_CHECKING:
    from .context import DeviceSession, ServiceContext

Notify = Callable[[int, int], Awaitable[None]]
"""``notify(position, estimated_wait_ms)``: tells a waiting login where it is."""


@attrs.frozen(kw_only=True)
class Handover:
    """A session handed over by the worker that held it (§6.5.6)."""

    user: str
    """The account."""
    device_id: str
    """The device."""
    kind: str
    """Its kind."""
    state: ResumptionState
    """The old connection's state, taken after its last processed packet."""
    undelivered: tuple[Packet, ...]
    """Packets sent to the session after its connection ended, in order:
    queued on the new connection right after the state's own."""
    pushed_up_to: int | None = None
    """The last log entry the old connection's ordering step released, where
    the new one goes on (None: unknown, see ``delivery.py``)."""
    held: tuple[SyncEvent, ...] = ()
    """Log entries the old connection's ordering step held (waiting for an
    earlier one), lowest first."""


class SessionHolder(Protocol):
    """What a router asks of this worker's services on behalf of the node
    (implemented by :class:`~.app.Application`)."""

    def session_peer(self, session_id: bytes) -> Peer | None:
        """The connection carrying logged-in session ``session_id`` here."""

    def replace_session(self, session_id: bytes) -> None:
        """A newer login of the same device elsewhere ended this session:
        close it with SESSION_REPLACED, without a presence change."""

    async def hand_over(self, session_id: bytes, proof: bytes) -> Handover | None:
        """Give the session up to another worker -- only if ``proof`` (the
        new connection's ``resume_proof_material()``) verifies against the
        session's secret, checked before anything else (§7.9.2): close its
        connection, take its final state, and forget it here without a
        presence change.  No await between taking the state and returning."""

    async def publish_presence(self, user: str, update: PresenceUpdate) -> None:
        """Push a presence change the node made (a dead worker's device went
        offline) to the user's devices and followers."""

    def statistics(self) -> dict[str, Any]:
        """This worker's counters, for the node's status."""


class Router(abc.ABC):
    """How one worker's services reach the rest of the node (see the module
    docstring).  ``outboxes`` delivers to this worker's own devices."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.outboxes = Outboxes(ctx.registry, self._spawn)

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        # Looked up at each use: the host points ``ctx.spawn`` at its nursery
        # once that exists.
        self.ctx.spawn(fn)

    # --- delivery ----------------------------------------------------------------

    @abc.abstractmethod
    def deliver_entries(self, entries: Sequence[tuple[str, SyncEvent]]) -> None:
        """Push new log entries ``(user, entry)`` to every device of their
        users, in log order per user (``delivery.Outboxes.push_entries``)."""

    @abc.abstractmethod
    def deliver_notice(
        self, users: Sequence[str], packet: Packet, *, exclude: Peer | None = None
    ) -> None:
        """Push ``packet`` to every device of ``users`` but ``exclude``."""

    # --- sessions and presence ---------------------------------------------------------

    @abc.abstractmethod
    async def session_started(self, session: DeviceSession) -> PresenceUpdate | None:
        """``session`` logged in (or was resumed here from another worker):
        its device is online and owned by it; an older session of the same
        device on another worker is ended with SESSION_REPLACED."""

    @abc.abstractmethod
    async def presence_changed(
        self, session: DeviceSession, status: PresenceStatus, note: str
    ) -> PresenceUpdate | None:
        """The device of ``session`` set a status."""

    @abc.abstractmethod
    async def session_ended(self, session: DeviceSession) -> PresenceUpdate | None:
        """``session`` ended: its device is offline (unless a newer session
        owns it already)."""

    @abc.abstractmethod
    async def presence_of(self, users: Sequence[str]) -> list[PresenceEntry]:
        """The presence of ``users`` across the node, in order."""

    # --- resumption --------------------------------------------------------------------

    @abc.abstractmethod
    async def take_session(
        self, session_id: bytes, proof: bytes, install: Callable[[Handover], None]
    ) -> bool:
        """Have another worker check ``proof``, hand over the session it holds and call
        ``install(handover)`` with it -- synchronously, before anything else
        for the session can arrive here, so ``install`` must bind the new
        connection without awaiting.  False if no worker holds it resumable."""

    # --- login admission -------------------------------------------------------------

    @abc.abstractmethod
    def login_slot(
        self, user: str, address: str, notify: Notify
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold one of the node's login slots for the block.  Raises
        :class:`~.login.LoginRateLimited` or :class:`~.login.LoginQueueFull`."""

    @abc.abstractmethod
    def login_failed(self, user: str, address: str) -> None:
        """A login of ``user`` from ``address`` failed (counted node-wide)."""


def _kind(session: DeviceSession) -> DeviceKind:
    return DeviceKind(session.kind)


def _session_id(session: DeviceSession) -> bytes:
    return session.session_id


class LocalRouter(Router):
    """One worker is the whole node: every table is in this process."""

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.presence = PresenceTable()
        self.admission = LoginAdmission(ctx.settings)

    def deliver_entries(self, entries: Sequence[tuple[str, SyncEvent]]) -> None:
        self.outboxes.push_entries(entries)

    def deliver_notice(
        self, users: Sequence[str], packet: Packet, *, exclude: Peer | None = None
    ) -> None:
        for user in users:
            self.outboxes.push_to_user(user, packet, exclude=exclude)

    async def session_started(self, session: DeviceSession) -> PresenceUpdate | None:
        return self.presence.online(
            session.user,
            session.device_id,
            kind=_kind(session),
            session=_session_id(session),
            now_ms=self.ctx.now_ms(),
        )

    async def presence_changed(
        self, session: DeviceSession, status: PresenceStatus, note: str
    ) -> PresenceUpdate | None:
        return self.presence.change(
            session.user,
            session.device_id,
            kind=_kind(session),
            session=_session_id(session),
            status=status,
            note=note,
            now_ms=self.ctx.now_ms(),
        )

    async def session_ended(self, session: DeviceSession) -> PresenceUpdate | None:
        return self.presence.gone(
            session.user,
            session.device_id,
            kind=_kind(session),
            session=_session_id(session),
            now_ms=self.ctx.now_ms(),
        )

    async def presence_of(self, users: Sequence[str]) -> list[PresenceEntry]:
        return [self.presence.entry(user) for user in users]

    async def take_session(
        self, session_id: bytes, proof: bytes, install: Callable[[Handover], None]
    ) -> bool:
        return False  # every session of the node is in this worker's ResumeService

    @contextlib.asynccontextmanager
    async def login_slot(self, user: str, address: str, notify: Notify) -> AsyncIterator[None]:
        async with self.admission.slot(user, address, notify):
            yield

    def login_failed(self, user: str, address: str) -> None:
        self.admission.failed(user, address)
