"""The application: every service of the server, combined in one place.

:func:`build_application` makes the service map the host dispatches on
(``{packet class: handler}``) from one :class:`ServiceContext`, plus the
session hooks (resumption, end of a connection) and a background task.

**The login gate.**  Until a connection's session has logged in, every
request but Login is answered RequestFailed NOT_LOGGED_IN (§11.3.6 rule 1);
the services behind the gate can rely on ``registry.session_of(peer)``.
Packets a client must never send (the server's own) are closed with
UNEXPECTED_PACKET by the peer before they get here (§11.1.3).

**Other services** register themselves in :data:`SERVICE_MODULES`: a module
there that exists provides ``<factory>(ctx) -> dict[type[Packet], Handler]``.
Listing a module that is not written yet is harmless, so services can be
added one at a time.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping

import structlog
import trio

from elink_protocol import Packet, ResumeRequested
from elink_protocol.app import AppErrorCode, Login, Request
from elink_protocol.errors import RemoteProtocolError
from elink_server.peer import Peer, PeerGone, SessionHooks

from .context import DeviceSession, ServiceContext
from .login import LoginService
from .presence import PresenceService
from .resume import ResumeService

Handler = Callable[[Peer, Packet], Awaitable[None]]

logger = structlog.get_logger("elink_server")

#: Service modules beside the session services: ``(module, factory name)``.
SERVICE_MODULES: tuple[tuple[str, str], ...] = (
    ("elink_server.services.messaging", "messaging_handlers"),
    ("elink_server.files.service", "file_handlers"),
)


def _optional_services(ctx: ServiceContext) -> dict[type[Packet], Handler]:
    handlers: dict[type[Packet], Handler] = {}
    for module_name, factory in SERVICE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise  # the module exists but one of its imports is missing
            continue
        handlers.update(getattr(module, factory)(ctx))
    return handlers


class Application(SessionHooks):
    """All services of one server; also its session hooks."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.context = ctx
        self.presence = PresenceService(ctx)
        self.resume = ResumeService(ctx)
        self.login = LoginService(ctx, on_login=self._logged_in, on_logout=self._logging_out)
        handlers: dict[type[Packet], Handler] = {}
        handlers.update(_optional_services(ctx))
        handlers.update(self.presence.handlers())
        handlers.update(self.login.handlers())
        self.handlers: Mapping[type[Packet], Handler] = {
            cls: handler if cls is Login else self._gated(handler)
            for cls, handler in handlers.items()
        }

    def _gated(self, handler: Handler) -> Handler:
        registry = self.context.registry

        async def gated(peer: Peer, packet: Packet) -> None:
            if registry.session_of(peer) is None:
                if isinstance(packet, Request):
                    await peer.send(packet.failed(AppErrorCode.NOT_LOGGED_IN, "log in first"))
                return
            await handler(peer, packet)

        return gated

    async def run(self) -> None:
        """Background work of the services, until cancelled."""
        async with trio.open_nursery() as nursery:
            for work in self.context.background:
                nursery.start_soon(work)
            await self.resume.run(self._expire)

    # ------------------------------------------------------------- sessions

    async def _logged_in(self, session: DeviceSession, replaced: DeviceSession | None) -> None:
        if replaced is not None:
            # §11.3.6 rule 4: the older session ends, and is told why.
            self.resume.end_for_good(replaced.peer)
            self.resume.forget(replaced.peer)
            await replaced.peer.close(AppErrorCode.SESSION_REPLACED, "replaced by a newer login")
        self.resume.logged_in(session.peer)
        await self.presence.device_online(session)

    async def _logging_out(self, session: DeviceSession) -> None:
        self.resume.end_for_good(session.peer)
        await self._end(session)

    async def _end(self, session: DeviceSession) -> None:
        """The session is over: unbind it and mark the device offline."""
        self.resume.forget(session.peer)
        if self.context.registry.unbind(session.peer) is None:
            return  # already ended (or replaced)
        if not session.peer.going_away:  # at shutdown nobody is left to tell
            await self.presence.device_gone(session)

    async def _expire(self, peer: Peer) -> None:
        session = self.context.registry.session_of(peer)
        if session is not None:
            peer.log.info("resumable session expired", user=session.user)
            await self._end(session)

    async def connection_ended(self, peer: Peer) -> None:
        session = self.context.registry.session_of(peer)
        if session is None:
            self.resume.forget(peer)
            return
        if self.resume.detach(peer):
            peer.log.info("session detached, resumable", user=session.user)
            return
        await self._end(session)

    async def resume_requested(self, peer: Peer, event: ResumeRequested) -> None:
        taken = await self.resume.take_over(peer, event)
        if taken is None:
            peer.log.info("resumption refused", session=event.session_id.hex())
            peer.connection.reject_resume()
            return
        session, state, (old,) = taken
        try:
            peer.connection.accept_resume(state)
        except RemoteProtocolError:
            # RESUME_REJECTED from the library: the client's claim contradicts
            # the stored state.  The session cannot continue.
            await self._end(session)
            raise
        # No await from taking the state to here: nothing sent to the device
        # can fall between the two connections.
        self.context.registry.bind(
            peer, user=session.user, device_id=session.device_id, kind=session.kind
        )
        self.resume.logged_in(peer)
        undelivered, old.undelivered = old.undelivered, []
        old.successor = peer  # late senders to the old peer reach this one
        try:
            for packet in undelivered:
                peer.send_nowait(packet)
        except PeerGone:
            return
        peer.log.info(
            "session resumed",
            user=session.user,
            device=session.device_id,
            old_conn=old.number,
            resent=len(state.unacked),
            undelivered=len(undelivered),
        )


def build_application(ctx: ServiceContext) -> Application:
    """Every service of the server, sharing ``ctx``."""
    return Application(ctx)
